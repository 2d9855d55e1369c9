"""The PySpark side of bench_pipelines.py (run with a Python that has pyspark).

    python spark_jobs.py app2 SIGNS.csv POST OUT.json
    python spark_jobs.py wordcount DIR OUT.json
    python spark_jobs.py mr-words|mr-urls INPUT OUTDIR OUT.json [PARTS]
    python spark_jobs.py join ORDERS.csv CUSTOMERS.csv OUT.json

Writes {"seconds": job time without session start-up, "startup_s": ..., "result": {...}}.
The mr-* jobs (keys_grow.py) write Hadoop-style part files into OUTDIR instead
(reduceByKey into PARTS partitions, default 2, lines ``key<TAB>count`` sorted within each
part, as a Hadoop reducer's output), and "result" is null.
"""

from __future__ import annotations

import json
import os
import sys
import time
from operator import add


def url_pair(line: str) -> list[tuple[str, int]]:
    """The request path of an access-log line, as examples/mr/urls.py:count_map."""
    try:
        return [(line.split('"', 2)[1].split()[1], 1)]
    except IndexError:
        return []


def main() -> None:
    from pyspark.sql import SparkSession

    t0 = time.perf_counter()
    cores = os.environ.get("SPARK_CORES", "2")  # local[N]: scaling.py varies it
    spark = (SparkSession.builder.master(f"local[{cores}]").appName("rainstorm-bench")
             .config("spark.ui.enabled", "false").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    startup = time.perf_counter() - t0
    job = sys.argv[1]
    t1 = time.perf_counter()
    if job == "app2":
        # the same per-line strict parse as rainstorm's parse_csv (Spark's own CSV
        # reader treats the malformed rows differently, so its answer would differ)
        path, post, out = sys.argv[2:5]

        def category(line: str) -> list[str]:
            import csv

            try:
                f = next(csv.reader([line], strict=True))
            except csv.Error:
                return []
            return [f[5]] if len(f) == 8 and f[4] == post and f[0] != "X" else []

        result = dict(spark.sparkContext.textFile(path).flatMap(category).countByValue())
    elif job == "join":
        # DataFrame API (join_tables.py): orders JOIN customers ON customer_id = id,
        # the sum of amount per country; columns read as strings, as sqlite3 and
        # rainstorm see them, amount cast to a long
        from pyspark.sql import functions as f

        orders_path, customers_path, out = sys.argv[2:5]
        orders = spark.read.csv(orders_path, header=True)
        customers = spark.read.csv(customers_path, header=True)
        rows = (orders.join(customers, orders.customer_id == customers.id)
                .groupBy("country").agg(f.sum(orders.amount.cast("long")).alias("s"))
                .collect())
        result = {r["country"]: int(r["s"]) for r in rows}
    elif job in ("mr-words", "mr-urls"):
        path, outdir, out = sys.argv[2:5]
        parts = int(sys.argv[5]) if len(sys.argv) > 5 else 2
        lines = spark.sparkContext.textFile(path)
        if job == "mr-words":
            pairs = lines.flatMap(lambda line: [(w, 1) for w in line.split()])
        else:
            pairs = lines.flatMap(url_pair)
        (pairs.reduceByKey(add, parts)
         .mapPartitions(lambda kvs: (f"{k}\t{v}" for k, v in sorted(kvs)))
         .saveAsTextFile(outdir))
        result = None
    else:
        path, out = sys.argv[2:4]
        counts = (spark.sparkContext.textFile(path).flatMap(str.split)
                  .map(lambda w: (w, 1)).reduceByKey(add).collect())
        result = dict(counts)
    seconds = time.perf_counter() - t1
    spark.stop()
    with open(out, "w", encoding="utf-8") as fh:
        json.dump({"seconds": seconds, "startup_s": startup, "result": result}, fh)


if __name__ == "__main__":
    main()
