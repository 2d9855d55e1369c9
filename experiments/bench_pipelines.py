"""CSV App 2 and MapReduce word count on ~100 MB: rainstorm (2 workers) side
by side with an equivalent plain-Python script and, when a Python with
pyspark is given, PySpark local[2].  Every contender's result must be equal.

    python experiments/bench_pipelines.py [--mb 100] [--spark-python /path/to/python]

Writes experiments/results/bench_pipelines.{csv,png}.  PySpark is an optional
extra, never a dependency: without --spark-python its rows are skipped.
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

from common import DATA, finish, parser, pyplot

from rainstorm.apps.mapreduce import run_mapreduce
from rainstorm.local.run import run_job
from rainstorm.samples import write_corpus
from rainstorm.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "examples")]  # tests.ops (MR callables), gen_signs
from gen_signs import COLUMNS, generate  # noqa: E402

POST = "Wood"


def plain_app2(path: Path) -> Counter[str]:
    c: Counter[str] = Counter()
    with path.open(encoding="utf-8") as fh:
        next(fh)
        for line in fh:
            try:
                fields = next(csv.reader([line], strict=True))
            except csv.Error:
                continue
            if len(fields) == len(COLUMNS) and fields[4] == POST:
                c[fields[5]] += 1
    return c


def plain_wordcount(files: list[Path]) -> Counter[str]:
    c: Counter[str] = Counter()
    for f in files:
        c.update(f.read_bytes().decode("utf-8", "replace").split())
    return c


def spark(python: str, *args: str) -> tuple[float, dict[str, int]]:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "out.json"
        subprocess.run([python, str(ROOT / "experiments" / "spark_jobs.py"), *args, str(out)],
                       check=True, capture_output=True, timeout=1800)
        data = json.loads(out.read_text())
    return float(data["seconds"]), data["result"]


def timed(fn, *a, **kw):  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    out = fn(*a, **kw)
    return time.perf_counter() - t, out


def main() -> int:
    ap = parser(__doc__, 100.0)
    ap.add_argument("--spark-python", default=os.environ.get("SPARK_PYTHON"))
    a = ap.parse_args()
    mb = 4.0 if a.quick else a.mb
    signs = DATA / f"signs-{mb:g}mb.csv"
    if not signs.exists():
        generate(signs, int(mb * 1e6 / 92))
    corpus_dir = DATA / f"wc-{mb:g}mb"
    files = write_corpus(corpus_dir, mb, files=8)
    rows = []

    sizes = {"CSV App 2": signs.stat().st_size / 1e6,
             "MapReduce word count": sum(f.stat().st_size for f in files) / 1e6}

    def add(app: str, name: str, secs: float, result: object, ref: object) -> None:
        rows.append({"app": app, "contender": name, "input_mb": round(sizes[app], 1),
                     "seconds": round(secs, 3), "mb_per_s": round(sizes[app] / secs, 2),
                     "correct": result == ref})

    # App 2
    t, ref2 = timed(plain_app2, signs)
    add("CSV App 2", "plain Python", t, ref2, ref2)
    spec = load_spec(ROOT / "examples" / "signs_app2.yaml", [f"pipeline.1.args.value={POST}"])
    rep = run_job(spec, inputs=[str(signs)], workers=2)
    add("CSV App 2", "rainstorm, 2 workers", rep.seconds, Counter(rep.result), ref2)
    if a.spark_python:
        t, res = spark(a.spark_python, "app2", str(signs), POST)
        add("CSV App 2", "PySpark local[2]", t, Counter(res), ref2)
    # MapReduce word count
    t, refw = timed(plain_wordcount, files)
    add("MapReduce word count", "plain Python", t, refw, refw)
    for combiner in (None, "tests.ops:wc_combine"):
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "wc"
            mr = run_mapreduce("tests.ops:wc_map", "tests.ops:wc_reduce", [str(corpus_dir)],
                               out, partitions=2, combiner=combiner, allow_modules=("tests",))
            got: Counter[str] = Counter()
            for part in out.iterdir():
                for line in part.read_text(encoding="utf-8").splitlines():
                    w, n = line.rsplit("\t", 1)
                    got[w] = int(n)
        name = "rainstorm mapreduce" + (" + combiner" if combiner else "") + ", 2 workers"
        add("MapReduce word count", name, mr.map_seconds + mr.reduce_seconds, got, refw)
    if a.spark_python:
        t, res = spark(a.spark_python, "wordcount", str(corpus_dir))
        add("MapReduce word count", "PySpark local[2] reduceByKey", t, Counter(res), refw)
    return finish("bench_pipelines", rows, a.out, lambda path: plot(rows, path, mb))


def plot(rows: list[dict[str, object]], path: Path, mb: float) -> None:
    plt = pyplot()
    apps = list(dict.fromkeys(str(r["app"]) for r in rows))
    fig, axes = plt.subplots(1, len(apps), figsize=(11, 3))
    for ax, app in zip(axes, apps, strict=True):
        pts = [r for r in rows if r["app"] == app]
        names = [str(r["contender"]) for r in pts]
        secs = [float(str(r["seconds"])) for r in pts]
        ax.barh(names, secs, color=["#888" if "rainstorm" not in n else "#3a7" for n in names])
        for y, v in enumerate(secs):
            ax.text(v, y, f" {v:.1f} s", va="center", fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, max(secs) * 1.3)
        ax.set_title(f"{app}, {mb:g} MB")
        ax.set_xlabel("seconds (lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
