"""The Spark Structured Streaming side of latency_vs_spark.py (run with a
Python that has pyspark; latency_vs_spark.py starts it).

    python spark_stream.py PORT RECORDS WAIT_S OUT.json

A query on Spark's socket source (localhost:PORT, where the caller serves
lines ``seq stamp_ns`` at its offered rate) passes each line through as it
is (a projection: the same one-operator pipeline as latency.py's rainstorm
job, run in the JVM, no Python UDF) into ``foreachBatch``, which runs on the
driver once a micro-batch's output is there: each record's latency is
taken there (now - stamp), as latency.py takes it when a consumer sees the
output.  Micro-batches start as soon as the previous one ends (the default
trigger).  The query stops once RECORDS lines arrived, or WAIT_S after it
started.

Writes {"startup_s": session start, "batches": micro-batches with rows,
"seen": [[seq, stamp_ns, now_ns], ...]}.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any


def main() -> None:
    from pyspark.sql import SparkSession

    port, records, wait_s, out = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    t0 = time.perf_counter()
    spark = (SparkSession.builder.master("local[2]").appName("rainstorm-latency")
             .config("spark.ui.enabled", "false")
             .config("spark.sql.shuffle.partitions", "2").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    startup = time.perf_counter() - t0
    seen: list[list[int]] = []
    batches = [0]
    done = threading.Event()

    def on_batch(df: Any, _epoch: int) -> None:
        rows = df.collect()
        now = time.time_ns()
        if rows:
            batches[0] += 1
        for row in rows:
            seq, stamp = row.value.split()
            seen.append([int(seq), int(stamp), now])
        if len(seen) >= records:
            done.set()

    lines = (spark.readStream.format("socket").option("host", "127.0.0.1")
             .option("port", port).load())
    query = lines.select("value").writeStream.foreachBatch(on_batch).start()
    done.wait(wait_s)
    query.stop()
    spark.stop()
    with open(out, "w", encoding="utf-8") as fh:
        json.dump({"startup_s": startup, "batches": batches[0], "seen": seen}, fh)


if __name__ == "__main__":
    main()
