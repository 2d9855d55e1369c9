"""The autoscaler following an input rate that steps up and down.

A two-stage job (stage 0: an I/O-bound enrichment, 2 ms per line, then
split into words; stage 1: count per word) is fed at a rate that steps
200 -> 1500 -> 200 lines/s (the loader's live rate limit, as set by
`rainstorm throttle`); at the end the rest is loaded unthrottled.  The
autoscaler (1 to 4 workers per stage, high watermark 2 s of backlog or
backpressure, low watermark 50 % utilization, 2 s period, 4 s cool-down)
sizes each stage.  Every 0.5 s we record the target rate,
the lines processed per second, the backlog and the workers per stage.

    python experiments/autoscale.py [--quick]

Writes experiments/results/autoscale.{csv,png} and autoscale_decisions.csv.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from common import DATA, finish, parser, pyplot, write_csv

from rainstorm import keys, monitor
from rainstorm.connection import connect
from rainstorm.coordinator.result import materialized
from rainstorm.coordinator.session import Session
from rainstorm.local.run import prepare
from rainstorm.local.server import EmbeddedRedis
from rainstorm.lua import load_library
from rainstorm.ops.autoscale.backends import LocalBackend
from rainstorm.ops.autoscale.controller import Autoscaler
from rainstorm.ops.autoscale.policy import ScalePolicy
from rainstorm.samples import generate_lines
from rainstorm.signing import local_key
from rainstorm.spec import parse_spec

POLICY = ScalePolicy(1, 4, high_backlog_s=2.0, low_utilization=0.5, period_s=2.0,
                     cooldown_s=4.0, interval_s=1.0)


def make_input(schedule: list[tuple[float, float]]) -> Path:
    """As many lines as the schedule asks for (the last step, rate 0, means:
    the rest unthrottled; it is the drain at the end)."""
    total = 0
    for (t0, rate), (t1, _) in zip(schedule, schedule[1:], strict=False):
        total += int(rate * (t1 - t0))
    lines = generate_lines(total * 150, seed=5)[:total]
    assert len(lines) == total, "corpus too small"
    path = DATA / f"autoscale-{total}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run(schedule: list[tuple[float, float]]) -> tuple[list[dict[str, Any]],
                                                      list[dict[str, Any]], bool]:
    path = make_input(schedule)
    spec = parse_spec({
        "name": "autoscale", "source": {"type": "text", "batch_bytes": 1024,
                                        "max_rate": schedule[0][1]},
        "pipeline": [{"op": "flat_map", "fn": "enrich:enrich_words"}, {"op": "repartition"},
                     {"op": "count"}],
        "settings": {"parallelism": 2, "claim_idle_ms": 2000},
    })
    job, files = prepare(spec, [str(path)], "autoscale")
    with EmbeddedRedis() as srv:
        r = connect(srv.url)
        load_library(r)
        key = local_key()  # the workers are this process's children
        session = Session(connect(srv.url), job, files, key=key)
        session.submit()
        backend = LocalBackend(connect(srv.url), srv.url, ("enrich",),
                               env={"PYTHONPATH": str(Path(__file__).parent),
                                    "RAINSTORM_SECRET": key.decode()})
        scaler = Autoscaler(connect(srv.url), backend, POLICY, job_id=job.id)
        stop = threading.Event()
        threading.Thread(target=scaler.run, args=(stop,), daemon=True).start()
        out: dict[str, Any] = {}
        timeout_s = schedule[-1][0] * 4 + 60
        driver = threading.Thread(
            target=lambda: out.update(result=materialized(session.drive(timeout_s=timeout_s))),
            daemon=True)
        t0, t0_wall = time.monotonic(), time.time()
        driver.start()
        rows = sample(r, job.id, schedule, t0, driver)
        stop.set()
        backend.close()
    ref = Counter(path.read_text(encoding="utf-8").split())
    correct = out.get("result") == ref
    for row in rows:
        row["correct"] = correct
    decisions = [{**d.to_json(), "t_rel": round(d.t - t0_wall, 2)} for d in scaler.decisions]
    return rows, decisions, correct


def sample(r: Any, job_id: str, schedule: list[tuple[float, float]], t0: float,
           driver: threading.Thread) -> list[dict[str, Any]]:
    """Every 0.5 s: set the scheduled rate (like `rainstorm throttle`) and record."""
    tracker = monitor.RateTracker()
    rows = []
    while driver.is_alive():
        t = time.monotonic() - t0
        target = [rate for start, rate in schedule if start <= t][-1]
        if target:
            r.hset(keys.meta(job_id), "max_rate", target)
        else:  # the schedule is over: load the rest unthrottled
            r.hdel(keys.meta(job_id), "max_rate")
        snap = tracker.update(monitor.snapshot(r, job_id))
        workers = Counter(w.stage for w in snap.workers if w.alive)
        row: dict[str, Any] = {"t": round(t, 2), "target_rate": target}
        for st in snap.jobs[0].stages if snap.jobs else []:
            i = st.index
            rates = st.rates or monitor.Rates(0.0, 0.0, 0.0)
            row[f"s{i}_lines_per_s" if i == 0 else f"s{i}_entries_per_s"] = \
                rates.records_rate if i == 0 else rates.out_rate
            row[f"s{i}_backlog"] = st.backlog
            row[f"s{i}_workers"] = workers.get(i, 0)
        rows.append(row)
        driver.join(0.5)
    return rows


def plot(rows: list[dict[str, Any]], decisions: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    t = [r["t"] for r in rows]
    fig, ax = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    ax[0].step(t, [r["target_rate"] for r in rows], where="post", label="input rate (target)")
    ax[0].plot(t, [r.get("s0_lines_per_s", 0) for r in rows], label="stage 0 processed")
    ax[0].set_ylabel("lines / s")
    ax[0].legend(loc="upper right")
    for i in (0, 1):
        ax[1].plot(t, [r.get(f"s{i}_backlog", 0) for r in rows], label=f"stage {i}")
        ax[2].step(t, [r.get(f"s{i}_workers", 0) for r in rows], where="post",
                   label=f"stage {i}")
    ax[1].set_ylabel("backlog (entries)")
    ax[1].legend(loc="upper right")
    ax[2].set_ylabel("workers")
    ax[2].set_xlabel("seconds")
    ax[2].legend(loc="upper right")
    for d in decisions:  # a dotted line at each change
        ax[2].axvline(d["t_rel"], color="C0" if d["stage"] == 0 else "C1", ls=":", lw=0.8)
    fig.suptitle("autoscaling a 2-stage job: 200 -> 1500 -> 200 lines/s, 1..4 workers/stage")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    a = parser(__doc__).parse_args()
    if a.quick:
        schedule = [(0.0, 200.0), (3.0, 1500.0), (15.0, 200.0), (22.0, 0.0)]
    else:
        schedule = [(0.0, 200.0), (20.0, 1500.0), (50.0, 200.0), (80.0, 0.0)]
    rows, decisions, correct = run(schedule)
    if decisions:
        write_csv(a.out / "autoscale_decisions.csv", decisions)
    for d in decisions:
        print(f"  stage {d['stage']}: {d['change']:+d} at {d['workers']} workers: "
              f"{d['reason']} (in {d['in_rate']}/s, out {d['out_rate']}/s, "
              f"backlog {d['backlog']}, util {d['utilization']})")
    status = finish("autoscale", rows, a.out, lambda p: plot(rows, decisions, p))
    print(f"result {'correct' if correct else 'WRONG'}; {len(decisions)} scaling decisions")
    return status


if __name__ == "__main__":
    sys.exit(main())
