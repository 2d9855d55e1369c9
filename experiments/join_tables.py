"""Two tables joined: rainstorm's Dataset.join against sqlite3 (in memory).

orders.csv (order_id, customer_id, amount in cents) and customers.csv (id,
name, country), generated (random.Random(13)), about ``--mb`` MB each:
customer ids are drawn uniformly from 1.05x the number of customers, so
about 5 % of the orders name a customer id that customers.csv lacks, and
about 2 % of the customers appear twice (with another country), so the
inner join drops the first and doubles the second, as SQL's join does.  The
question: the sum of amount per country over ``orders JOIN customers ON
customer_id = id`` (12 countries).

Contenders, one after the other in one run:
* rainstorm ``join`` as a user writes it (read_csv, map to pairs, join,
  reduce_by_key, collect: three jobs, embedded server and 2 local workers);
* rainstorm ``lookup`` (the stream-table join: every worker reads the
  customers file whole, like a broadcast join; one job);
* sqlite3: both tables loaded into an in-memory database (load time given
  apart), then the SELECT;
* PySpark DataFrame local[2] (``spark.read.csv``, ``join``, ``groupBy``;
  session start given apart), when java and pyspark are found (see
  keys_grow.find_spark; data/spark-venv).
Each is checked against plain Python (a dict of lists); the exit status is
1 on a wrong result.

    python experiments/join_tables.py [--quick] [--mb 50]

Writes experiments/results/join_tables.{csv,png}.
"""

from __future__ import annotations

import csv
import json
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from common import DATA, finish, parser, pyplot
from keys_grow import find_spark

from rainstorm import Dataset

COUNTRIES = ["DE", "FR", "US", "JP", "BR", "IN", "NG", "AU", "CA", "MX", "ES", "IT"]


def generate(d: Path, mb: float, seed: int = 13) -> tuple[Path, Path]:
    """orders.csv of about ``mb`` MB and customers.csv (one customer per 40 orders)."""
    rng = random.Random(seed)
    d.mkdir(parents=True, exist_ok=True)
    orders, customers = d / "orders.csv", d / "customers.csv"
    n_orders = int(mb * 1e6 / 19)  # ~19 bytes a row
    n_customers = max(10, int(mb * 1e6 / 32))  # ~32 bytes a row: as many MB as orders
    if not (orders.exists() and customers.exists()):
        with customers.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["id", "name", "country"])
            for c in range(n_customers):
                w.writerow([c, f"customer {c}", rng.choice(COUNTRIES)])
                if rng.random() < 0.02:  # a duplicated customer
                    w.writerow([c, f"customer {c} (2)", rng.choice(COUNTRIES)])
        with orders.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["order_id", "customer_id", "amount"])
            top = int(n_customers * 1.05)  # ids past n_customers: no such customer
            w.writerows([i, rng.randrange(top), rng.randrange(100, 100_000)]
                        for i in range(n_orders))
    return orders, customers


def reference(orders: Path, customers: Path) -> dict[str, int]:
    """The answer in plain Python: a dict of lists, then the join's sums."""
    countries: dict[str, list[str]] = defaultdict(list)
    with customers.open(newline="") as fh:
        for row in csv.DictReader(fh):
            countries[row["id"]].append(row["country"])
    out: Counter[str] = Counter()
    with orders.open(newline="") as fh:
        for row in csv.DictReader(fh):
            for country in countries.get(row["customer_id"], ()):
                out[country] += int(row["amount"])
    return dict(out)


def with_rainstorm(orders: Path, customers: Path, quick: bool) -> dict[str, int]:
    o = Dataset.read_csv(str(orders)).map(lambda r: (r["customer_id"], int(r["amount"])))
    c = Dataset.read_csv(str(customers)).map(lambda r: (r["id"], r["country"]))
    per_country = (o.join(c, num_partitions=8 if quick else 64)
                   .map(lambda kv: (kv[1][1], kv[1][0])).reduce_by_key("sum"))
    return dict(per_country.collect(workers=2, timeout_s=1800))


