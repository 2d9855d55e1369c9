"""Engine CPU per record of a streaming count at fixed offered rates.

A producer process XADDs one record (a key) per stream entry at a fixed
offered rate; a streaming job (Redis-stream source, `count` per key, 2
workers and a coordinator as separate `rainstorm` processes, a private
embedded server per rate) counts them.  Over a steady window (from 1 s after
the producer starts to its end) it measures:

* the sustained rate: records committed per second (counter ``s0:records_in``);
* the engine's CPU per record: utime + stime from /proc/<pid>/stat of the
  coordinator, both workers and the server over the window, divided by the
  records committed in it (µs/record).  The producer's own CPU is reported
  apart, and so is the server CPU its XADDs cost (measured before the job,
  the producer alone at the same rate): ``engine_net_us`` leaves it out;
* append -> committed lag: the producer logs (time, records sent) after every
  pipeline it flushes; at each 50 ms sample the newest committed record was
  appended when the producer's count passed the committed count, so
  lag = now - then (p50/p95/p99 over the window; a sample's resolution is the
  producer's tick, 2 ms, plus the commit).  A record-output job's per-record
  latency: experiments/latency.py.

The final counts (`rainstorm result JOB --json`) must equal a Counter over
what the producer sent.  Target (issue 12): <= 5 µs of engine CPU per record
(``engine_us``: coordinator + workers + the whole server), PASS/FAIL printed.

    python experiments/stream_cpu.py [--quick] [--rates 10000,25000,50000,100000]
        [--seconds 10] [--linger-ms 0,20] [--batch-records 200,1000] [--repeat 1]
        [--producer python|lua] [--transport copy,split] [--name stream_cpu]

``--producer lua`` makes each tick's XADDs with one EVAL inside the server
instead of a Python process's pipelined XADDs (~8 µs of its own CPU a
record): the engine gets the machine's cores, for its highest sustained
rate; the records' server cost is measured either way (``server_xadd_us``).

``--linger-ms`` runs every rate once per value of ``source.linger_ms`` (the
loader waits up to that long for a full entry of ``batch_records``), and
``--batch-records`` once per value of ``source.batch_records``;
``--repeat N`` runs all of that N times, setting after setting, so that
settings compared are measured side by side on a noisy host.

Writes experiments/results/stream_cpu.{csv,png}.
"""

from __future__ import annotations

import bisect
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import ROOT, finish, parser, pyplot
from serial_fraction import cpu_s

from rainstorm import keys
from rainstorm.connection import connect
from rainstorm.local.server import EmbeddedRedis
from rainstorm.lua import load_library
from rainstorm.protocol.counters import StageCounter

TARGET_US = 5.0
KEYS = 1000
WARMUP_S = 1.0
SAMPLE_S = 0.05

SPEC = """name: stream-cpu
source: {{type: stream, key: {key}, field: d, batch_records: {batch}, linger_ms: {linger},
          transport: {transport}}}
pipeline:
  - {{op: count}}
settings: {{batch_entries: 8, max_backlog: 1000}}
"""

# record seq carries key k<seq * 7919 % KEYS>; logs (time, sent) after each flush, as
# JSON into the file argv[6] at the end.  argv[7] "lua": the XADDs of each tick are
# made by one EVAL inside the server (a producer that costs ~no CPU of its own, so
# the engine has the machine's cores to itself); "python": pipelined XADDs
PRODUCER = r"""
import json, sys, time, redis
url, key, rate, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
nkeys, out, how = int(sys.argv[5]), sys.argv[6], sys.argv[7]
LUA = ("for seq = tonumber(ARGV[1]), tonumber(ARGV[2]) - 1 do "
       "redis.call('XADD', KEYS[1], '*', 'd', 'k' .. string.format('%d', "
       "seq * 7919 % tonumber(ARGV[3]))) end return 1")
r = redis.Redis.from_url(url)
tick = 0.002
log = []
t0 = time.monotonic(); sent = 0; total = int(rate * seconds)
while sent < total:
    due = int(min((time.monotonic() - t0) * rate, total))
    if due > sent:
        if how == "lua":
            r.eval(LUA, 1, key, sent, due, nkeys)
        else:
            pipe = r.pipeline(transaction=False)
            for seq in range(sent, due):
                pipe.xadd(key, {"d": f"k{seq * 7919 % nkeys}"})
            pipe.execute()
        sent = due
        log.append((time.time(), sent))
    time.sleep(tick)
with open(out, "w") as fh:
    json.dump(log, fh)
"""


