"""Word count on one file, from 100 B up to the largest size that fits
(word-count lab 2: "file size from 100 B to 1 GB").

One file of generated English-like words (rainstorm.samples) per size; for
each, rainstorm (2 forked workers, an embedded Valkey started once before
all runs: its start-up is the ``startup`` row, not in any job time) and
serial ``collections.Counter`` over the same file, one after the other,
``--repeat`` times.  Every rainstorm result is compared with the Counter.

Sizes: 100 B, 1 kB, ... 100 MB, then ``--max-mb`` (default 200 MB).  1 GB
does not fit here: the generator holds the text in memory, and a run at
~10 MB/s would take ~2 minutes per repeat on this shared 2-core machine.

    python experiments/file_sizes.py [--quick] [--max-mb 200] [--repeat 3]

Writes experiments/results/file_sizes.{csv,png}.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from common import DATA, finish, parser, pyplot, reference, spread, text_file, timed_run, wordcount

from rainstorm.local.run import LocalRun


def sizes(max_mb: float, quick: bool) -> list[int]:
    out = [100, 1_000, 10_000, 100_000, 1_000_000]
    if quick:
        return out
    out += [10_000_000, 100_000_000]
    if max_mb * 1e6 > out[-1]:
        out.append(int(max_mb * 1e6))
    return [s for s in out if s <= max_mb * 1e6]


def main() -> int:
    ap = parser(__doc__)
    ap.add_argument("--max-mb", type=float, default=200.0)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    repeat = 2 if a.quick else a.repeat
    rows: list[dict[str, Any]] = []
    t = time.perf_counter()
    with LocalRun() as env:
        rows.append({"contender": "startup (embedded Valkey)", "bytes": 0,
                     **spread("seconds", [time.perf_counter() - t]),
                     "mb_per_s": "", "correct": True})
        for size in sizes(a.max_mb, a.quick):
            path = text_file(DATA / "file_sizes" / f"f{size}.txt", size)
            real = path.stat().st_size
            t = time.perf_counter()
            ref = reference([path])
            serial = [time.perf_counter() - t]
            runs, ok = [], True
            for _ in range(repeat):
                _rep, secs, good, err = timed_run(env, wordcount(), [path], ref)
                if err:
                    print(f"{size} B: {err}", file=sys.stderr)
                runs.append(secs)
                ok = ok and good
                t = time.perf_counter()
                reference([path])
                serial.append(time.perf_counter() - t)
            for name, times, good in (("rainstorm, 2 workers", runs, ok),
                                      ("serial Counter", serial, True)):
                st = spread("seconds", times, 4)
                rows.append({"contender": name, "bytes": real, **st,
                             "mb_per_s": round(real / 1e6 / st["seconds_median"], 3),
                             "correct": good})
    return finish("file_sizes", rows, a.out, lambda p: plot(rows, p))


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
    for name in ("rainstorm, 2 workers", "serial Counter"):
        pts = [r for r in rows if r["contender"] == name]
        xs = [r["bytes"] for r in pts]
        ax.errorbar(xs, [r["seconds_median"] for r in pts], fmt="o-", label=name, capsize=3,
                    yerr=[[r["seconds_median"] - r["seconds_min"] for r in pts],
                          [r["seconds_max"] - r["seconds_median"] for r in pts]])
        bx.plot(xs, [r["mb_per_s"] for r in pts], "o-", label=name)
    for x in (ax, bx):
        x.set_xscale("log")
        x.set_xlabel("file size, bytes (one file)")
        x.legend(fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("seconds (median, min-max)")
    bx.set_ylabel("MB/s")
    ax.set_title("job time (server start-up apart)")
    bx.set_title("throughput")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
