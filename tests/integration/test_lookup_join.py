"""The stream-table (lookup) join: every record with the table rows of its
key, against plain Python on the same CSV/JSON-lines files, in-process on
the suite's server; one-line refusals for a bad or changed table."""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from rainstorm import Dataset
from rainstorm.errors import UsageError
from rainstorm.operators import lookup
from tests.helpers import ROOT
from tests.integration.test_dataset_in_process import (  # noqa: F401  (autouse fixture)
    in_process_on_the_suite_server,
)


def _tables(tmp: Path) -> tuple[Path, Path, list[dict[str, str]], list[dict[str, str]]]:
    """orders (customer ids partly missing from customers) and customers
    (some ids twice, some never ordered)."""
    rng = random.Random(11)
    customers = [{"id": str(i), "name": f"c{i}", "country": rng.choice("ABC")}
                 for i in range(60)]
    customers += [{"id": "7", "name": "c7-twin", "country": "D"},
                  {"id": "9", "name": "c9-twin", "country": "E"}]
    orders = [{"order": str(n), "customer_id": str(rng.randrange(80)),
               "amount": str(rng.randint(1, 99))} for n in range(700)]
    cpath, opath = tmp / "customers.csv", tmp / "orders.csv"
    for path, rows in ((cpath, customers), (opath, orders)):
        with path.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return opath, cpath, orders, customers


def _expected(orders: list[dict[str, str]], customers: list[dict[str, str]], left: bool
              ) -> Counter[str]:
    by_id: dict[str, list[dict[str, str]]] = {}
    for c in customers:
        by_id.setdefault(c["id"], []).append(c)
    out: Counter[str] = Counter()
    for o in orders:
        rows = by_id.get(o["customer_id"], [])
        for row in rows or ([None] if left else []):
            out[json.dumps([o, row], sort_keys=True)] += 1
    return out


def _got(pairs: list[Any]) -> Counter[str]:
    return Counter(json.dumps([o, row], sort_keys=True) for o, row in pairs)


@pytest.mark.parametrize("how", ["inner", "left"])
def test_lookup_joins_every_record_with_its_rows(tmp_path: Path, how: str) -> None:
    opath, cpath, orders, customers = _tables(tmp_path)
    got = Dataset.read_csv(str(opath), batch_bytes=2048) \
        .lookup(cpath, key="id", on="customer_id", how=how).collect()
    assert _got(got) == _expected(orders, customers, how == "left")


def test_lookup_on_pairs_and_a_json_lines_table(tmp_path: Path) -> None:
    table = tmp_path / "t.jsonl"
    rows = [{"k": i % 5, "v": i} for i in range(12)]  # int keys, each 2-3 times
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    src = tmp_path / "in.txt"
    src.write_text("".join(f"{i}\n" for i in range(8)))
    got = Dataset.read_text(str(src)).map(lambda s: (int(s), s)) \
        .lookup(table, key="k", how="left").collect()
    want = Counter()
    for i in range(8):
        match = [r for r in rows if r["k"] == i] or [None]
        for r in match:
            want[json.dumps([[i, str(i)], r])] += 1
    assert Counter(json.dumps([list(rec), row]) for rec, row in got) == want


def test_lookup_mistakes_are_one_line(tmp_path: Path) -> None:
    opath, cpath, _, _ = _tables(tmp_path)
    ds = Dataset.read_csv(str(opath))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"k": 1}\nnot json\n')
    for call, says in [
        (lambda: ds.lookup(tmp_path / "nope.csv", key="id"), "nope.csv"),
        (lambda: ds.lookup(cpath, key="missing"), "no column 'missing'"),
        (lambda: ds.lookup(cpath, key="id", how="outer"), "how must be"),
        (lambda: ds.lookup(bad, key="k"), "line 2: not JSON"),
        (lambda: ds.lookup(cpath, key="id", format="xml"), "format must be"),
    ]:
        with pytest.raises(UsageError) as exc:
            call()
        assert says in str(exc.value) and "\n" not in str(exc.value)


def test_a_table_changed_after_submit_is_refused(tmp_path: Path) -> None:
    _, cpath, _, _ = _tables(tmp_path)
    args = lookup.stamp({"path": str(cpath), "key": "id"})
    assert lookup.make_lookup(**args)({"customer_id": "1"}) == []  # (no field: no key)
    with cpath.open("a") as fh:
        fh.write("99,late,Z\n")
    os.utime(cpath, ns=(args["mtime_ns"] + 10**9, args["mtime_ns"] + 10**9))
    with pytest.raises(ValueError, match="changed since the job was submitted"):
        lookup.make_lookup(**args)


def test_a_yaml_lookup_runs_from_the_cli(tmp_path: Path) -> None:
    opath, cpath, orders, customers = _tables(tmp_path)
    spec = tmp_path / "enrich.yaml"
    spec.write_text(f"""name: enrich
source: {{type: text, paths: ["{opath}"]}}
pipeline:
  - {{op: flat_map, fn: parse_csv, args: {{columns: [order, customer_id, amount]}}}}
  - {{op: flat_map, fn: lookup, args: {{path: "{cpath}", key: id, field: customer_id}}}}
""")
    res = subprocess.run([sys.executable, "-m", "rainstorm", "run", str(spec), "--json",
                          "--workers", "1"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert _got(json.loads(res.stdout)) == _expected(orders, customers, left=False)
    cpath.unlink()
    res = subprocess.run([sys.executable, "-m", "rainstorm", "run", str(spec), "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "customers.csv" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("how", ["inner", "left"])
def test_lookup_hash_joins_with_rows_kept_in_redis(tmp_path: Path, r: Any, how: str) -> None:
    """A table in a Redis hash (field: key, value: the row as JSON), read by
    the workers; against plain Python over the same rows."""
    opath, _cpath, orders, customers = _tables(tmp_path)
    table = {c["id"]: c for c in customers}  # a hash holds one row per key: the last
    r.hset("rs:tables:customers", mapping={k: json.dumps(v) for k, v in table.items()})
    got = Dataset.read_csv(str(opath)).lookup_hash("rs:tables:customers", on="customer_id",
                                                   how=how).collect()
    want: Counter[str] = Counter()
    for o in orders:
        row = table.get(o["customer_id"])
        if row is not None or how == "left":
            want[json.dumps([o, row], sort_keys=True)] += 1
    assert _got(got) == want
    # a row changed while nothing caches it is seen by the next job
    r.hset("rs:tables:customers", "7", json.dumps({"id": "7", "name": "renamed"}))
    again = Dataset.read_csv(str(opath)).filter(lambda o: o["customer_id"] == "7") \
        .lookup_hash("rs:tables:customers", on="customer_id", cache_s=0).collect()
    assert again and all(row["name"] == "renamed" for _, row in again)


def test_lookup_hash_mistakes_are_one_line() -> None:
    ds = Dataset.read_text("x")
    for call, says in ((lambda: ds.lookup_hash(""), "hash must name"),
                       (lambda: ds.lookup_hash("h", how="outer"), "how must be one of"),
                       (lambda: ds.lookup_hash("h", cache_s=-1), "cache_s must be")):
        with pytest.raises(UsageError, match=says) as info:
            call()
        assert "\n" not in str(info.value)
