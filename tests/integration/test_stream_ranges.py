"""A stream source read as ranges (``source.transport: split``, what ``auto``
becomes): the coordinator cuts id ranges from ``XINFO STREAM``'s counter and
workers read them with XRANGE.  In-process loader and workers against the
real server; results compared with a Counter over what was XADDed."""

from __future__ import annotations

from collections import Counter
from typing import Any

import msgpack
import pytest
import redis

from rainstorm import keys
from rainstorm.coordinator.submit import submit
from rainstorm.errors import JobFailed, UsageError
from rainstorm.job import Job
from rainstorm.local.run import prepare
from rainstorm.protocol.entries import RangeRef, entry_fields, id_key, range_of
from rainstorm.protocol.stream_cursor import parse_pos
from rainstorm.sources.ranges import RangeLoader, resolve_stream_transport
from rainstorm.spec import parse_spec
from rainstorm.state import read_state
from rainstorm.worker import Worker, WorkerOptions
from tests.helpers import counters, produce_lines, settled, wait_for


def _job(r: redis.Redis, job_id: str, key: str = "ev", resolve: bool = True,
         **source: Any) -> Job:
    spec = parse_spec({
        "name": job_id, "source": {"type": "stream", "key": key, **source},
        "pipeline": [{"op": "flat_map", "fn": "split_words"}, {"op": "count"}],
        "settings": {"parallelism": 2, "claim_idle_ms": 50, "max_deliveries": 2}})
    job, files = prepare(spec, None, job_id)
    if resolve:
        job = resolve_stream_transport(r, job)
    submit(r, job, files)
    return job


def _cut(loader: RangeLoader, r: redis.Redis, job: Job, key: str = "ev") -> None:
    """Step the loader until its cursor is at the stream's last entry."""
    def caught_up() -> bool:
        loader.step()
        pos = (r.hget(keys.cursor(job.id), "pos") or b"").decode()
        last = r.xinfo_stream(key)["last-generated-id"].decode()
        return parse_pos(pos)[0] == last and parse_pos(pos)[1] is not None

    wait_for(caught_up, 30, "the loader's cursor at the stream's end", every_s=0)


def _ranges(r: redis.Redis, job: Job) -> list[RangeRef]:
    """The range descriptors in the job's stage-0 streams, in id order."""
    found = []
    for s in job.streams(0):
        for _id, fields in r.xrange(s):
            ref = range_of(fields[b"d"])
            assert ref is not None and fields[b"u"].decode() == ref.uid
            found.append(ref)
    return sorted(found, key=lambda ref: id_key(ref.after))


def _drain(r: redis.Redis, job: Job, *workers: Worker) -> None:
    def turn() -> bool:
        for w in workers:
            w.run_once(claim_now=True)
        s0 = counters(r, job.id).stage(0)
        return s0.emitted > 0 and s0.settled

    wait_for(turn, 60, "every range committed", every_s=0)


def test_auto_reads_ranges_and_counts_every_record_once(r: redis.Redis) -> None:
    before = [f"old{i % 5} x" for i in range(1234)]
    produce_lines(r, "ev", before, every=50)
    job = _job(r, "ranges", batch_records=100)  # start: 0, the entries already there too
    assert job.stream_ranges and job.spec.source.transport == "split"
    loader = RangeLoader(r, job)
    _cut(loader, r, job)
    # the backlog: ranges of exactly batch_records, cut from the ids, contiguous
    refs = _ranges(r, job)
    ids = [i.decode() for i, _ in r.xrange("ev")]
    assert [ref.count for ref in refs] == [100] * 12 + [34]
    assert refs[0].after == "0-0" and refs[-1].last == ids[-1]
    assert all(a.last == b.after for a, b in zip(refs, refs[1:], strict=False))
    # then new entries: one range from the counter, no record read
    lines = [f"w{i % 13} v{i % 7}" for i in range(60)]
    missing = produce_lines(r, "ev", lines, every=10)
    _cut(loader, r, job)
    new = _ranges(r, job)[len(refs):]
    assert [(ref.after, ref.count) for ref in new] == [(ids[-1], 60)]
    with Worker(r, WorkerOptions(job=job.id)) as a, Worker(r, WorkerOptions(job=job.id)) as b:
        _drain(r, job, a, b)
    kept = [ln for i, ln in enumerate(before) if i % 50 != 49] + \
        [ln for i, ln in enumerate(lines) if i % 10 != 9]
    assert Counter(read_state(r, job, ("*",))) == Counter(w for ln in kept for w in ln.split())
    s0 = counters(r, job.id).stage(0)
    assert s0.missing_field == len(before) // 50 + missing
    assert s0.records_in == len(kept) and s0.dead == 0
    assert r.xlen("ev") == len(before) + len(lines)  # the user's stream is intact
    assert settled(r, job.id, "ev")


def test_a_restarted_loader_cuts_on_where_the_last_one_stopped(r: redis.Redis) -> None:
    job = _job(r, "restart", batch_records=50, start="$")
    produce_lines(r, "ev", ["x"] * 70)
    RangeLoader(r, job).step()  # the entries added after submit: one range of 70
    produce_lines(r, "ev", ["y"] * 500)  # a burst: more than two ranges' worth
    first = RangeLoader(r, job)  # a new coordinator, from the cursor in Redis
    first.step()
    _cut(RangeLoader(r, job), r, job)
    refs = _ranges(r, job)
    assert refs[0].count == 70 and sum(ref.count for ref in refs) == 570
    assert all(ref.count == 50 for ref in refs[1:-1])
    assert all(a.last == b.after for a, b in zip(refs, refs[1:], strict=False))
    assert len({ref.uid for ref in refs}) == len(refs)
    with Worker(r, WorkerOptions(job=job.id)) as w:
        _drain(r, job, w)
    assert read_state(r, job, ("*",)) == {"x": 70, "y": 500}