def sent_counter(n: int) -> Counter[str]:
    """What the producer sent, computed independently of its output."""
    return Counter(f"k{seq * 7919 % KEYS}" for seq in range(n))


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


class Producer:
    """The producer process; its log file; its CPU read before it is reaped."""

    def __init__(self, url: str, key: str, rate: int, seconds: float, log: Path,
                 how: str = "python") -> None:
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-c", PRODUCER, url, key, str(rate),
                                      str(seconds), str(KEYS), str(log), how])

    def exited(self) -> bool:
        flags = os.WEXITED | os.WNOWAIT | os.WNOHANG
        return os.waitid(os.P_PID, self.proc.pid, flags) is not None

    def finish(self, timeout_s: float) -> tuple[float, list[Any]]:
        """(its CPU seconds, its (time, sent) log)."""
        deadline = time.monotonic() + timeout_s
        while not self.exited():
            if time.monotonic() > deadline:
                self.proc.kill()
                raise TimeoutError("the producer did not finish")
            time.sleep(0.02)
        used = cpu_s(self.proc.pid)
        if self.proc.wait() != 0:
            raise RuntimeError("the producer failed")
        return used, json.loads(self.log.read_text())


def calibrate(url: str, server_pid: int, rate: int, seconds: float, tmp: Path,
              how: str = "python") -> float:
    """Server µs per XADD at this rate, the producer alone (no job)."""
    r = connect(url)
    before = cpu_s(server_pid)
    _cpu, log = Producer(url, "calibration", rate, seconds, tmp / "cal.json", how).finish(
        seconds + 60)
    used = cpu_s(server_pid) - before
    r.delete("calibration")
    r.close()
    return used / max(1, log[-1][1]) * 1e6 if log else 0.0


@dataclass
class Run:
    rate: int
    seconds: float
    t_start: float
    window: list[tuple[float, int, list[float]]]  # (time, committed, CPU s per process)
    samples: list[tuple[float, int]]  # (time, committed)
    log: list[Any]  # the producer's (time, sent)
    prod_cpu: float
    drained_at: float
    xadd_us: float
    got: Counter[str] | None


def summary(run: Run) -> dict[str, Any]:
    rate, seconds, t_start, window, samples, log = (run.rate, run.seconds, run.t_start,
                                                     run.window, run.samples, run.log)
    prod_cpu, drained_at, xadd_us, got = run.prod_cpu, run.drained_at, run.xadd_us, run.got
    sent = log[-1][1] if log else 0
    (t0, c0, cpu0), (t1, c1, cpu1) = window[0], window[-1]
    recs = max(1, c1 - c0)
    used = [b - a for a, b in zip(cpu0, cpu1, strict=True)]
    engine_us = sum(used) / recs * 1e6
    times, counts = [t for t, _ in log], [n for _, n in log]
    lags = []
    for now, c in samples:
        i = bisect.bisect_left(counts, c)
        if t0 <= now <= t1 and c > 0 and i < len(times):
            lags.append(max(0.0, now - times[i]) * 1e3)
    produced_rate = (sent / (log[-1][0] - t_start)) if log else 0.0
    committed_rate = (c1 - c0) / (t1 - t0)
    return {"offered_rate": rate, "seconds": seconds, "sent": sent,
            "produced_rate": round(produced_rate), "committed_rate": round(committed_rate),
            "sustained": committed_rate >= 0.95 * produced_rate and drained_at - t1 < 2.0,
            "window_s": round(t1 - t0, 2), "window_records": c1 - c0,
            "coordinator_cpu_s": round(used[0], 2), "worker1_cpu_s": round(used[1], 2),
            "worker2_cpu_s": round(used[2], 2), "server_cpu_s": round(used[3], 2),
            "engine_us": round(engine_us, 2),
            "server_xadd_us": round(xadd_us, 2),
            "engine_net_us": round(engine_us - xadd_us, 2),
            "producer_us": round(prod_cpu / max(1, sent) * 1e6, 2),
            "lag_p50_ms": round(percentile(lags, 0.5), 1),
            "lag_p95_ms": round(percentile(lags, 0.95), 1),
            "lag_p99_ms": round(percentile(lags, 0.99), 1),
            "drain_s": round(drained_at - t1, 2),
            "target": "PASS" if engine_us <= TARGET_US else "FAIL",
            "correct": got == sent_counter(sent)}


