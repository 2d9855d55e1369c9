"""``source.linger_ms`` (a copied stream source): the loader waits up to that
long for ``batch_records`` records before loading a smaller entry, so records
arriving just after a read join the same entry; with 0 it loads what is
there.  Against a real server; the linger is proven by a second batch of
records added only once the loader is seen blocked in its second XREAD."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from rainstorm import keys
from rainstorm.cli import main
from rainstorm.job import Job, decode_records
from rainstorm.protocol.counters import StageCounter
from rainstorm.protocol.entries import stream_uid
from rainstorm.sources.unbounded import StreamLoader
from rainstorm.spec import parse_spec
from tests.helpers import wait_for


def _loader(r: redis.Redis, linger_ms: int) -> StreamLoader:
    spec = parse_spec({"name": "lg", "source": {"type": "stream", "key": "ev", "field": "d",
                                                "batch_records": 100, "linger_ms": linger_ms},
                       "pipeline": [{"op": "count"}]})
    return StreamLoader(r, Job.build("lg", spec))


def _records(entries: list[Any]) -> list[Any]:
    return [rec for _stream, _uid, blob in entries for rec in decode_records(blob)]


def _blocked_xreads(r: redis.Redis) -> int:
    return sum(1 for c in r.client_list() if c.get("cmd") == "xread" and "b" in c.get("flags", ""))


def test_linger_waits_for_a_full_entry(r: redis.Redis) -> None:
    for i in range(10):
        r.xadd("ev", {"d": f"a{i}"})
    loader = _loader(r, linger_ms=1000)  # (the longest it takes)
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append(loader.gather("", 4)))
    t.start()
    wait_for(lambda: _blocked_xreads(r) == 1, 10, "the loader lingering in XREAD")
    pipe = r.pipeline(transaction=False)  # one round trip, well inside the linger
    for i in range(95):
        pipe.xadd("ev", {"d": f"b{i}"})
    pipe.execute()
    t.join(timeout=10)
    assert not t.is_alive()
    entries, pos, n, _ = got[0]
    recs = _records(entries)
    assert recs[:10] == [f"a{i}" for i in range(10)]
    assert n == len(recs) >= 100 and len(entries) == (n + 99) // 100
    assert recs == [f"a{i}" for i in range(10)] + [f"b{i}" for i in range(n - 10)]
    assert pos == r.xrange("ev")[n - 1][0].decode()


def test_without_linger_it_loads_what_is_there(r: redis.Redis) -> None:
    for i in range(10):
        r.xadd("ev", {"d": f"a{i}"})
    entries, _pos, n, _ = _loader(r, linger_ms=0).gather("", 4)
    assert n == 10 and _records(entries) == [f"a{i}" for i in range(10)]


@pytest.mark.parametrize("bad", ["source.linger_ms=-1", "source.linger_ms=5000"])
def test_a_bad_linger_is_one_line(bad: str, tmp_path: Any) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\nsource: {type: stream, key: ev}\npipeline: [{op: count}]\n")
    res = CliRunner().invoke(main, ["explain", str(spec), "--set", bad])
    assert res.exit_code == 2 and "linger_ms" in res.output and "Traceback" not in res.output


def test_direct_has_no_linger(tmp_path: Any) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\nsource: {type: stream, key: ev, transport: direct, linger_ms: 5}\n"
                    "pipeline: [{op: count}]\n")
    res = CliRunner().invoke(main, ["explain", str(spec)])
    assert res.exit_code == 2 and "linger_ms" in res.output


@pytest.mark.parametrize("odd", [False, True])
def test_gather_reads_records_fields_and_entry_starts(r: redis.Redis, odd: bool) -> None:
    """The loader's records equal a plain reading of the stream: the value
    of field ``d`` (decoded with U+FFFD for bad UTF-8), an entry without it
    counted and skipped; an entry starts every batch_records records, at
    its first record's id.  ``odd``: such entries among the usual ones."""
    added: list[tuple[bytes, dict[str, Any]]] = []
    for i in range(250):
        fields: dict[str, Any] = {"d": f"w{i % 7}"}
        if odd and i == 3:
            fields = {"x": "1"}  # no field d
        elif odd and i == 120:
            fields = {"x": "2", "d": "second"}
        elif odd and i == 201:
            fields = {"d": b"\xffbad"}
        added.append((r.xadd("ev", fields), fields))  # type: ignore[arg-type]
    kept = [(id_, f) for id_, f in added if "d" in f]
    want = [f["d"].decode("utf-8", "replace") if isinstance(f["d"], bytes) else f["d"]
            for _id, f in kept]
    entries, pos, n, _ = _loader(r, linger_ms=0).gather("", 8)
    assert n == len(want) and _records(entries) == want
    starts = [kept[i][0].decode() for i in range(0, len(kept), 100)]
    assert [uid for _stream, uid, _blob in entries] == [stream_uid(s) for s in starts]
    assert pos == added[-1][0].decode()
    missing = r.hget(keys.counters("lg"), keys.counter_field(0, StageCounter.MISSING_FIELD))
    assert int(missing or 0) == (1 if odd else 0)


def test_the_sleep_before_a_read_counts_into_the_linger(r: redis.Redis) -> None:
    """Caught up at a known rate, the loader sleeps before its read until
    the next entry should be full; that sleep is part of the linger, never
    added to it, however far off the entry's fill time was reckoned."""
    import time

    linger_s = 1.0
    loader = _loader(r, linger_ms=int(linger_s * 1000))
    loader._full_at = time.monotonic() + 60  # a rate far too slow: an hour-long entry
    for i in range(10):
        r.xadd("ev", {"d": f"a{i}"})
    t0 = time.monotonic()
    entries, _pos, n, _ = loader.gather("", 4)
    took = time.monotonic() - t0
    assert _records(entries) == [f"a{i}" for i in range(10)] and n == 10
    assert linger_s * 0.9 <= took < linger_s * 1.8, took  # slept, then no second linger
