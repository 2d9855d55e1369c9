"""The job with f Redis nodes killed, up to what the design tolerates and
one more (replication lab).

`rainstorm run --replicas N`'s server: an embedded primary, N replicas and
3 Sentinels (quorum 2, down-after 1 s).  Word count, 2 workers, no
persistence (the replicas are the only copies).  Once the job has committed
a few entries, f nodes are SIGKILLed at the same moment and stay dead:

* none; one replica; the primary; the primary and N-1 replicas (f = N:
  **the most the design tolerates**, one node is left for Sentinel to
  promote); every node (f = N+1, one more than tolerated).

Tolerance: with N replicas the job survives any N of the N+1 data nodes
dying (the 3 Sentinels must keep a quorum of 2; they are not killed here).
Replication is asynchronous: a failover can roll back the last commits,
whose entries are then redone, so the result stays exact.  With every node
gone the data are gone: the job must fail loudly (or time out with a
message), never report a result.  ``failed_loudly`` records that.  A
Redis that becomes unreachable during the job is waited for up to the
coordinator's outage limit (120 s) or the job's ``timeout_s``, whichever
comes first (``--timeout``: 60 s; 30 s with ``--quick``).

    python experiments/replica_kills.py [--quick] [--mb 20] [--replicas 2] [--repeat 2]

Writes experiments/results/replica_kills.{csv,png}.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from common import corpus, finish, parser, pyplot, reference, spread, timed_run, wordcount

from rainstorm.local.replication import ReplicaSet
from rainstorm.local.run import LocalRun


def victims(rs: ReplicaSet, case: str) -> list[int]:
    primary = rs.primary_index()
    replicas = [i for i in range(len(rs.nodes)) if i != primary]
    return {"none": [], "one replica": replicas[:1], "the primary": [primary],
            "primary + all but one replica": [primary, *replicas[:-1]],
            "every node": [primary, *replicas]}[case]


CASES = ["none", "one replica", "the primary", "primary + all but one replica", "every node"]


def main() -> int:
    ap = parser(__doc__, 20.0)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=60.0, help="per run")
    a = ap.parse_args()
    mb, repeat, timeout = (3.0, 1, 30.0) if a.quick else (a.mb, a.repeat, a.timeout)
    paths = corpus("large", mb)
    ref = reference(paths)
    spec = wordcount(batch_bytes=128 * 1024)
    rows: list[dict[str, Any]] = []
    for case in CASES:
        secs, starts, outcomes, errs = [], [], [], set()
        killed_n = 0
        for _ in range(repeat):
            t = time.perf_counter()
            with LocalRun(replicas=a.replicas) as env:
                starts.append(time.perf_counter() - t)
                rs = env.replicas
                assert rs is not None
                doomed = victims(rs, case)
                killed_n = len(doomed)
                fired: list[int] = []

                def chaos(status: Any, rs: ReplicaSet = rs, doomed: list[int] = doomed,
                          fired: list[int] = fired) -> None:
                    if not fired and sum(s.committed for s in status.stages) >= 4:
                        fired.append(1)
                        for i in doomed:
                            rs.nodes[i].kill()

                _r, s, ok, err = timed_run(env, spec, paths, ref, on_progress=chaos,
                                           timeout_s=timeout)
            secs.append(s)
            outcomes.append("exact" if ok else "failed loudly" if err else "WRONG")
            if err:
                errs.add(err)
        st = spread("seconds", secs)
        rows.append({"case": case, "replicas": a.replicas, "killed": killed_n,
                     "tolerated": killed_n <= a.replicas, "repeats": repeat, **st,
                     "startup_s": round(min(starts), 2), "outcomes": "/".join(outcomes),
                     "correct": all(o == "exact" for o in outcomes),
                     "failed_loudly": any(o == "failed loudly" for o in outcomes)
                     and "WRONG" not in outcomes,
                     "error": "; ".join(sorted(errs))[:200]})
    return finish("replica_kills", rows, a.out, lambda p: plot(rows, p, mb))


def plot(rows: list[dict[str, Any]], path: Path, mb: float) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    colors = ["#3a7" if r["correct"] else "#e90" if r["failed_loudly"] else "#d22" for r in rows]
    labels = [f"{r['case']}\n(f={r['killed']})" for r in rows]
    ax.bar(labels, [r["seconds_median"] for r in rows], color=colors,
           yerr=[[r["seconds_median"] - r["seconds_min"] for r in rows],
                 [r["seconds_max"] - r["seconds_median"] for r in rows]], capsize=3)
    for i, r in enumerate(rows):
        ax.annotate(r["outcomes"], (i, r["seconds_median"]), ha="center", fontsize=7,
                    textcoords="offset points", xytext=(0, 8))
    ax.tick_params(axis="x", labelsize=7)
    ax.set_ylabel("seconds (median, min-max)")
    ax.set_title(f"word count {mb:g} MB, primary + {rows[0]['replicas']} replicas + 3 Sentinels;"
                 "\ngreen exact, orange failed loudly, red wrong", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
