# One image for every rainstorm service (coordinator, workers, dashboard):
#   docker build -t rainstorm .      (docker-compose.yml builds it for you)
#   docker run --rm rainstorm --help
# BASE_IMAGE: any image with Python 3.11 and pip on PATH (compose passes
# RAINSTORM_BASE_IMAGE; tools/docker_env.sh builds a stand-in from Debian
# packages where no image registry is reachable)
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# the package and its runtime dependencies, plus the Docker SDK for the
# autoscaler's docker backend (no dev extras)
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY rainstorm ./rainstorm
RUN pip install ".[docker]" && rm -rf /src

# workers run operator code: not as root.  /work/data belongs to that user,
# so a named volume mounted there (compose's `data`) starts out writable by it
RUN useradd --system --create-home --uid 10001 rainstorm \
 && mkdir -p /work/data && chown rainstorm /work/data
USER rainstorm

# relative paths in specs (data/..., examples/...) resolve here; compose
# mounts ./examples and the `data` volume under it
WORKDIR /work

ENTRYPOINT ["rainstorm"]
CMD ["--help"]
