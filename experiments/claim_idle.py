"""Completion time vs claim_idle_ms, with and without worker failures.

Word count, 2 workers (3 with failures, one SIGKILLed every 0.5 s and replaced),
large files.  A small claim_idle_ms recovers a dead worker's entries fast but
steals from live workers whose batch simply takes longer than the threshold
(wasted work: rejected commits); a large one wastes nothing but leaves a dead
worker's entries idle that long.

    python experiments/claim_idle.py [--quick]

Writes experiments/results/claim_idle.{csv,png}.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from common import (
    Every,
    corpus,
    finish,
    kill_a_worker,
    parser,
    pyplot,
    reference,
    timed_run,
    wordcount,
)

from rainstorm.local.run import LocalRun


def main() -> int:
    ap = parser(__doc__, 50.0)
    a = ap.parse_args()
    mb = 4.0 if a.quick else a.mb
    idles = [50, 2000] if a.quick else [50, 200, 1000, 3000, 10000]
    kill_every = 0.1 if a.quick else 0.5
    paths = corpus("large", mb)
    ref = reference(paths)
    rows = []
    for failures in (False, True):
        for idle in idles:
            rng = random.Random(idle)
            with LocalRun() as env:
                chaos = Every(kill_every, kill_a_worker(env, rng)) if failures else None
                spec = wordcount(claim_idle_ms=idle, batch_bytes=256 * 1024)
                rep, secs, ok, err = timed_run(env, spec, paths, ref, on_progress=chaos,
                                               workers=3 if failures else 2)
            s0 = rep.status.stages[0] if rep else None
            rows.append({"failures": f"worker killed every {kill_every:g}s" if failures
                         else "none", "claim_idle_ms": idle,
                         "kills": chaos.count if chaos else 0, "seconds": round(secs, 3),
                         "claimed": s0.claimed if s0 else 0, "rejected": s0.rejected if s0 else 0,
                         # healthy input: any dead letter is a false poison verdict
                         "dead_letters": s0.dead + s0.dead_records if s0 else 0,
                         "correct": ok, "error": err})
    status = finish("claim_idle", rows, a.out, lambda path: plot(rows, path, mb))
    if any(int(str(row["dead_letters"])) for row in rows):
        print("DEAD LETTERS from healthy input (faults must never dead-letter)", file=sys.stderr)
        return 1
    return status


def plot(rows: list[dict[str, object]], path: Path, mb: float) -> None:
    plt = pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    for fail in dict.fromkeys(str(r["failures"]) for r in rows):
        pts = [r for r in rows if r["failures"] == fail]
        xs = [int(str(r["claim_idle_ms"])) for r in pts]
        ax.plot(xs, [float(str(r["seconds"])) for r in pts], "o-", label=fail)
        ax2.plot(xs, [int(str(r["claimed"])) for r in pts], "o-", label=f"claimed, {fail}")
        ax2.plot(xs, [int(str(r["rejected"])) for r in pts], "x--", label=f"rejected, {fail}")
    for a in (ax, ax2):
        a.set_xscale("log")
        a.set_xlabel("claim_idle_ms")
    ax.set_ylabel("completion time, s")
    ax.set_title(f"word count {mb:g} MB; every result exact")
    ax2.set_ylabel("entries")
    ax2.set_title("steals (claimed) and wasted commits (rejected)")
    ax.legend(fontsize=8)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
