"""The CSV apps of rainstorm_vs_spark.py for every peer: serial Python,
multiprocessing.Pool(2), Dask (bag, 2 processes) and PySpark local[2] (RDD
and DataFrame).  Standard library only at import, so any Python runs it:

    python peer_apps.py ENGINE APP PATH REPEAT OUT.json
      ENGINE: serial | pool | dask | spark-rdd | spark-df
      APP: signs1 | signs2 | lyrics1 | lyrics2 | wordcount (PATH: a directory of .txt)

Every engine parses each line with the same strict ``csv.reader`` as
rainstorm's ``parse_csv`` (a malformed line or a wrong field count is
skipped), except spark-df, which uses Spark's own CSV reader (only for the
lyrics apps, whose data have no malformed rows).  Writes
{"startup_s": session start / imports, "seconds": [per repeat], "result": ...}:
App 1 results are [row, ...] (projected fields), App 2 results {key: count}.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from collections import Counter
from typing import Any

SIGNS = ["X", "Y", "OBJECTID", "Sign_Type", "Sign_Post", "Category", "Install_Year", "Notes"]
LYRICS = ["id", "title", "artist", "genre", "year", "views", "lyrics"]
# app: (columns, filter column, value, projected columns (App 1) or key column (App 2))
APPS: dict[str, tuple[list[str], str, str, list[str]]] = {
    "signs1": (SIGNS, "Sign_Post", "Punched Telespar", ["OBJECTID", "Sign_Type"]),
    "signs2": (SIGNS, "Sign_Post", "Wood", ["Category"]),
    "lyrics1": (LYRICS, "genre", "rock", ["title", "artist", "views"]),
    "lyrics2": (LYRICS, "genre", "pop", ["year"]),
}


def parse(line: str, n: int) -> list[str] | None:
    try:
        f = next(csv.reader([line], strict=True))
    except (csv.Error, StopIteration):
        return None
    return f if len(f) == n else None


def make_fn(app: str) -> Any:
    """line -> [] or [output]: the app's per-line work (module-level for pickling)."""
    if app == "wordcount":
        return str.split
    cols, fcol, value, out = APPS[app]
    n, fi, oi = len(cols), cols.index(fcol), [cols.index(c) for c in out]

    def fn(line: str) -> list[Any]:
        f = parse(line, n)
        if f is None or f[fi] != value:
            return []
        return [[f[i] for i in oi]] if app.endswith("1") else [f[oi[0]]]
    return fn


def run_lines(app: str, lines: Any) -> Any:
    fn = make_fn(app)
    if app.endswith("1"):
        return [r for line in lines for r in fn(line)]
    c: Counter[str] = Counter()
    for line in lines:
        for k in fn(line):
            c[k] += 1
    return c


def files_of(path: str) -> list[str]:
    if os.path.isdir(path):
        return sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".txt"))
    return [path]


def serial(app: str, path: str) -> Any:
    parts = []
    for f in files_of(path):
        with open(f, encoding="utf-8", errors="replace", newline="") as fh:
            parts.append(run_lines(app, (line.rstrip("\r\n") for line in fh)))
    return merge(app, parts)


def merge(app: str, parts: list[Any]) -> Any:
    if app.endswith("1"):
        return [r for part in parts for r in part]
    total: Counter[str] = Counter()
    for part in parts:
        total.update(part)
    return total


def _range(task: tuple[str, str, int, int]) -> Any:
    app, path, start, end = task
    with open(path, "rb") as fh:
        fh.seek(start)
        data = fh.read(end - start).decode("utf-8", "replace")
    return run_lines(app, data.splitlines())


def pool(app: str, path: str, procs: int = 2) -> Any:
    """Each file cut into ``procs`` ranges at newlines, one task per range."""
    from multiprocessing import Pool

    tasks = []
    for f in files_of(path):
        size = os.path.getsize(f)
        cuts = [0]
        with open(f, "rb") as fh:
            for i in range(1, procs):
                fh.seek(size * i // procs)
                fh.readline()
                cuts.append(max(fh.tell(), cuts[-1]))
        cuts.append(size)
        tasks += [(app, f, cuts[i], cuts[i + 1]) for i in range(procs)]
    with Pool(procs) as p:
        return merge(app, p.map(_range, tasks))


def dask_app(app: str, path: str) -> Any:
    import dask.bag as db

    bag = db.read_text(files_of(path), blocksize=8 << 20, linedelimiter="\n").map(
        lambda line: line.rstrip("\r\n")).map(make_fn(app)).flatten()
    if app.endswith("1"):
        return bag.compute(scheduler="processes", num_workers=2)
    return dict(bag.frequencies().compute(scheduler="processes", num_workers=2))


def main() -> None:
    engine, app, path, repeat, out = sys.argv[1:6]
    t0 = time.perf_counter()
    spark: Any = None
    if engine.startswith("spark"):
        from pyspark.sql import SparkSession

        spark = (SparkSession.builder.master("local[2]").appName("rainstorm-vs-spark")
                 .config("spark.ui.enabled", "false").getOrCreate())
        spark.sparkContext.setLogLevel("ERROR")
    elif engine == "dask":
        import dask.bag  # noqa: F401 -- its import is its start-up
    startup = time.perf_counter() - t0
    secs, result = [], None
    for _ in range(int(repeat)):
        t = time.perf_counter()
        if engine == "serial":
            result = serial(app, path)
        elif engine == "pool":
            result = pool(app, path)
        elif engine == "dask":
            result = dask_app(app, path)
        elif engine == "spark-rdd":
            rdd = spark.sparkContext.textFile(path).flatMap(make_fn(app))
            if app.endswith("1"):
                result = rdd.collect()
            else:  # combined per partition, then merged (as reduceByKey does)
                result = rdd.map(lambda k: (k, 1)).reduceByKey(lambda a, b: a + b).collectAsMap()
        else:  # spark-df: Spark's CSV reader, header, all columns strings
            cols, fcol, value, outc = APPS[app]
            df = spark.read.csv(path, header=True).where(f"`{fcol}` = '{value}'")
            if app.endswith("1"):
                result = [list(r) for r in df.select(*outc).collect()]
            else:
                result = {r[0]: r[1] for r in df.groupBy(outc[0]).count().collect()}
        secs.append(time.perf_counter() - t)
    if spark is not None:
        spark.stop()
    with open(out, "w", encoding="utf-8") as fh:
        json.dump({"startup_s": startup, "seconds": secs, "result": result}, fh)


if __name__ == "__main__":
    main()
