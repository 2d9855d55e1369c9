"""A stream source read directly by the workers vs copied by the coordinator.

For each offered rate, the same job runs twice on a fresh embedded server,
``source.transport: copy`` then ``direct``: a producer process XADDs records
at that rate for ``--seconds``; a coordinator (`rainstorm submit`) and 2
workers (`rainstorm worker`) run a `map identity` job into its output
stream.  Per run: the rate sustained (records committed by stage 0 over the
producing window), the backlog left when the producer stopped, and the CPU
the engine spent (coordinator + workers + server, from /proc/<pid>/stat, the
producer excluded) per record committed.  The records are checked: the
output holds each produced record exactly once.

    python experiments/stream_direct.py [--rates 50000,100000,150000] [--seconds 8]

Writes experiments/results/stream_direct.csv.
"""

from __future__ import annotations

import argparse
import csv
import os
import secrets
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from common import RESULTS, ROOT

from rainstorm import keys
from rainstorm.connection import connect
from rainstorm.job import decode_records
from rainstorm.local.server import EmbeddedRedis
from rainstorm.lua import load_library
from rainstorm.monitor import read_progress

SPEC = """name: direct
source: {{type: stream, key: src, field: d, batch_records: 200, transport: {mode}}}
pipeline:
  - {{op: map, fn: identity}}
settings: {{batch_entries: 8, max_backlog: 1000}}
"""

PRODUCER = r"""
import sys, time, redis
url, rate, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
r = redis.Redis.from_url(url)
t0 = time.monotonic(); sent = 0; total = int(rate * seconds)
while sent < total:
    due = int(min((time.monotonic() - t0) * rate, total))
    if due > sent:
        due = min(due, sent + 2000)
        pipe = r.pipeline(transaction=False)
        for seq in range(sent, due):
            pipe.xadd("src", {"d": str(seq)})
        pipe.execute()
        sent = due
    else:
        time.sleep(0.002)
print(sent, time.monotonic() - t0)
"""

TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def run(mode: str, rate: int, seconds: float, tmp: Path) -> dict[str, Any]:
    with EmbeddedRedis() as srv:
        url = srv.url
        r = connect(url)
        load_library(r)
        spec = tmp / f"{mode}.yaml"
        spec.write_text(SPEC.format(mode=mode))
        env = dict(os.environ, RAINSTORM_REDIS=url)
        env.setdefault("RAINSTORM_SECRET", secrets.token_hex(32))
        job = f"{mode}{rate}"
        coord = subprocess.Popen([sys.executable, "-m", "rainstorm", "submit", str(spec),
                                  "--job", job], env=env, cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        workers = [subprocess.Popen([sys.executable, "-m", "rainstorm", "worker", "--job", job],
                                    env=env, cwd=ROOT, stderr=subprocess.DEVNULL)
                   for _ in range(2)]
        deadline = time.monotonic() + 60
        while not read_progress(r, job).meta and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # workers adopt the job
        assert srv.proc is not None
        pids = {"coordinator": coord.pid, "server": srv.proc.pid,
                **{f"worker{i}": w.pid for i, w in enumerate(workers)}}
        before = {k: cpu_s(p) for k, p in pids.items()}
        s0 = read_progress(r, job).counts.stage(0).records_in
        t0 = time.monotonic()
        prod = subprocess.run([sys.executable, "-c", PRODUCER, url, str(rate), str(seconds)],
                              capture_output=True, text=True, check=True)
        sent, _ = prod.stdout.split()
        window = time.monotonic() - t0
        done = read_progress(r, job).counts.stage(0).records_in - s0
        after = {k: cpu_s(p) for k, p in pids.items()}
        drain = time.monotonic() + 30
        while read_progress(r, job).counts.stage(0).records_in < int(sent) \
                and time.monotonic() < drain:
            time.sleep(0.05)
        out: Counter[str] = Counter()
        for _, fields in r.xrange(keys.output(job)):
            out.update(decode_records(fields[b"d"]))
        expected = Counter(str(i) for i in range(int(sent)))
        drained = out == expected  # every record out once (False: not drained within 30 s)
        correct = max(out.values(), default=1) == 1 and set(out) <= set(expected)
        for p in [coord, *workers]:
            p.kill()
            p.wait(10)
        cpu = {k: after[k] - before[k] for k in pids}
        engine = sum(cpu.values())
        return {"mode": mode, "offered": rate, "seconds": round(window, 2), "sent": int(sent),
                "sustained": round(done / window), "backlog_at_end": int(sent) - done,
                "engine_cpu_us_per_record": round(engine * 1e6 / max(done, 1), 1),
                "coordinator_cores": round(cpu["coordinator"] / window, 2),
                "workers_cores": round((cpu["worker0"] + cpu["worker1"]) / window, 2),
                "server_cores": round(cpu["server"] / window, 2), "drained": drained,
                "no_duplicate": correct}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rates", default="50000,100000,150000")
    p.add_argument("--seconds", type=float, default=8.0)
    args = p.parse_args()
    tmp = ROOT / "experiments" / "out" / "stream-direct"  # (ignored by git)
    tmp.mkdir(parents=True, exist_ok=True)
    rows = []
    for rate in (int(x) for x in args.rates.split(",")):
        for mode in ("copy", "direct"):
            row = run(mode, rate, args.seconds, tmp)
            print(row, flush=True)
            rows.append(row)
    with (RESULTS / "stream_direct.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main()
