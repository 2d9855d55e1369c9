"""A straggler at half speed, with and without stealing.

Word count, 2 workers, large files.  One worker is SIGSTOPped for 1 s out of
every 2 s (a 50 % duty cycle: half speed, in long pauses).  With stealing
(claim_idle_ms = 300) the healthy worker takes the entries the straggler sits
on while stopped; without (claim_idle_ms = 10 min) they wait for it.
Baseline: no straggler.

    python experiments/straggler.py [--quick]

Writes experiments/results/straggler.{csv,png}.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from common import (
    Every,
    corpus,
    finish,
    parser,
    pyplot,
    reference,
    timed_run,
    wordcount,
)

from rainstorm.local.run import LocalRun

CASES = [("no straggler", 300, False), ("straggler, stealing (300 ms)", 300, True),
         ("straggler, no stealing", 600_000, True)]


def duty_cycle(env: LocalRun) -> Any:
    state = {"stopped": False}

    def flip() -> None:
        if not env.pool or not env.pool.procs or env.pool.procs[0].pid is None:
            return
        try:
            os.kill(env.pool.procs[0].pid,
                    signal.SIGCONT if state["stopped"] else signal.SIGSTOP)
        except ProcessLookupError:
            return  # the worker left (the job just finished): nothing to pause
        state["stopped"] = not state["stopped"]

    return flip


def main() -> int:
    ap = parser(__doc__, 50.0)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    mb = 4.0 if a.quick else a.mb
    paths = corpus("large", mb)
    ref = reference(paths)
    rows = []
    for rep_i in range(1 if a.quick else a.repeat):
        for label, idle, straggle in CASES:
            with LocalRun() as env:
                chaos = Every(1.0 if not a.quick else 0.1, duty_cycle(env)) if straggle else None
                spec = wordcount(claim_idle_ms=idle, batch_bytes=256 * 1024)
                rep, secs, ok, err = timed_run(env, spec, paths, ref, on_progress=chaos)
                if env.pool and env.pool.procs and env.pool.procs[0].pid:
                    try:
                        os.kill(env.pool.procs[0].pid, signal.SIGCONT)
                    except ProcessLookupError:
                        pass
            s0 = rep.status.stages[0] if rep else None
            rows.append({"case": label, "repeat": rep_i, "seconds": round(secs, 3),
                         "claimed": s0.claimed if s0 else 0, "rejected": s0.rejected if s0 else 0,
                         "correct": ok, "error": err})
    return finish("straggler", rows, a.out, lambda path: plot(rows, path, mb))


def plot(rows: list[dict[str, object]], path: Path, mb: float) -> None:
    plt = pyplot()
    cases = list(dict.fromkeys(str(r["case"]) for r in rows))
    fig, ax = plt.subplots(figsize=(7.5, 3))
    for y, case in enumerate(cases):
        vals = [float(str(r["seconds"])) for r in rows if r["case"] == case]
        ax.barh(y, sum(vals) / len(vals), color="#3a7" if "steal" in case else "#888")
        ax.plot(vals, [y] * len(vals), "k.")
        ax.text(max(vals), y, f"  {sum(vals) / len(vals):.2f} s", va="center")
    ax.set_yticks(range(len(cases)), cases)
    ax.invert_yaxis()
    ax.set_xlabel("completion time, s (bar = mean, dots = runs)")
    ax.set_title(f"word count {mb:g} MB, 2 workers, one at half speed; every result exact")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
