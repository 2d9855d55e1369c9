"""How long one call can hold the server: hostile calls against the caps.

Starts an embedded Valkey, loads the FUNCTION library and measures, with
SLOWLOG (server time, not round trips), the calls a holder of the `worker`
password could send, next to the largest legitimate ones:

* ``rainstorm_commit`` with 100,000 made-up input ids (refused by the caps;
  before issue 10 it ran, checking every id, and answered ``rejected``);
* a legitimate commit at the caps: 1,024 pending inputs, 1,024 outputs
  carrying ~16 MiB;
* a snapshot (``rainstorm.lua.snapshot``: plain HMGET and XRANGE reads, no
  FUNCTION since LIB_VERSION 9) of a delta log grown to 20,000 entries by
  XADD: each XRANGE asks for at most the cap; the slowest command counts;
* ``MGET`` of 100,000 (and 1M) keys, for scale.  Before a FUNCTION's first
  line runs, the server builds its KEYS and ARGV tables, so a call with very
  many arguments costs time even though the library refuses it at once;
  no ACL rule or FUNCTION can bound the number of arguments.

    python experiments/fcall_limits.py [--quick] [--repeat 5]

Writes experiments/results/fcall_limits.{csv,png}; ``correct`` says the
hostile call was refused and the legitimate one committed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from common import pyplot, write_csv

from rainstorm import keys, lua
from rainstorm.local.server import EmbeddedRedis

OUT = Path(__file__).resolve().parent / "results"
JOB = "limits"


def server_ms(r: redis.Redis, call: Callable[[], Any]) -> tuple[float, Any]:
    """Server time of the one command ``call`` sends (SLOWLOG), and its reply."""
    r.slowlog_reset()
    try:
        reply: Any = call()
    except redis.ResponseError as exc:
        reply = exc
    rows: Any = r.slowlog_get(1)
    return (rows[0]["duration"] / 1000.0 if rows else 0.0), reply


def fresh_job(r: redis.Redis) -> None:
    r.flushall()
    lua.load_library(r)
    r.hset(keys.meta(JOB), "state", "running")


def hostile_commit(r: redis.Redis, n: int) -> tuple[float, bool]:
    fresh_job(r)
    stream = keys.stage_stream(JOB, 0, 0)
    ks = [keys.counters(JOB), keys.dlq(JOB), keys.meta(JOB)]
    ks += [stream] * n
    # group, stage, n_in, n_out, n_dead, max_backlog, n_delta, emit_field, records
    # in/out, bytes_in, n_extra, keep_inputs, fold_entries, fold_bytes
    args: list[Any] = ["g0", 0, n, 0, 0, 0, 0, "", 0, 0, 0, 0, 0, 256, 65536]
    for i in range(n):
        args += [f"{i + 1}-0", f"u{i}"]
    ms, reply = server_ms(r, lambda: r.fcall("rainstorm_commit", len(ks), *ks, *args))
    return ms, isinstance(reply, redis.ResponseError) and "above the cap" in str(reply)


def legit_commit(r: redis.Redis, n: int, payload: int) -> tuple[float, bool]:
    fresh_job(r)
    stream = keys.stage_stream(JOB, 0, 0)
    r.xgroup_create(stream, keys.group(0), id="0", mkstream=True)
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(stream, {"u": f"u{i}", "d": b"x"})
    pipe.execute()
    rows: Any = r.xreadgroup(keys.group(0), "w", {stream: ">"}, count=n)
    inputs = [(stream, id_.decode(), f"u{i}") for i, (id_, _f) in enumerate(rows[0][1])]
    blob = b"y" * payload
    req = lua.CommitRequest(
        counters=keys.counters(JOB), dlq=keys.dlq(JOB), meta=keys.meta(JOB),
        group=keys.group(0), stage=0, inputs=inputs,
        outputs=[(keys.stage_stream(JOB, 1, 0), f"o{i}", blob) for i in range(n)],
        emit_field=keys.counter_field(1, "emitted"))
    ms, res = server_ms(r, lambda: lua.commit(r, req))
    return ms, getattr(res, "status", None) is lua.CommitStatus.OK


def long_log_snapshot(r: redis.Redis, n: int) -> tuple[float, bool]:
    fresh_job(r)
    base, log = keys.state(JOB, 1, 0), keys.state_log(JOB, 1, 0)
    pipe = r.pipeline(transaction=False)
    for i in range(n):  # as commits log them: the delta in its key, the log naming it
        pipe.set(keys.state_delta(base, f"t{i}"), b"%d" % i)
        pipe.xadd(log, {"t": f"t{i}", "n": len(b"%d" % i)})
    pipe.execute()
    r.slowlog_reset()
    snap = lua.snapshot(r, base=keys.state(JOB, 1, 0), log=log)
    rows: Any = r.slowlog_get(1000)
    slowest = max((row["duration"] for row in rows), default=0) / 1000.0
    return slowest, len(snap.deltas) == n


def mget(r: redis.Redis, n: int) -> tuple[float, bool]:
    fresh_job(r)
    names = [f"k{i}" for i in range(n)]
    ms, reply = server_ms(r, lambda: r.mget(names))
    return ms, isinstance(reply, list) and len(reply) == n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    reps = 2 if a.quick else a.repeat
    cases: dict[str, Callable[[redis.Redis], tuple[float, bool]]] = {
        "commit, 100k made-up ids (refused)": lambda r: hostile_commit(r, 100_000),
        **({} if a.quick else {
            "commit, 1M made-up ids (refused)": lambda r: hostile_commit(r, 1_000_000),
            "MGET of 1M keys (for scale)": lambda r: mget(r, 1_000_000)}),
        "commit at the caps: 1024 in, 1024 out, 16 MiB": lambda r: legit_commit(
            r, 1024, (16 << 20) // 1024),
        "snapshot of a 20k-delta log (slowest read)": lambda r: long_log_snapshot(r, 20_000),
        "MGET of 100k keys (for scale)": lambda r: mget(r, 100_000),
    }
    rows: list[dict[str, Any]] = []
    with EmbeddedRedis() as srv:
        r = redis.Redis.from_url(srv.url)
        r.config_set("slowlog-log-slower-than", 0)
        for name, case in cases.items():
            times, ok = [], True
            for _ in range(reps):
                ms, good = case(r)
                times.append(ms)
                ok &= good
            rows.append({"call": name, "median_ms": round(statistics.median(times), 1),
                         "max_ms": round(max(times), 1), "repeats": reps, "correct": ok})
            print(f"{name}: median {rows[-1]['median_ms']} ms, max {rows[-1]['max_ms']} ms, "
                  f"{'ok' if ok else 'WRONG'}")
        r.close()
    a.out.mkdir(parents=True, exist_ok=True)
    write_csv(a.out / "fcall_limits.csv", rows)
    plot(rows, a.out / "fcall_limits.png")
    print(f"wrote {a.out / 'fcall_limits.png'}")
    return 0 if all(row["correct"] for row in rows) else 1


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.2))
    names = [str(row["call"]) for row in rows]
    ax.barh(names, [float(row["median_ms"]) for row in rows], color="#4a7")
    ax.errorbar([float(row["max_ms"]) for row in rows], names, fmt="k|", label="max")
    ax.axvline(50, color="#c33", linestyle="--", label="50 ms")
    ax.set_xlabel("server time per call (SLOWLOG), ms")
    ax.invert_yaxis()
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
