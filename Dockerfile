# One image for every rainstorm service (coordinator, workers, dashboard):
#   docker build -t rainstorm .      (docker-compose.yml builds it for you)
#   docker run --rm rainstorm --version    (says which code does the per-key work)
# BASE_IMAGE: any Debian-based image with Python 3.11 and pip on PATH (compose
# passes RAINSTORM_BASE_IMAGE; tools/docker_env.sh builds a stand-in from
# Debian packages where no image registry is reachable)
ARG BASE_IMAGE=python:3.11-slim

# -- build: the wheels, with the C extensions (rainstorm.native) compiled ----
# gcc and the Python headers live only in this stage; the image below gets
# the built wheels and no compiler
FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# python:3.11-slim carries Python.h; Debian's python3 needs python3-dev for it
RUN apt-get update \
 && headers=$(python -c 'import os, sysconfig; print("" if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else "python3-dev")') \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends gcc libc6-dev $headers \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY rainstorm ./rainstorm
# the package and its runtime dependencies, plus the Docker SDK for the
# autoscaler's docker backend (no dev extras); the build fails here, loudly,
# if the C extensions do not compile (the optional build would only warn)
RUN pip wheel --wheel-dir /wheels ".[docker]" \
 && pip install --no-index --find-links /wheels --target /tmp/check rainstorm \
 && PYTHONPATH=/tmp/check python -c 'from rainstorm import native; assert native.AVAILABLE, native.WHY_NOT'

# -- the image -----------------------------------------------------------------
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links /wheels "rainstorm[docker]" && rm -rf /wheels

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