def test_a_range_trimmed_before_it_is_read_is_dead_lettered_whole(r: redis.Redis) -> None:
    job = _job(r, "trimmed", batch_records=100)
    produce_lines(r, "ev", [f"a{i % 3}" for i in range(300)])
    _cut(RangeLoader(r, job), r, job)
    assert len(_ranges(r, job)) == 3
    r.xtrim("ev", maxlen=250, approximate=False)  # 50 entries of the first range gone
    ids = [i for i, _ in r.xrange("ev", count=1)]
    r.xdel("ev", r.xrange("ev", min=b"(" + ids[0], count=200)[-1][0])  # one of the third
    with Worker(r, WorkerOptions(job=job.id)) as w:
        _drain(r, job, w)
    # only the intact second range counts; the others are dead letters, whole
    assert Counter(read_state(r, job, ("*",))) == Counter(f"a{i % 3}" for i in range(100, 200))
    dead = r.xrange(keys.dlq(job.id))
    assert len(dead) == 2
    errors = sorted(fields[b"error"].decode() for _id, fields in dead)
    assert "holds 50 of the 100 entries added" in errors[0] and "trimmed or deleted" in errors[0]
    assert "holds 99 of the 100 entries added" in errors[1]
    assert counters(r, job.id).stage(0).dead == 2


@pytest.mark.parametrize("ids", ["later", "earlier"])
def test_a_stream_deleted_and_created_again_fails_the_job(r: redis.Redis, ids: str) -> None:
    """The new stream's ids are after the job's cursor (its counter gives it
    away) or before it (its last id does); explicit ids, so that which one
    it is does not depend on the millisecond the stream was made in."""
    job = _job(r, f"replaced-{ids}", batch_records=10)
    produce_lines(r, "ev", ["a"] * 30)
    loader = RangeLoader(r, job)
    _cut(loader, r, job)
    last_ms = int(r.xinfo_stream("ev")["last-generated-id"].decode().split("-")[0])
    r.delete("ev")
    first_ms = last_ms + 1 if ids == "later" else 1
    for seq in range(5):
        r.xadd("ev", {"line": "b"}, id=f"{first_ms}-{seq + 1}")
    why = ("its source stream 'ev' counts 5 entries added, fewer than the 30 "
           if ids == "later" else f"its source stream 'ev' ends at {first_ms}-5, before ")
    with pytest.raises(JobFailed, match=why):
        for _ in range(5):
            loader.step()


def test_the_worker_acl_user_decides_auto_and_refuses_split(r: redis.Redis) -> None:
    """docker-compose.yml's ``worker`` user reads only ``rs:*`` keys: ``auto``
    copies such a stream; ``split`` says which grant is missing; a worker
    logged in as that user refuses a split job in one line."""
    r.execute_command("ACL", "SETUSER", "worker", "on", ">pw", "%R~rs:*", "~rs:*",
                      "+@all")
    try:
        job = _job(r, "acl-auto")
        assert job.spec.source.transport == "copy" and not job.stream_ranges
        with pytest.raises(UsageError, match=r"split: the ACL user 'worker' may not read "
                                             r"stream 'ev'; grant it \(%R~ev\)"):
            _job(r, "acl-split", transport="split")
        forced = _job(r, "acl-forced", transport="split", resolve=False)
        conn = r.connection_pool.connection_kwargs
        as_worker = redis.Redis(unix_socket_path=conn["path"], username="worker", password="pw")
        with Worker(as_worker, WorkerOptions(job=forced.id)) as w:
            w.run_once()
        refusal = r.hget(keys.refusals(forced.id), w.id)
        assert refusal is not None and b"cannot read the job's source stream 'ev'" in refusal
        assert b"%R~ev" in refusal
        r.execute_command("ACL", "SETUSER", "worker", "%R~ev")
        assert _job(r, "acl-granted").stream_ranges
    finally:
        r.execute_command("ACL", "DELUSER", "worker")


def test_malformed_range_descriptors_are_refused() -> None:
    good = RangeRef("1-0", "5-3", 4)
    assert range_of(good.payload()) == good and range_of(b"\x91\xa1x") is None
    for bad in (["1-0", "1-0", 1], ["5-0", "1-0", 1], ["x", "5-0", 1], ["1-0", "5-0", 0],
                ["1-0", "5-0", True], ["1-0", "5-0"], "nope"):
        with pytest.raises(ValueError, match="malformed range descriptor"):
            range_of(b"\xffrange\x00" + msgpack.packb(bad))


def test_a_range_larger_than_the_loader_cuts_is_not_read(r: redis.Redis) -> None:
    """A descriptor written with the worker password, naming more entries
    than any range the loader cuts (2 x batch_records), is dead-lettered
    unread: a worker never reads a whole stream for one entry."""
    job = _job(r, "forged", batch_records=10)
    produce_lines(r, "ev", ["f"] * 50)
    last = r.xrevrange("ev", count=1)[0][0].decode()
    ref = RangeRef("0-0", last, 50)
    r.xadd(job.streams(0)[0], entry_fields(ref.uid, ref.payload()))
    with Worker(r, WorkerOptions(job=job.id)) as w:
        wait_for(lambda: w.run_once() and r.xlen(keys.dlq(job.id)), 30,
                 "the forged range dead-lettered", every_s=0)
    assert read_state(r, job, ("*",)) == {}
    (_id, dead), = r.xrange(keys.dlq(job.id))
    assert b"counts 50 entries, more than the 20 a range of this job may hold" in dead[b"error"]
