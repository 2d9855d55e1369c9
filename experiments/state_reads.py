"""What reading a state partition costs the server: through Lua, or plain reads.

A fold and every read of a result take a *snapshot* of one state partition:
its base and its unfolded deltas.  Up to LIB_VERSION 8 this was one
``FCALL_RO rainstorm_snapshot`` over a hash field and a stream of blobs;
since session 18 it is ``rainstorm.lua.snapshot``, plain reads (since
LIB_VERSION 10 the blobs are keys of their own that the hash and the log
name: HMGET and XRANGE, then MGET of the blobs with the head again).  This
loads the old function (its Lua as it was, but for a delta's field taken by
position; as a library of its own) and times it on a partition in the old
layout against the real reads on the same blobs in today's layout, in
turns: the server's CPU per read (INFO cpu, main thread) over
``--reads`` reads, for partitions shaped like a word count's (a base of
``--base-kb`` and ``--deltas`` deltas of ``--delta-kb`` each; the defaults
are a 1 GB real-text job's, 64 partitions: ~170 KB bases, ~42 KB deltas, 17
per fold).  Both must return the same base and deltas (exit 1 otherwise).

    python experiments/state_reads.py [--quick] [--reads 500] [--repeat 3]
        [--base-kb 170] [--delta-kb 42] [--deltas 17]

Writes experiments/results/state_reads.csv and .png.
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import finish, parser, positive_int, pyplot  # noqa: E402

from rainstorm import keys, lua  # noqa: E402
from rainstorm.local.server import EmbeddedRedis  # noqa: E402

OLD_SNAPSHOT = """#!lua name=rainstorm_v8_snapshot
local function snapshot(keys, args)
  local max_deltas = tonumber(args[1])
  local base, log = keys[1], keys[2]
  local v = redis.call('HGET', base, 'v') or '0'
  local out = {v, redis.call('HGET', base, 'd') or '', '0'}
  local rows = redis.call('XRANGE', log, '-', '+', 'COUNT', max_deltas + 1)
  for i, row in ipairs(rows) do
    if i > max_deltas then
      out[3] = '1'
      break
    end
    out[#out + 1] = row[1]
    out[#out + 1] = row[2][2]  -- a delta entry's one field, d
  end
  return out
end
redis.register_function{function_name = 'v8_snapshot', callback = snapshot,
  flags = {'no-writes'}}
"""
BASE, LOG = "rs:{reads}:state:s0:p0", "rs:{reads}:state:s0:p0:log"  # the old layout
NEW_BASE, NEW_LOG = "rs:{reads2}:state:s0:p0", "rs:{reads2}:state:s0:p0:log"


def main_cpu_s(r: redis.Redis) -> float:
    info: Any = r.info("cpu")
    return float(info["used_cpu_user_main_thread"]) + float(info["used_cpu_sys_main_thread"])


def old_read(r: redis.Redis) -> tuple[bytes, list[bytes]]:
    reply: Any = r.fcall_ro("v8_snapshot", 2, BASE, LOG, lua.LIMITS.compact_ids)
    return reply[1], list(reply[4::2])


def new_read(r: redis.Redis) -> tuple[bytes, list[bytes]]:
    snap = lua.snapshot(r, base=NEW_BASE, log=NEW_LOG)
    return snap.base, snap.deltas


def main() -> int:
    ap = parser(__doc__)
    ap.add_argument("--reads", type=positive_int, default=500)
    ap.add_argument("--repeat", type=positive_int, default=3)
    ap.add_argument("--base-kb", type=float, default=170)
    ap.add_argument("--delta-kb", type=float, default=42)
    ap.add_argument("--deltas", type=positive_int, default=17)
    a = ap.parse_args()
    reads, repeat = (50, 1) if a.quick else (a.reads, a.repeat)
    rows: list[dict[str, Any]] = []
    with EmbeddedRedis() as server:
        r = redis.Redis.from_url(server.url)
        lua.load_library(r)
        r.function_load(OLD_SNAPSHOT, replace=True)
        blob = os.urandom(int(a.base_kb * 1000))
        r.hset(BASE, mapping={"v": 3, "d": blob})
        r.set(keys.state_blob(NEW_BASE, "b0"), blob)
        r.hset(NEW_BASE, mapping={"v": 3, "t": "b0", "bs": len(blob)})
        for i in range(a.deltas):
            delta = os.urandom(int(a.delta_kb * 1000))
            r.xadd(LOG, {"d": delta})
            r.set(keys.state_delta(NEW_BASE, f"d{i}"), delta)
            r.xadd(NEW_LOG, {"t": f"d{i}", "n": len(delta)})
        same = old_read(r) == new_read(r)
        mb = (a.base_kb + a.deltas * a.delta_kb) / 1000
        for rep in range(repeat):
            for name, read in (("FCALL_RO (LIB_VERSION 8)", old_read),
                               ("HMGET + XRANGE, MGET + HMGET + XRANGE", new_read)):
                before = main_cpu_s(r)
                for _ in range(reads):
                    read(r)
                us = 1e6 * (main_cpu_s(r) - before) / reads
                rows.append({"repeat": rep, "read": name, "mb_per_read": round(mb, 3),
                             "server_us_per_read": round(us, 1),
                             "server_ms_per_mb": round(us / 1000 / mb, 3), "correct": same})
    for name in dict.fromkeys(r["read"] for r in rows):
        med = statistics.median(r["server_us_per_read"] for r in rows if r["read"] == name)
        print(f"{name}: median {med:.0f} µs of server CPU per read of {mb:.2f} MB")
    return finish("state_reads", rows, a.out, lambda p: plot(rows, p))


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 2.6))
    names = list(dict.fromkeys(r["read"] for r in rows))
    meds = [statistics.median(r["server_us_per_read"] for r in rows if r["read"] == n)
            for n in names]
    ax.barh(names, meds, color=["#c44", "#48c"])
    for i, m in enumerate(meds):
        ax.annotate(f"{m:.0f} µs", (m, i), xytext=(4, 0), textcoords="offset points",
                    va="center")
    ax.set_xlabel(f"server CPU per snapshot read of {rows[0]['mb_per_read']} MB (median)")
    ax.set_xlim(0, max(meds) * 1.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
