"""A random Redis node of a replica set SIGKILLed and restarted every N s
while a job runs (replication lab).

The server of `rainstorm run --replicas 2`: an embedded primary, 2 replicas,
3 Sentinels (quorum 2, down-after 1 s).  Word count, 2 workers.  A chaos
thread picks a random data node (primary or replica) every ``N`` seconds,
SIGKILLs it and starts it again on its directory, either at once or after
``--down`` seconds (long enough for Sentinel to fail over first).  Modes:

* no persistence, restarted at once: a primary that comes back within
  down-after is not failed over; it restarts **empty** and its replicas
  resync from it, so the job's keys are gone: the job must fail loudly;
* no persistence, restarted after the failover: the replicas hold the data;
* AOF everysec, restarted at once: the node reloads its AOF.

Each finished result is compared with ``collections.Counter``.

    python experiments/replica_restarts.py [--quick] [--mb 60] [--periods 2,1] [--repeat 2]

Writes experiments/results/replica_restarts.{csv,png}.
"""

from __future__ import annotations

import random
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

from common import corpus, finish, parser, pyplot, reference, spread, timed_run, wordcount

from rainstorm.local.replication import ReplicaSet
from rainstorm.local.run import LocalRun

MODES = [("no persistence, restart at once", "none", 0.0),
         ("no persistence, restart after failover", "none", None),
         ("AOF everysec, restart at once", "aof-everysec", 0.0)]


class Chaos:
    """Every ``period`` s: SIGKILL a random node, start it again after ``down`` s."""

    def __init__(self, rs: ReplicaSet, period: float, down: float, limit: int, seed: int) -> None:
        self.rs, self.period, self.down, self.limit = rs, period, down, limit
        self.rng = random.Random(seed)
        self.kills = 0
        self.primary_kills = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while self.kills < self.limit and not self.stop.wait(self.period):
            i = self.rng.randrange(len(self.rs.nodes))
            try:
                if i == self.rs.primary_index():
                    self.primary_kills += 1
            except Exception:  # noqa: BLE001 -- no Sentinel answered: count it as a replica
                pass
            node = self.rs.nodes[i]
            node.kill()
            self.kills += 1
            if self.stop.wait(self.down):
                break
            try:
                node.start()
            except Exception as exc:  # noqa: BLE001 -- a failed restart is part of the data
                print(f"restart of node {i} failed: {exc}", file=sys.stderr)

    def __enter__(self) -> Chaos:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


def main() -> int:
    ap = parser(__doc__, 60.0)
    ap.add_argument("--periods", default="2,1", help="seconds between kills")
    ap.add_argument("--down", type=float, default=3.0, help="'after failover': seconds down")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=120.0)
    a = ap.parse_args()
    mb, repeat, timeout = (3.0, 1, 40.0) if a.quick else (a.mb, a.repeat, a.timeout)
    periods = [0.25] if a.quick else [float(p) for p in a.periods.split(",")]
    paths = corpus("large", mb)
    ref = reference(paths)
    spec = wordcount(batch_bytes=128 * 1024)
    rows: list[dict[str, Any]] = []
    for label, persistence, down in MODES:
        for period in [0.0, *periods] if label == MODES[0][0] else periods:
            secs, kills, outcomes, errs = [], [], [], set()
            for rep in range(repeat):
                with LocalRun(replicas=2, persistence=persistence) as env:
                    assert env.replicas is not None
                    chaos = Chaos(env.replicas, period or 1e9, a.down if down is None else down,
                                  3 if a.quick else 10**6, seed=rep)
                    with chaos:
                        _r, s, ok, err = timed_run(env, spec, paths, ref, timeout_s=timeout,
                                                   connect_timeout_s=timeout / 3)
                secs.append(s)
                kills.append(f"{chaos.kills}({chaos.primary_kills}p)")
                outcomes.append("exact" if ok else "failed loudly" if err else "WRONG")
                if err:
                    errs.add(err)
            st = spread("seconds", secs)
            rows.append({"mode": "no kill" if not period else label, "kill_every_s": period,
                         "repeats": repeat, "kills": " ".join(kills), **st,
                         "outcomes": "/".join(outcomes),
                         "correct": all(o == "exact" for o in outcomes),
                         "failed_loudly": "failed loudly" in outcomes and "WRONG" not in outcomes,
                         "error": "; ".join(sorted(errs))[:200]})
    return finish("replica_restarts", rows, a.out, lambda p: plot(rows, p, mb))


def plot(rows: list[dict[str, Any]], path: Path, mb: float) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4))
    labels = [textwrap.fill(f"{r['mode']}, every {r['kill_every_s']:g} s", 20)
              if r["kill_every_s"] else "no kill" for r in rows]
    colors = ["#3a7" if r["correct"] else "#e90" if r["failed_loudly"] else "#d22" for r in rows]
    ax.bar(range(len(rows)), [r["seconds_median"] for r in rows], color=colors,
           yerr=[[r["seconds_median"] - r["seconds_min"] for r in rows],
                 [r["seconds_max"] - r["seconds_median"] for r in rows]], capsize=3)
    for i, r in enumerate(rows):
        ax.annotate(f"{r['outcomes']}\nkills {r['kills']}", (i, r["seconds_median"]),
                    ha="center", fontsize=6, textcoords="offset points", xytext=(0, 8))
    ax.set_xticks(range(len(rows)), labels, fontsize=6)
    ax.set_ylabel("seconds (median, min-max)")
    ax.set_title(f"word count {mb:g} MB, primary + 2 replicas, a random node killed and "
                 "restarted;\ngreen exact, orange failed loudly, red wrong (kills: n(of them "
                 "primary))", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
