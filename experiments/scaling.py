"""How word count scales with the number of workers (for machines with more
cores than this one: the numbers in experiments/README.md come from a
16-core machine lent for the purpose).

Per worker count n: rainstorm with n local workers vs multiprocessing.Pool(n)
(the strongest Pool variant of bench_wordcount.py), same corpus, results
compared with a serial Counter.  Also the CPU time the embedded Valkey used
(its single thread is the shared resource every commit goes through).

    python experiments/scaling.py [--quick] [--mb 200] [--workers 1,2,4,8,12]
    python experiments/scaling.py --plot-only results/scaling.csv   # the PNG from a CSV

Writes experiments/results/scaling.{csv,png} (the PNG needs matplotlib).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_wordcount import pool, serial  # noqa: E402

from rainstorm.connection import connect  # noqa: E402
from rainstorm.local.run import LocalRun  # noqa: E402
from rainstorm.samples import write_corpus  # noqa: E402
from rainstorm.spec import parse_spec  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def redis_cpu(url: str) -> float:
    r = connect(url)
    info: Any = r.info("cpu")
    r.close()
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _letters_of(path: Path) -> Counter[str]:
    return Counter(w[0] for w in path.read_bytes().decode("utf-8", "replace").split())


def serial_letters(files: list[Path]) -> Counter[str]:
    c: Counter[str] = Counter()
    for f in files:
        c.update(_letters_of(f))
    return c


def pool_letters(files: list[Path], procs: int) -> Counter[str]:
    from multiprocessing import Pool

    with Pool(procs) as p:
        parts = p.map(_letters_of, files)
    return sum(parts, Counter())


WORKLOADS = {
    # ~700k distinct words per 100 MB: merging per-key counts is a large serial part
    "wordcount": ([{"op": "flat_map", "fn": "split_words"}, {"op": "count"}], serial, pool),
    # the same reading and splitting, but a tiny aggregate (first letters)
    "letters": ([{"op": "flat_map", "fn": "split_words"}, {"op": "map", "fn": "first_char"},
                 {"op": "count"}], serial_letters, pool_letters),
}


def run(files: list[Path], corpus: Path, workers: list[int],
        workload: str) -> list[dict[str, Any]]:
    mb = sum(f.stat().st_size for f in files) / 1e6
    pipeline, serial_fn, pool_fn = WORKLOADS[workload]
    ref, t_serial = timed(serial_fn, files)
    spec = parse_spec({"name": workload, "source": {"type": "text"}, "pipeline": pipeline})
    rows = []
    for n in workers:
        res, t_pool = timed(pool_fn, files, n)
        pool_ok = res == ref
        with LocalRun() as env:
            cpu0 = redis_cpu(env.url)
            report = env.run(spec, inputs=[str(corpus)], workers=n)
            cpu = redis_cpu(env.url) - cpu0
        ok = Counter(report.result) == ref and pool_ok
        rows.append({"workload": workload, "workers": n, "mb": round(mb, 1),
                     "rainstorm_s": round(report.seconds, 3),
                     "rainstorm_mb_s": round(mb / report.seconds, 1),
                     "pool_s": round(t_pool, 3), "pool_mb_s": round(mb / t_pool, 1),
                     "ratio_vs_pool": round(report.seconds / t_pool, 3),
                     "serial_s": round(t_serial, 3), "redis_cpu_s": round(cpu, 2),
                     "cores": os.cpu_count(), "correct": ok})
        print(rows[-1], flush=True)
    return rows


def timed(fn: Any, *args: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no matplotlib here: run again with --plot-only on the CSV")
        return
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for i, wl in enumerate(dict.fromkeys(r["workload"] for r in rows)):
        mine = [r for r in rows if r["workload"] == wl]
        n = [int(r["workers"]) for r in mine]
        ax[0].plot(n, [float(r["rainstorm_mb_s"]) for r in mine], marker="o", color=f"C{i}",
                   label=f"rainstorm, {wl}")
        ax[0].plot(n, [float(r["pool_mb_s"]) for r in mine], marker="s", ls="--",
                   color=f"C{i}", label=f"multiprocessing.Pool, {wl}")
        ax[1].plot(n, [float(r["redis_cpu_s"]) / float(r["rainstorm_s"]) for r in mine],
                   marker="o", color=f"C{i}", label=wl)
    ax[0].set_xlabel("workers / processes")
    ax[0].set_ylabel("MB/s")
    ax[0].set_title(f"{rows[0]['mb']} MB of text, {rows[0]['cores']} cores")
    ax[0].legend(fontsize=8)
    ax[1].legend(fontsize=8)
    ax[1].set_xlabel("workers")
    ax[1].set_ylabel("Valkey CPU / wall time")
    ax[1].set_title("the shared Valkey thread's load")
    ax[1].set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--mb", type=float, default=200.0)
    ap.add_argument("--workers", default="1,2,4,8,12")
    ap.add_argument("--workloads", default="wordcount,letters")
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "results")
    ap.add_argument("--plot-only", type=Path, default=None)
    a = ap.parse_args()
    if a.plot_only:
        with a.plot_only.open() as fh:
            plot(list(csv.DictReader(fh)), a.plot_only.with_suffix(".png"))
        return 0
    mb = 4.0 if a.quick else a.mb
    workers = [1, 2] if a.quick else [int(x) for x in a.workers.split(",")]
    corpus = ROOT / "data" / f"scaling-{mb:g}mb"
    files = write_corpus(corpus, mb, files=16)
    rows = [row for wl in a.workloads.split(",") for row in run(files, corpus, workers, wl)]
    a.out.mkdir(parents=True, exist_ok=True)
    with (a.out / "scaling.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {a.out / 'scaling.csv'}")
    plot(rows, a.out / "scaling.png")
    return 0 if all(r["correct"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
