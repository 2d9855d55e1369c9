"""How word count scales with the number of workers, on the path users type.

For each worker count n, on the same corpus:

* ``rainstorm``: ``rainstorm run examples/wordcount.yaml --input 'DIR/*.txt'
  --workers n --json > out.json`` as a subprocess. The time includes the
  interpreter, the embedded server's start and stop, the job and the JSON
  output (cli_path.py's command with n workers). ``job_s`` is the job's own
  time from the CLI's summary line; ``output_s`` (the result's JSON output)
  and ``rest_s`` (interpreter, imports, server start and stop) come from the
  line ``rainstorm -v run`` logs at its end. The CPU seconds of its coordinator, its
  workers together and its server come from /proc (proc_watch.Watch, every
  0.1 s); ``server_busy`` is the server's CPU over ``job_s``: the one
  thread every commit and fold goes through, so near 1 it caps the rate.
* ``rainstorm-zstd`` (with ``--compress-state``): the same command with
  ``--set settings.compress_state=true`` (deltas and bases compressed: less
  for the server's thread to move, more for the workers to do).
* ``pool``: ``multiprocessing.Pool(n)``. Each process counts an interleaved
  share of ~1 MiB blocks into one Counter; the parent merges the n Counters
  (cli_path.py's pool-share, the faster Pool variant there).
* ``pyspark``: PySpark ``local[n]`` (textFile, flatMap(str.split),
  reduceByKey, collect; experiments/spark_jobs.py). Its time leaves out the
  session's start, which goes in ``startup_s``. It runs only when a Python
  with pyspark and a java are found (keys_grow.find_spark) and ``--no-spark``
  is not given; otherwise one line says why, and the rows are left out.

There are two corpora:

* real English text (experiments/realtext.py), repeated beyond its ~54 MB of
  distinct text;
* generated text (rainstorm.samples, 16 files, written by every core side by
  side).

The reference is a Pool over every core. With ``--quick`` it is also checked
against a serial Counter. Every contender's result must equal it (exit 1
otherwise).

    python experiments/scaling.py [--quick] [--mb 1000] [--workers 1,2,4,8,14]
        [--corpora real,generated] [--budget-s 0] [--spark-python PY] [--name scaling]
        [--compress-state] [--no-spark]
    python experiments/scaling.py --plot-only experiments/results/scaling.csv

``--budget-s``: start no new measurement after that many seconds (0: no
limit), so a run on a lent machine with a time limit still returns what it
measured. Each row goes into the CSV as soon as it is measured.

Writes experiments/results/scaling.{csv,png} (NAME.csv and .png with --name).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_path import pool_share, rainstorm_cmd, run_cli  # noqa: E402
from common import ROOT, parser, pyplot, reference  # noqa: E402
from keys_grow import find_spark  # noqa: E402
from realtext import Unavailable, describe, real_corpus  # noqa: E402

from rainstorm.samples import write_corpus  # noqa: E402

FIELDS = ["corpus", "mb", "workers", "contender", "seconds", "mb_s", "job_s", "output_s",
          "rest_s", "startup_s",
          "coordinator_cpu_s", "workers_cpu_s", "server_cpu_s", "server_busy",
          "distinct_words", "correct", "cores", "note"]
RS, RS_ZSTD, POOL, SPARK = "rainstorm", "rainstorm-zstd", "pool", "pyspark"
ZSTD = ("--set", "settings.compress_state=true")
SPARK_TIMEOUT_S = 1800


def generated(mb: float) -> list[Path]:
    files = 16
    return write_corpus(ROOT / "data" / f"scaling-gen-{mb:g}mb", mb, files=files,
                        jobs=os.cpu_count() or 1)


def spark_count(python: str, files: list[Path], cores: int, tmp: Path
                ) -> tuple[float, float, Counter[str]]:
    """(job seconds, session start seconds, counts) of PySpark local[cores]."""
    out = tmp / "spark.json"
    res = subprocess.run([python, str(ROOT / "experiments" / "spark_jobs.py"), "wordcount",
                          str(files[0].parent / "*.txt"), str(out)],
                         capture_output=True, text=True, timeout=SPARK_TIMEOUT_S,
                         env=dict(os.environ, SPARK_CORES=str(cores)))
    if res.returncode:
        raise RuntimeError(f"spark failed: {res.stderr.strip()[-300:]}")
    data = json.loads(out.read_text())
    out.unlink()
    return float(data["seconds"]), float(data["startup_s"]), Counter(data["result"])


class Rows:
    """The CSV, written row by row (a run cut short keeps what it measured)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.rows: list[dict[str, Any]] = []
        with path.open("w", newline="") as fh:
            csv.DictWriter(fh, fieldnames=FIELDS).writeheader()

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        with self.path.open("a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=FIELDS).writerow(row)
        print(f"{row['corpus']:9} n={row['workers']:<2} {row['contender']:9} "
              f"{row['seconds']:8.2f} s {row['mb_s']:7.1f} MB/s correct={row['correct']}"
              + (f" ({row['note']})" if row["note"] else ""), flush=True)


def measure(name: str, files: list[Path], workers: list[int], truth: Counter[str],
            spark_py: str | None, rows: Rows, deadline: float, tmp: Path,
            zstd: bool = False) -> None:
    mb = sum(f.stat().st_size for f in files) / 1e6
    base = {"corpus": name, "mb": round(mb, 1), "distinct_words": len(truth),
            "cores": os.cpu_count(), "note": "",
            **dict.fromkeys(["job_s", "output_s", "rest_s", "startup_s", "coordinator_cpu_s",
                             "workers_cpu_s", "server_cpu_s", "server_busy"], "")}
    for i, n in enumerate(workers):
        if time.monotonic() > deadline:
            print(f"{name}: budget spent, {n} workers and beyond not measured", flush=True)
            return
        order = [RS, POOL] if i % 2 == 0 else [POOL, RS]
        if zstd:
            order.insert(1, RS_ZSTD)
        if spark_py is not None:
            order.append(SPARK)
        for who in order:
            row = dict(base, workers=n, contender=who)
            if who in (RS, RS_ZSTD):
                cpu: dict[str, float] = {}
                phases: dict[str, float] = {}
                wall, job_s, res = run_cli(files, True, tmp, workers=n, cpu=cpu,
                                           extra=ZSTD if who == RS_ZSTD else (), phases=phases)
                server = cpu.get("server", 0.0)
                row.update(seconds=wall, job_s=round(job_s, 3),
                           output_s=phases.get("output_s", ""), rest_s=phases.get("rest_s", ""),
                           coordinator_cpu_s=cpu.get("coordinator", ""),
                           workers_cpu_s=cpu.get("worker", ""), server_cpu_s=server,
                           server_busy=round(server / job_s, 3) if job_s > 0 else "")
            elif who == POOL:
                t = time.perf_counter()
                res, started = pool_share(files, n)
                row.update(seconds=time.perf_counter() - t, startup_s=round(started, 3))
            else:
                assert spark_py is not None
                job_s, startup, res = spark_count(spark_py, files, n, tmp)
                row.update(seconds=job_s, startup_s=round(startup, 3))
            row.update(seconds=round(row["seconds"], 3), mb_s=round(mb / row["seconds"], 1),
                       correct=res == truth)
            rows.add(row)


def summarize(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for name in dict.fromkeys(r["corpus"] for r in rows):
        mine = [r for r in rows if r["corpus"] == name]
        rate = {(int(r["workers"]), r["contender"]): float(r["mb_s"]) for r in mine}
        busy = {(int(r["workers"]), r["contender"]): 100 * float(r["server_busy"])
                for r in mine if r.get("server_busy") not in (None, "")}
        job = {int(r["workers"]): float(r["mb"]) / float(r["job_s"]) for r in mine
               if r["contender"] == RS and r["job_s"] not in ("", "nan")}
        one = rate.get((1, RS))
        lines.append(f"{name} ({mine[0]['mb']} MB, {int(mine[0]['distinct_words']):,} "
                     f"distinct words, {mine[0]['cores']} cores):")
        for n in sorted({int(r["workers"]) for r in mine}):
            rs, pool, spark = rate.get((n, RS)), rate.get((n, POOL)), rate.get((n, SPARK))
            parts = [f"  n={n:<2} rainstorm {rs or float('nan'):6.1f} MB/s"]
            if rs and one:
                parts.append(f"({rs / one:.2f}x its 1-worker rate)")
            if n in job:
                parts.append(f"job only {job[n]:6.1f} MB/s"
                             + (f" ({job[n] / job[1]:.2f}x)" if 1 in job else ""))
            if (n, RS) in busy:
                parts.append(f"server busy {busy[n, RS]:.0f} % of the job")
            if pool:
                parts.append(f"pool {pool:6.1f} MB/s")
            if rs and pool:
                parts.append(f"time ratio rainstorm/pool {pool / rs:.2f}")
            zstd = rate.get((n, RS_ZSTD))
            if zstd:
                parts.append(f"rainstorm-zstd {zstd:6.1f} MB/s"
                             + (f" (server busy {busy[n, RS_ZSTD]:.0f} %)"
                                if (n, RS_ZSTD) in busy else ""))
            if spark:
                parts.append(f"pyspark {spark:6.1f} MB/s (without its start)")
            lines.append(" ".join(parts))
    return lines


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    style = {RS: ("o", "-"), RS_ZSTD: ("D", "-."), POOL: ("s", "--"), SPARK: ("^", ":")}
    for i, name in enumerate(dict.fromkeys(r["corpus"] for r in rows)):
        mine = [r for r in rows if r["corpus"] == name]
        for who, (marker, ls) in style.items():
            pts = sorted((int(r["workers"]), float(r["mb_s"])) for r in mine
                         if r["contender"] == who)
            if pts:
                ax[0].plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, ls=ls,
                           color=f"C{i}", label=f"{who}, {name}")
        job = sorted((int(r["workers"]), float(r["mb"]) / float(r["job_s"])) for r in mine
                     if r["contender"] == RS and r["job_s"] not in ("", "nan"))
        if job:
            ax[0].plot([p[0] for p in job], [p[1] for p in job], marker=".", ls=":",
                       color=f"C{i}", label=f"rainstorm job only (no start, no output), {name}")
        rs = {int(r["workers"]): float(r["seconds"]) for r in mine if r["contender"] == RS}
        pool = {int(r["workers"]): float(r["seconds"]) for r in mine if r["contender"] == POOL}
        both = sorted(set(rs) & set(pool))
        ax[1].plot(both, [rs[n] / pool[n] for n in both], marker="o", color=f"C{i}", label=name)
    ax[0].set_xlabel("workers / processes")
    ax[0].set_ylabel("MB/s (wall time, whole command)")
    ax[0].set_title(f"word count, {rows[0]['mb']} MB, {rows[0]['cores']} cores", fontsize=9)
    ax[0].legend(fontsize=6)
    ax[1].axhline(1.0, color="k", lw=0.8)
    ax[1].set_xlabel("workers / processes")
    ax[1].set_ylabel("rainstorm time / Pool time")
    ax[1].set_title("rainstorm (--json > file) against Pool(n)", fontsize=9)
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> int:
    ap = parser(__doc__, mb=1000)
    ap.add_argument("--workers", default="1,2,4,8,14")
    ap.add_argument("--corpora", default="real,generated")
    ap.add_argument("--budget-s", type=float, default=0.0)
    ap.add_argument("--spark-python", default=None)
    ap.add_argument("--no-spark", action="store_true", help="leave PySpark out")
    ap.add_argument("--plot-only", type=Path, default=None)
    ap.add_argument("--name", default="scaling", help="results/NAME.csv and .png")
    ap.add_argument("--compress-state", action="store_true",
                    help="also rainstorm with settings.compress_state (rainstorm-zstd rows)")
    a = ap.parse_args()
    if a.plot_only:
        with a.plot_only.open() as fh:
            plot(list(csv.DictReader(fh)), a.plot_only.with_suffix(".png"))
        return 0
    t0 = time.monotonic()
    deadline = t0 + a.budget_s if a.budget_s > 0 else float("inf")
    mb = 4.0 if a.quick else a.mb
    workers = [1, 2] if a.quick else [int(x) for x in a.workers.split(",")]
    spark_py, why = (None, "--quick") if a.quick else (None, "--no-spark") if a.no_spark \
        else find_spark(a.spark_python)
    if spark_py is None:
        print(f"pyspark left out: {why}")
    print(subprocess.run([*rainstorm_cmd(), "--version"], capture_output=True, text=True,
                         timeout=60).stdout.strip(), f"| {os.cpu_count()} cores")
    rows = Rows(a.out / f"{a.name}.csv")
    with tempfile.TemporaryDirectory(prefix="rs-scaling-") as tmp:
        for name in a.corpora.split(","):
            try:
                files = real_corpus(mb) if name == "real" else generated(mb)
            except Unavailable as exc:  # off Debian: say so, measure the rest
                print(f"real text unavailable ({exc})")
                continue
            if name == "real":
                print(describe(files))
            t = time.perf_counter()
            truth, _ = pool_share(files, os.cpu_count() or 1)
            print(f"{name}: reference (Pool over every core) in "
                  f"{time.perf_counter() - t:.1f} s, {len(truth):,} distinct words", flush=True)
            if a.quick and truth != reference(files):
                print("the Pool reference differs from a serial Counter", file=sys.stderr)
                return 1
            measure(name, files, workers, truth, spark_py, rows, deadline, Path(tmp),
                    a.compress_state)
    print(f"wrote {rows.path} in {time.monotonic() - t0:.0f} s")
    if rows.rows:
        plot(rows.rows, rows.path.with_suffix(".png"))
    for line in summarize(rows.rows):
        print(line)
    return 0 if rows.rows and all(r["correct"] for r in rows.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
