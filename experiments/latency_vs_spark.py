"""Streaming latency side by side: rainstorm against Spark Structured Streaming.

The same offered load for both, one rate after the other in one run: lines
``seq stamp_ns`` appended at a fixed rate, each passed through one
operator, and the time from append to output visible taken per record
(p50/p95/p99 after a 1 s warm-up; sustained = every record out within 2 s
of the end and the latency not growing through the run; exactly once = no
record twice, none that was not sent):

* rainstorm: latency.py's measurement (a Redis-stream source, one fused
  ``map`` in Python, 2 workers and a coordinator as processes, a private
  embedded server; appended with XADD, seen by a consumer of the output
  stream);
* Spark Structured Streaming, local[2] (spark_stream.py: the socket source,
  a projection in the JVM, ``foreachBatch`` on the driver where the latency
  is taken; micro-batches back to back, the default trigger).  The lines
  are served here on a TCP socket at the same rate.  Spark's session start
  is reported apart (``startup_s``); Spark's continuous mode (~1 ms) does not
  take a socket source, so it is not run.

Flink, the other streaming peer users would name, was not tried (PyFlink
is on PyPI; a next step).

    python experiments/latency_vs_spark.py [--quick] [--rates 1000,10000,30000]
        [--seconds 10] [--repeat 3] [--spark-python PY]

PySpark is found as keys_grow.find_spark does (--spark-python, $SPARK_PYTHON,
this Python, data/spark-venv); without it, or with --quick and no
--spark-python, only rainstorm runs and the reason is printed.  Writes
experiments/results/latency_vs_spark.{csv,png}; exit 1 on a wrong result.
"""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import latency
from common import ROOT, finish, parser, pyplot
from keys_grow import find_spark

SPARK = "Spark Structured Streaming (micro-batch)"
RAINSTORM = "rainstorm"
ACCEPT_S = 180.0  # Spark's session start, then its query connects


def serve(conn: socket.socket, rate: int, seconds: float) -> float:
    """Lines ``seq stamp_ns`` at ``rate`` per second for ``seconds`` (as
    latency.py's producer paces its XADDs); returns the first stamp (s)."""
    tick = 0.002 if rate >= 500 else 0.01
    total = int(rate * seconds)
    t0 = time.monotonic()
    start = time.time_ns()
    sent = 0
    while sent < total:
        due = int(min((time.monotonic() - t0) * rate, total))
        if due > sent:
            now = time.time_ns()
            conn.sendall("".join(f"{seq} {now}\n" for seq in range(sent, due)).encode())
            sent = due
        time.sleep(tick)
    return start / 1e9


def spark_rate(python: str, rate: int, seconds: float) -> dict[str, Any]:
    total = int(rate * seconds)
    with tempfile.TemporaryDirectory() as d, socket.create_server(("127.0.0.1", 0)) as srv:
        out = Path(d) / "seen.json"
        srv.settimeout(ACCEPT_S)
        port = srv.getsockname()[1]
        t = time.perf_counter()
        proc = subprocess.Popen([python, str(ROOT / "experiments" / "spark_stream.py"),
                                 str(port), str(total), str(ACCEPT_S + seconds + 30), str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            conn, _ = srv.accept()
        except TimeoutError:
            proc.kill()
            raise RuntimeError(f"Spark's query did not connect within {ACCEPT_S:.0f} s") from None
        ready_s = time.perf_counter() - t
        with conn:
            start = serve(conn, rate, seconds)
            try:
                _, err = proc.communicate(timeout=seconds + 60)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise RuntimeError("Spark's query did not stop") from None
        if proc.returncode:
            raise RuntimeError(f"spark_stream.py failed: {err.strip()[-300:]}")
        got = json.loads(out.read_text())
    lat_ms = [(stamp / 1e9 - start, (now - stamp) / 1e6) for _seq, stamp, now in got["seen"]]
    seqs = {seq for seq, _stamp, _now in got["seen"]}
    row = latency.summarize(rate, seconds, total, lat_ms, seqs)
    return {"engine": SPARK, **row, "startup_s": round(got["startup_s"], 2),
            "query_ready_s": round(ready_s, 2), "batches": got["batches"]}


def summary(rows: list[dict[str, Any]]) -> None:
    """Median (min-max) of p50 and p99 per engine and rate, over the repeats."""
    for engine in (RAINSTORM, SPARK):
        for rate in sorted({r["rate"] for r in rows if r["engine"] == engine}):
            mine = [r for r in rows if r["engine"] == engine and r["rate"] == rate]
            text = ", ".join(
                f"{q} {statistics.median(r[q] for r in mine):g} ms "
                f"({min(r[q] for r in mine):g}-{max(r[q] for r in mine):g})"
                for q in ("p50_ms", "p99_ms"))
            sustained = sum(bool(r["sustainable"]) for r in mine)
            print(f"{engine} at {rate}/s over {len(mine)} runs: {text}; "
                  f"sustained {sustained} of {len(mine)}")


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for engine, color in ((RAINSTORM, "#3a7"), (SPARK, "#888")):
        rates = sorted({r["rate"] for r in rows if r["engine"] == engine})
        if not rates:
            continue
        for q, marker, ls in (("p50_ms", "o", "-"), ("p99_ms", "^", "--")):
            per = [[r[q] for r in rows if r["engine"] == engine and r["rate"] == rate]
                   for rate in rates]
            med = [statistics.median(v) for v in per]
            ax.errorbar(rates, med, yerr=[[m - min(v) for m, v in zip(med, per, strict=True)],
                                          [max(v) - m for m, v in zip(med, per, strict=True)]],
                        marker=marker, ls=ls, color=color, capsize=3,
                        label=f"{engine} {q.removesuffix('_ms')} (median, min-max)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("offered rate (records/s)")
    ax.set_ylabel("append -> output visible (ms)")
    ax.set_title("streaming latency, 2 cores: rainstorm vs Spark Structured Streaming")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = parser(__doc__)
    ap.add_argument("--rates", default="1000,10000,30000")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--spark-python", default=None)
    ap.add_argument("--repeat", type=int, default=1, help="runs of every rate, each engine")
    a = ap.parse_args()
    rates = [1000] if a.quick else [int(x) for x in a.rates.split(",")]
    seconds = 3.0 if a.quick else a.seconds
    repeat = 1 if a.quick else a.repeat
    python, why = find_spark(a.spark_python)
    if a.quick and not a.spark_python:
        python, why = None, "--quick runs Spark only with --spark-python"
    if python is None:
        print(f"Spark not run: {why}")
    rows: list[dict[str, Any]] = []
    for rep in range(repeat):  # the engines alternate, repeat after repeat
        rows += [{"engine": RAINSTORM, "repeat": rep, **row} for row in latency.ladder(
            rates, seconds, lambda url, rate, secs, tmp: latency.measure(url, rate, secs, tmp))]
        for rate in rates if python is not None else []:
            row = {"repeat": rep, **spark_rate(python, rate, seconds)}
            print(row, flush=True)
            rows.append(row)
    summary(rows)
    cols = {k: "" for r in rows for k in r}  # (Spark's rows say more)
    rows = [{**cols, **r} for r in rows]
    return finish("latency_vs_spark", rows, a.out, lambda p: plot(rows, p))


if __name__ == "__main__":
    sys.exit(main())