def measure(rate: int, seconds: float, cal_s: float, tmp: Path, linger_ms: int = 0,
            batch_records: int = 200, how: str = "python", transport: str = "auto"
            ) -> dict[str, Any]:
    tag = f"{rate}l{linger_ms}b{batch_records}{transport}"
    job, key = f"cpu{tag}", f"src{tag}"
    spec = tmp / f"{job}.yaml"
    spec.write_text(SPEC.format(key=key, linger=linger_ms, batch=batch_records,
                                transport=transport))
    with EmbeddedRedis() as srv:
        assert srv.proc is not None
        url, spid = srv.url, srv.proc.pid
        r = connect(url)
        load_library(r)
        xadd_us = calibrate(url, spid, rate, cal_s, tmp, how)
        env = dict(os.environ, RAINSTORM_REDIS=url, PYTHONPATH=str(ROOT),
                   RAINSTORM_SECRET=secrets.token_hex(32))
        rs = [sys.executable, "-m", "rainstorm"]
        engine = [subprocess.Popen([*rs, *cmd, "--job", job], env=env, cwd=ROOT,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
                  for cmd in (["submit", str(spec)], ["worker"], ["worker"])]
        try:
            deadline = time.monotonic() + 30
            while r.hget(keys.meta(job), "state") != b"running" or r.hlen(keys.WORKERS) < 2:
                if time.monotonic() > deadline:
                    raise SystemExit("job or workers did not start")
                time.sleep(0.05)
            field = keys.counter_field(0, StageCounter.RECORDS_IN)

            def committed() -> int:
                return int(r.hget(keys.counters(job), field) or 0)

            def engine_cpu() -> list[float]:
                return [cpu_s(p.pid) for p in engine] + [cpu_s(spid)]

            prod = Producer(url, key, rate, seconds, tmp / f"{job}.json", how)
            t_start = time.time()
            samples: list[tuple[float, int]] = []
            window: list[tuple[float, int, list[float]]] = []
            while not prod.exited():
                now = time.time()
                if not window and now - t_start >= WARMUP_S:
                    window.append((now, committed(), engine_cpu()))
                samples.append((now, committed()))
                time.sleep(SAMPLE_S)
            window.append((time.time(), committed(), engine_cpu()))
            prod_cpu, log = prod.finish(60)
            sent = log[-1][1] if log else 0
            drain_deadline = time.monotonic() + 30
            while committed() < sent and time.monotonic() < drain_deadline:
                samples.append((time.time(), committed()))
                time.sleep(SAMPLE_S)
            drained_at = time.time()
            res = subprocess.run([*rs, "result", job, "--json"], env=env, cwd=ROOT,
                                 capture_output=True, text=True, timeout=120)
            got = Counter(json.loads(res.stdout)) if res.returncode == 0 else None
        finally:
            subprocess.run([*rs, "kill-job", job], env=env, cwd=ROOT, capture_output=True,
                           timeout=30)
            for p in engine:
                p.terminate()
            for p in engine:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
            r.close()
    return summary(Run(rate, seconds, t_start, window, samples, log, prod_cpu, drained_at,
                       xadd_us, got))


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.2))
    rates = [r["offered_rate"] for r in rows]
    several = {k: len({r[k] for r in rows}) > 1 for k in ("batch_records", "round", "transport")}
    names = [f"{r['offered_rate']}" + (f"\nlinger {r['linger_ms']}" if r["linger_ms"] else "")
             + (f"\nbatch {r['batch_records']}" if several["batch_records"] else "")
             + (f"\n{r['transport']}" if several["transport"] else "")
             + (f"\nround {r['round']}" if several["round"] else "")
             for r in rows]
    bottom = [0.0] * len(rows)
    for col, label in (("coordinator_cpu_s", "coordinator"), ("worker1_cpu_s", "worker 1"),
                       ("worker2_cpu_s", "worker 2"), ("server_cpu_s", "server")):
        vals = [r[col] / max(1, r["window_records"]) * 1e6 for r in rows]
        a1.bar(names, vals, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    a1.plot(names, [r["producer_us"] for r in rows], "k^--",
            label="producer (not engine)")
    a1.axhline(TARGET_US, color="red", ls=":", lw=1, label=f"target {TARGET_US:g} µs")
    a1.set_xlabel("offered rate (records/s)")
    a1.set_ylabel("CPU µs per record committed")
    a1.set_title("engine CPU per record, steady window")
    a1.legend(fontsize=8)
    a2.plot(rates, rates, color="grey", ls=":", lw=1, label="offered")
    for linger, batch, how in sorted({(r["linger_ms"], r["batch_records"], r["transport"])
                                      for r in rows}):
        sub = [r for r in rows if (r["linger_ms"], r["batch_records"], r["transport"])
               == (linger, batch, how)]
        tag = (f" (linger {linger} ms)" if linger else "") \
            + (f" (batch {batch})" if several["batch_records"] else "") \
            + (f" ({how})" if several["transport"] else "")
        a2.plot([r["offered_rate"] for r in sub], [r["committed_rate"] for r in sub], "o-",
                label="committed" + tag)
    a2.plot(rates, [r["produced_rate"] for r in rows], "s--", label="produced")
    a2.set_xlabel("offered rate (records/s)")
    a2.set_ylabel("records/s")
    ax3 = a2.twinx()
    ax3.plot(rates, [r["lag_p99_ms"] for r in rows], "r.:", label="lag p99 (ms, right)")
    ax3.set_yscale("log")
    ax3.set_ylabel("append -> committed p99 (ms)")
    a2.set_title("sustained rate, 2 workers")
    a2.legend(loc="upper left", fontsize=8)
    ax3.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = parser(__doc__)
    ap.add_argument("--seconds", type=float, default=10.0, help="producer time per rate")
    ap.add_argument("--rates", default="10000,25000,50000,100000")
    ap.add_argument("--linger-ms", default="0",
                    help="source.linger_ms values, each run at every rate (e.g. 0,20)")
    ap.add_argument("--batch-records", default="200",
                    help="source.batch_records values, each run at every rate and linger: "
                         "records per stage-0 entry (e.g. 1000,3000 with --linger-ms 50, "
                         "throughput over latency)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds: every setting once a round, in turn (side by side)")
    ap.add_argument("--producer", choices=("python", "lua"), default="python",
                    help="python: pipelined XADDs (~8 µs of its own CPU a record); lua: "
                         "one EVAL a tick makes them in the server, so the engine has "
                         "the cores to itself (its server CPU is measured either way)")
    ap.add_argument("--transport", default="auto",
                    help="source.transport values, each run at every setting (e.g. "
                         "copy,split): split (auto) has the coordinator cut id ranges that "
                         "the workers read; copy has it copy batches into the job's "
                         "streams; direct has the workers read the stream (no linger_ms)")
    ap.add_argument("--name", default="stream_cpu", help="results file name (CSV and PNG)")
    a = ap.parse_args()
    lingers = [int(x) for x in a.linger_ms.split(",")]
    batches = [int(x) for x in a.batch_records.split(",")]
    transports = a.transport.split(",")
    if not set(transports) <= {"auto", "split", "copy", "direct"}:
        ap.error(f"--transport: {a.transport!r}: auto, split, copy or direct, comma-separated")
    rates = [5000, 20000] if a.quick else [int(x) for x in a.rates.split(",")]
    seconds = 2.5 if a.quick else a.seconds
    cal_s = 1.0 if a.quick else 3.0
    rows = []
    with tempfile.TemporaryDirectory(prefix="rs-scpu-") as tmp:
        for rnd in range(1, max(1, a.repeat) + 1):
            for rate in rates:
                for linger in lingers:
                    for batch in batches:
                        for how in transports:
                            row = {"round": rnd, "linger_ms": linger, "batch_records": batch,
                                   "producer": a.producer, "transport": how,
                                   **measure(rate, seconds, cal_s, Path(tmp), linger, batch,
                                             a.producer, how)}
                            print(row, flush=True)
                            rows.append(row)
    for r in rows:
        print(f"{r['offered_rate']:>7}/s offered, {r['transport']}, linger {r['linger_ms']} ms, "
              f"batch_records {r['batch_records']}, round {r['round']}: "
              f"{r['committed_rate']:>7}/s committed"
              f"{'' if r['sustained'] else ' (NOT sustained)'}, engine {r['engine_us']} µs/rec "
              f"(without the XADDs' server share {r['engine_net_us']}), producer "
              f"{r['producer_us']} µs/rec, lag p99 {r['lag_p99_ms']} ms: {r['target']}")
    sustained = [r["committed_rate"] for r in rows if r["sustained"]]
    print(f"highest sustained rate: {max(sustained) if sustained else 'none'} records/s; "
          f"target <= {TARGET_US:g} µs/record: "
          f"{'PASS' if all(r['target'] == 'PASS' for r in rows) else 'FAIL'}")
    return finish(a.name, rows, a.out, lambda p: plot(rows, p))


if __name__ == "__main__":
    sys.exit(main())
