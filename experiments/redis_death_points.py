"""Redis dies at the two awkward moments: while the coordinator is still
loading input, and after the workers finished but before the result was read.

Word count, 2 workers, large files, max_backlog 4 (so loading overlaps the
processing).  For each persistence mode the server is SIGKILLed once at the
chosen moment and restarted by the run's supervisor.  The outcome is either
the exact result or a loud failure naming the problem -- never a wrong result.

    python experiments/redis_death_points.py [--quick]

Writes experiments/results/redis_death_points.{csv,png}.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

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
from rainstorm.local.server import EmbeddedRedis

MODES = [("none", {"persistence": "none"}),
         ("rdb 1s", {"persistence": "rdb", "rdb_every_s": 1}),
         ("aof everysec", {"persistence": "aof-everysec"}),
         ("aof always", {"persistence": "aof-always"})]


def killer(server: EmbeddedRedis, moment: str, fired: list[str]) -> Any:
    def on_progress(status: Any) -> None:
        if fired:
            return
        loading = not status.loaded and status.stages[0].emitted > 0
        finished = status.complete
        if (moment == "while loading" and loading) or (moment == "before result read"
                                                      and finished):
            fired.append(f"cursor at {status.bytes_done / 1e6:.1f} MB processed")
            server.kill()
    return on_progress


def main() -> int:
    ap = parser(__doc__, 20.0)
    a = ap.parse_args()
    mb = 4.0 if a.quick else a.mb
    paths = corpus("large", mb)
    ref = reference(paths)
    rows = []
    for moment in ("while loading", "before result read"):
        for label, env_kw in MODES:
            fired: list[str] = []
            with LocalRun(**env_kw) as env:  # type: ignore[arg-type]
                assert env.server is not None
                spec = wordcount(max_backlog=4, batch_bytes=256 * 1024)
                rep, secs, ok, err = timed_run(env, spec, paths, ref,
                                               on_progress=killer(env.server, moment, fired))
            outcome = "exact result" if ok else ("failed loudly" if err else "WRONG RESULT")
            rows.append({"moment": moment, "mode": label, "killed": bool(fired),
                         "seconds": round(secs, 3), "outcome": outcome, "correct": ok,
                         "failed_loudly": bool(err), "error": err})
    return finish("redis_death_points", rows, a.out, lambda path: plot(rows, path))


def plot(rows: list[dict[str, object]], path: Path) -> None:
    plt = pyplot()
    moments = list(dict.fromkeys(str(r["moment"]) for r in rows))
    modes = list(dict.fromkeys(str(r["mode"]) for r in rows))
    colors = {"exact result": "#3a7", "failed loudly": "#e90", "WRONG RESULT": "#d22"}
    fig, ax = plt.subplots(figsize=(8, 2.8))
    for x, moment in enumerate(moments):
        for y, mode in enumerate(modes):
            r = next(r for r in rows if r["moment"] == moment and r["mode"] == mode)
            ax.add_patch(plt.Rectangle((x, y), 0.95, 0.9, color=colors[str(r["outcome"])]))
            ax.text(x + 0.47, y + 0.45, f"{r['outcome']}\n{r['seconds']} s", ha="center",
                    va="center", fontsize=8)
    ax.set_xlim(0, len(moments))
    ax.set_ylim(0, len(modes))
    ax.set_xticks([i + 0.47 for i in range(len(moments))], [f"Redis killed {m}" for m in moments])
    ax.set_yticks([i + 0.45 for i in range(len(modes))], modes)
    ax.invert_yaxis()
    ax.set_title("outcome of one Redis SIGKILL + restart (never a wrong result)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
