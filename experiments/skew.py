"""Skew: many equal files plus one 10x file (word-count lab 2: "many 100 MB
files plus one 1 GB file"), scaled to fit: ``--files`` files of ``--mb``
each plus one of 10x ``--mb`` (default 12 x 4 MB + 40 MB = 88 MB; the seed's
12 x 100 MB + 1 GB would take ~20 minutes per run on this 2-core machine).
A control with the same bytes in equal files shows what the skew costs.

Contenders, one after the other, ``--repeat`` times, each checked against
``collections.Counter``:
* rainstorm, splits (default: a file is cut into 1 MB entries that any
  worker takes, so the big file is shared);
* rainstorm, no splits (16 MB entries, the engine's cap: the big file is
  cut into few large pieces, so one worker gets a long tail), with stealing
  (``claim_idle_ms`` 300) and without (10 min);
* ``multiprocessing.Pool(2)`` with one task per file (the big file last,
  as a directory listing may order it) and with 1 MB blocks.

    python experiments/skew.py [--quick] [--files 12] [--mb 4] [--repeat 3]

Writes experiments/results/skew.{csv,png}.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from multiprocessing import Pool
from pathlib import Path
from typing import Any

from bench_wordcount import _blocks, _count_blocks
from common import DATA, finish, parser, pyplot, reference, spread, text_file, timed_run, wordcount

from rainstorm.local.run import LocalRun

RAINSTORM = [("rainstorm, 1 MB splits", {}),
             ("rainstorm, 16 MB entries, stealing", {"batch_bytes": 16 << 20,
                                                     "claim_idle_ms": 300}),
             ("rainstorm, 16 MB entries, no stealing", {"batch_bytes": 16 << 20,
                                                        "claim_idle_ms": 600_000})]


def _count_file(path: str) -> Counter[str]:
    with open(path, "rb") as fh:
        return Counter(fh.read().decode("utf-8", "replace").split())


def pool_per_file(files: list[Path]) -> Counter[str]:
    total: Counter[str] = Counter()
    with Pool(2) as p:
        for c in p.imap_unordered(_count_file, [str(f) for f in files], chunksize=1):
            total.update(c)
    return total


def pool_blocks(files: list[Path]) -> Counter[str]:
    tasks = _blocks(files)
    total: Counter[str] = Counter()
    with Pool(2) as p:
        for c in p.imap_unordered(_count_blocks, [tasks[i::2] for i in range(2)]):
            total.update(c)
    return total


def inputs(n: int, mb: float) -> dict[str, list[Path]]:
    d = DATA / f"skew-{n}x{mb:g}mb"
    size = int(mb * 1e6)
    skewed = [text_file(d / f"even{i:03d}.txt", size, seed=100 + i) for i in range(n)]
    skewed.append(text_file(d / "zbig.txt", 10 * size, seed=99))
    per = (n + 10) * size // n
    even = [text_file(d / f"control{i:03d}.txt", per, seed=200 + i) for i in range(n)]
    return {"skewed": skewed, "equal files": even}


def main() -> int:
    ap = parser(__doc__, 4.0)
    ap.add_argument("--files", type=int, default=12)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    n, mb, repeat = (6, 0.25, 1) if a.quick else (a.files, a.mb, a.repeat)
    rows: list[dict[str, Any]] = []
    for shape, files in inputs(n, mb).items():
        ref = reference(files)
        total_mb = sum(f.stat().st_size for f in files) / 1e6
        times: dict[str, list[float]] = {}
        right: dict[str, bool] = {}
        for _ in range(repeat):
            for name, settings in RAINSTORM:
                with LocalRun() as env:
                    _r, secs, ok, err = timed_run(env, wordcount(**settings), files, ref)
                if err:
                    print(f"{name}: {err}", file=sys.stderr)
                times.setdefault(name, []).append(secs)
                right[name] = right.get(name, True) and ok
            for name, fn in (("Pool(2), a task per file", pool_per_file),
                             ("Pool(2), 1 MB blocks", pool_blocks)):
                t = time.perf_counter()
                got = fn(files)
                times.setdefault(name, []).append(time.perf_counter() - t)
                right[name] = right.get(name, True) and got == ref
        for name, runs in times.items():
            st = spread("seconds", runs)
            rows.append({"input": shape, "files": len(files), "mb": round(total_mb, 1),
                         "contender": name, "repeats": len(runs), **st,
                         "mb_per_s": round(total_mb / st["seconds_median"], 2),
                         "correct": right[name]})
    return finish("skew", rows, a.out, lambda p: plot(rows, p))


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    names = list(dict.fromkeys(r["contender"] for r in rows))
    shapes = list(dict.fromkeys(r["input"] for r in rows))
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(shapes)
    for j, shape in enumerate(shapes):
        pts = [next(r for r in rows if r["contender"] == n and r["input"] == shape)
               for n in names]
        xs = [i + j * width for i in range(len(names))]
        ax.bar(xs, [r["seconds_median"] for r in pts], width, label=f"{shape} "
               f"({pts[0]['files']} files, {pts[0]['mb']} MB)",
               yerr=[[r["seconds_median"] - r["seconds_min"] for r in pts],
                     [r["seconds_max"] - r["seconds_median"] for r in pts]], capsize=3)
    ax.set_xticks([i + width / 2 for i in range(len(names))], names, rotation=15, ha="right",
                  fontsize=8)
    ax.set_ylabel("seconds (median, min-max)")
    ax.set_title("word count, many equal files + one 10x file, 2 workers")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
