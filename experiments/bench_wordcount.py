"""Word count: rainstorm (1 and 2 workers) vs serial Counter vs multiprocessing.Pool(2).

All contenders run in one invocation on the same generated corpus, and their
results must be equal (the script exits 1 otherwise).  Writes
experiments/results/bench_wordcount.csv and .png.

    python experiments/bench_wordcount.py --mb 100 [--repeat 1]

rainstorm's time is measured from submit to the full result in the caller's
hands (workers start inside that window); the embedded server's start-up is
reported separately as ``server_start_s``.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from collections import Counter
from multiprocessing import Pool
from pathlib import Path

from rainstorm.local.run import run_job
from rainstorm.samples import write_corpus
from rainstorm.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "experiments" / "results"
BLOCK = 1 << 20


def serial(files: list[Path]) -> Counter[str]:
    c: Counter[str] = Counter()
    for f in files:
        c.update(f.read_bytes().decode("utf-8", "replace").split())
    return c


def _blocks(files: list[Path]) -> list[tuple[str, int, int]]:
    """(path, offset, length) blocks of about 1 MiB cut at newlines."""
    out = []
    for f in files:
        data = f.read_bytes()
        start = 0
        while start < len(data):
            end = min(start + BLOCK, len(data))
            if end < len(data):
                nl = data.find(b"\n", end)
                end = len(data) if nl < 0 else nl + 1
            out.append((str(f), start, end - start))
            start = end
    return out


def _count_blocks(tasks: list[tuple[str, int, int]]) -> Counter[str]:
    c: Counter[str] = Counter()
    for path, off, n in tasks:
        with open(path, "rb") as fh:
            fh.seek(off)
            c.update(fh.read(n).decode("utf-8", "replace").split())
    return c


def pool(files: list[Path], procs: int = 2) -> Counter[str]:
    """The strongest Pool variant we found: each process counts an interleaved
    share of 1 MiB blocks into one Counter, so the parent merges only `procs`
    Counters (returning one Counter per block is ~2x slower on this corpus)."""
    blocks = _blocks(files)
    with Pool(procs) as p:
        parts = p.map(_count_blocks, [blocks[i::procs] for i in range(procs)])
    total = parts[0]
    for c in parts[1:]:
        total.update(c)
    return total


def timed(fn, *args, **kw):  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=100.0)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    corpus = ROOT / "data" / f"bench-{a.mb:g}mb"
    files = write_corpus(corpus, a.mb, files=8)
    mb = sum(f.stat().st_size for f in files) / 1e6
    spec = load_spec(ROOT / "examples" / "wordcount.yaml")
    rows: list[dict[str, object]] = []
    reference: Counter[str] | None = None
    ok = True
    for rep in range(a.repeat):
        runs = []
        ref, t = timed(serial, files)
        reference = reference or ref
        runs.append(("serial Counter", t, ref))
        res, t = timed(pool, files, 2)
        runs.append(("multiprocessing.Pool(2)", t, res))
        for n in (1, 2):
            report = run_job(spec, inputs=[str(corpus)], workers=n)
            runs.append((f"rainstorm {n} worker{'s' if n > 1 else ''}", report.seconds,
                         Counter(report.result)))
        base = {name: t for name, t, _ in runs}
        for name, t, res in runs:
            agree = res == reference
            ok &= agree
            rows.append({"repeat": rep, "contender": name, "seconds": round(t, 3),
                         "mb_per_s": round(mb / t, 2),
                         "vs_serial": round(t / base["serial Counter"], 3),
                         "vs_pool2": round(t / base["multiprocessing.Pool(2)"], 3),
                         "agrees": agree})
    a.out.mkdir(parents=True, exist_ok=True)
    with (a.out / "bench_wordcount.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"corpus: {mb:.1f} MB, {len(files)} files, {len(reference or {})} distinct words, "
          f"{os.cpu_count()} cores")
    print(f"{'contender':28} {'s':>7} {'MB/s':>7} {'/serial':>8} {'/Pool(2)':>9} agrees")
    for r in rows:
        print(f"{r['contender']:28} {r['seconds']:>7} {r['mb_per_s']:>7} {r['vs_serial']:>8} "
              f"{r['vs_pool2']:>9} {r['agrees']}")
    ratios = sorted(float(str(r["vs_pool2"])) for r in rows
                    if r["contender"] == "rainstorm 2 workers")
    print(f"rainstorm 2 workers / Pool(2), per repeat: {ratios}; median "
          f"{statistics.median(ratios):.3f} (target <= 1.25)")
    plot(rows, a.out / "bench_wordcount.png", mb)
    if not ok:
        print("RESULTS DISAGREE", file=sys.stderr)
        return 1
    return 0


def plot(rows: list[dict[str, object]], path: Path, mb: float) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot", file=sys.stderr)
        return
    names = list(dict.fromkeys(str(r["contender"]) for r in rows))
    each = {n: [float(str(r["mb_per_s"])) for r in rows if r["contender"] == n] for n in names}
    speeds = [statistics.median(each[n]) for n in names]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.barh(names, speeds, color=["#888", "#888", "#3a7", "#3a7"][: len(names)])
    for y, n in enumerate(names):
        ax.plot(each[n], [y] * len(each[n]), "k.", ms=4)
    ax.set_xlabel("MB/s, median bar, dots = repeats (higher is better)")
    ax.set_title(f"word count, {mb:.0f} MB, {os.cpu_count()} cores")
    for y, v in enumerate(speeds):
        ax.text(v, y + 0.25, f" {v:.1f}", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