def with_lookup(orders: Path, customers: Path) -> dict[str, int]:
    pairs = Dataset.read_csv(str(orders)).lookup(customers, key="id", on="customer_id")
    per_country = pairs.map(lambda p: (p[1]["country"], int(p[0]["amount"]))) \
        .reduce_by_key("sum")
    return dict(per_country.collect(workers=2, timeout_s=1800))


def with_spark(python: str, orders: Path, customers: Path) -> tuple[dict[str, int], float]:
    """PySpark's answer and its session start-up (seconds)."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "out.json"
        res = subprocess.run([python, str(Path(__file__).parent / "spark_jobs.py"), "join",
                              str(orders), str(customers), str(out)], capture_output=True,
                             text=True, timeout=1800)
        if res.returncode:
            raise RuntimeError(f"spark failed: {res.stderr.strip()[-300:]}")
        data = json.loads(out.read_text())
    return {k: int(v) for k, v in data["result"].items()}, float(data["startup_s"])


def with_sqlite(orders: Path, customers: Path) -> tuple[dict[str, int], float]:
    """The SELECT's answer and the seconds spent loading the tables."""
    t0 = time.perf_counter()
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE orders (order_id INTEGER, customer_id TEXT, amount INTEGER)")
    db.execute("CREATE TABLE customers (id TEXT, name TEXT, country TEXT)")
    for table, path in (("orders", orders), ("customers", customers)):
        with path.open(newline="") as fh:
            rows = csv.reader(fh)
            next(rows)
            db.executemany(f"INSERT INTO {table} VALUES (?, ?, ?)", rows)
    db.commit()
    load_s = time.perf_counter() - t0
    got = dict(db.execute("SELECT c.country, SUM(o.amount) FROM orders o JOIN customers c "
                          "ON o.customer_id = c.id GROUP BY c.country").fetchall())
    db.close()
    return got, load_s


def main() -> int:
    ap = parser(__doc__, 50.0)
    a = ap.parse_args()
    mb = 2.0 if a.quick else a.mb
    orders, customers = generate(DATA / f"join-{mb:g}mb-each", mb)
    size = (orders.stat().st_size + customers.stat().st_size) / 1e6
    t0 = time.perf_counter()
    want = reference(orders, customers)
    ref_s = time.perf_counter() - t0
    rows: list[dict[str, Any]] = [{"engine": "python dict of lists", "mb": round(size, 1),
                                   "load_s": 0.0, "seconds": round(ref_s, 2), "correct": True}]
    t0 = time.perf_counter()
    got = with_rainstorm(orders, customers, a.quick)
    rows.append({"engine": "rainstorm join (3 jobs, 2 workers)", "mb": round(size, 1),
                 "load_s": 0.0, "seconds": round(time.perf_counter() - t0, 2),
                 "correct": got == want})
    t0 = time.perf_counter()
    got = with_lookup(orders, customers)
    rows.append({"engine": "rainstorm lookup (table read by each worker)",
                 "mb": round(size, 1), "load_s": 0.0,
                 "seconds": round(time.perf_counter() - t0, 2), "correct": got == want})
    t0 = time.perf_counter()
    got, load_s = with_sqlite(orders, customers)
    rows.append({"engine": "sqlite3 :memory: (load + query)", "mb": round(size, 1),
                 "load_s": round(load_s, 2), "seconds": round(time.perf_counter() - t0, 2),
                 "correct": got == want})

    spark, why = find_spark(None) if not a.quick else (None, "--quick")
    if spark:
        t0 = time.perf_counter()
        got, start_s = with_spark(spark, orders, customers)
        rows.append({"engine": "PySpark DataFrame local[2] (after session start)",
                     "mb": round(size, 1), "load_s": round(start_s, 2),
                     "seconds": round(time.perf_counter() - t0 - start_s, 2),
                     "correct": got == want})
    else:
        print(f"PySpark not run: {why}", file=sys.stderr)

    def plot(path: Path) -> None:
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(7, 3))
        ax.barh([r["engine"] for r in rows], [r["seconds"] for r in rows])
        ax.set_xlabel(f"seconds (orders + customers: {size:.0f} MB; inner join + sum per "
                      "country)")
        fig.tight_layout()
        fig.savefig(path)

    return finish("join_tables", rows, a.out, plot)


if __name__ == "__main__":
    sys.exit(main())
