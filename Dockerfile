# One image for every rainstorm service (coordinator, workers, dashboard):
#   docker build -t rainstorm .      (docker-compose.yml builds it for you)
#   docker run --rm rainstorm --help
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# the package and its runtime dependencies, plus the Docker SDK for the
# autoscaler's docker backend (no dev extras)
WORKDIR /src
COPY pyproject.toml README.md ./
COPY rainstorm ./rainstorm
RUN pip install ".[docker]" && rm -rf /src

# workers run operator code: not as root
RUN useradd --system --create-home --uid 10001 rainstorm
USER rainstorm

# relative paths in specs (data/..., examples/...) resolve here; compose
# mounts ./examples and ./data under it
WORKDIR /work

ENTRYPOINT ["rainstorm"]
CMD ["--help"]
