"""What does durability cost when nothing fails?

Word count, 2 workers, on many small files and on a few large ones, with the
embedded server in each persistence mode: none, RDB every 1 s and every 5 s,
AOF everysec, AOF always, and a primary with 2 replicas + 3 Sentinels where
every commit WAITs for both replicas.

    python experiments/persistence_cost.py [--quick] [--repeat 2]

Writes experiments/results/persistence_cost.{csv,png}.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from common import (
    corpus,
    finish,
    parser,
    pyplot,
    reference,
    timed_run,
    wordcount,
)

from rainstorm.local.run import LocalRun

MODES = [  # label, LocalRun kwargs, spec settings
    ("none", {"persistence": "none"}, {}),
    ("rdb 5s", {"persistence": "rdb", "rdb_every_s": 5}, {}),
    ("rdb 1s", {"persistence": "rdb", "rdb_every_s": 1}, {}),
    ("aof everysec", {"persistence": "aof-everysec"}, {}),
    ("aof always", {"persistence": "aof-always"}, {}),
    ("2 replicas + WAIT 2", {"replicas": 2}, {"wait_replicas": 2, "wait_timeout_ms": 2000}),
]


def main() -> int:
    ap = parser(__doc__)
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    sizes = {"small files": ("small", 1.0 if a.quick else 10.0),
             "large files": ("large", 4.0 if a.quick else 50.0)}
    repeat = 1 if a.quick else a.repeat
    rows = []
    for size_label, (kind, mb) in sizes.items():
        paths = corpus(kind, mb)
        ref = reference(paths)
        for label, env_kw, settings in MODES:
            for rep_i in range(repeat):
                with LocalRun(**env_kw) as env:  # type: ignore[arg-type]
                    rep, secs, ok, err = timed_run(env, wordcount(**settings), paths, ref)
                rows.append({"input": size_label, "files": len(paths), "mb": mb, "mode": label,
                             "repeat": rep_i, "seconds": round(secs, 3),
                             "mb_per_s": round(mb / secs, 2), "correct": ok, "error": err})
    return finish("persistence_cost", rows, a.out, lambda path: plot(rows, path))


def plot(rows: list[dict[str, object]], path: Path) -> None:
    plt = pyplot()
    inputs = list(dict.fromkeys(str(r["input"]) for r in rows))
    modes = list(dict.fromkeys(str(r["mode"]) for r in rows))
    fig, axes = plt.subplots(1, len(inputs), figsize=(11, 3.6), sharey=False)
    for ax, inp in zip(axes, inputs, strict=True):
        med = []
        for m in modes:
            vals = [float(str(r["seconds"])) for r in rows if r["input"] == inp and r["mode"] == m]
            med.append(statistics.median(vals))
        base = med[0]
        ax.barh(modes, med, color=["#888"] + ["#3a7"] * (len(modes) - 1))
        for y, v in enumerate(med):
            ax.text(v, y, f" {v:.2f}s ({v / base:.2f}x)", va="center", fontsize=8)
        ax.invert_yaxis()
        ax.set_title(inp)
        ax.set_xlabel("completion time, s (median)")
        ax.set_xlim(0, max(med) * 1.45)
    fig.suptitle("word count, 2 workers: cost of persistence and replication (no faults)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
