"""The FCALLs against a real server: first commit wins, retries are harmless,
nothing is written when a check fails."""

from __future__ import annotations

import zlib

import pytest
import redis

from rainstorm import keys, lua
from rainstorm.operators import aggregates
from rainstorm.protocol.counters import StageCounter
from tests.helpers import append_delta, base_blob, logged, state_keys

JOB = "proto"
S0 = keys.stage_stream(JOB, 0, 0)
S1 = keys.stage_stream(JOB, 1, 0)
P = 4  # state partitions of these tests' aggregate
LOG0, BASE0 = keys.state_log(JOB, 0, 0), keys.state(JOB, 0, 0)


def deltas(state: dict[str, int], parts: int = P) -> list[lua.Delta]:
    """``state`` split by state partition (crc32 % parts, computed here)."""
    split: dict[int, dict[str, int]] = {}
    for k, v in state.items():
        split.setdefault(zlib.crc32(k.encode()) % parts, {})[k] = v
    return [lua.Delta(keys.state(JOB, 0, p), keys.state_log(JOB, 0, p),
                      aggregates.encode(split[p]), p) for p in sorted(split)]


def one_delta(state: dict[str, int]) -> list[lua.Delta]:
    """``state`` as one delta of partition 0 (its keys' partition does not matter to Lua)."""
    return [lua.Delta(BASE0, LOG0, aggregates.encode(state), 0)]


def logs_len(r: redis.Redis) -> int:
    return sum(r.xlen(keys.state_log(JOB, 0, p)) for p in range(P))


def setup_entries(r: redis.Redis, n: int = 3) -> list[tuple[str, str, str]]:
    r.hset(keys.meta(JOB), "state", "running")
    for stream, stage in ((S0, 0), (S1, 1)):
        r.xgroup_create(stream, keys.group(stage), id="0", mkstream=True)
    for i in range(n):
        r.xadd(S0, {"u": f"0:{i}", "d": f"line {i}\n"})
    rows = r.xreadgroup(keys.group(0), "w1", {S0: ">"}, count=n)[0][1]
    return [(S0, rid.decode(), f"0:{i}") for i, (rid, _) in enumerate(rows)]


def request(inputs: list[tuple[str, str, str]], **kw: object) -> lua.CommitRequest:
    base: dict[str, object] = dict(
        counters=keys.counters(JOB), dlq=keys.dlq(JOB), meta=keys.meta(JOB),
        group=keys.group(0), stage=0, inputs=inputs, records_in=len(inputs))
    base.update(kw)
    return lua.CommitRequest(**base)  # type: ignore[arg-type]


def snapshot_all(r: redis.Redis) -> dict[str, object]:
    return {k.decode(): r.dump(k) for k in r.keys("*")}


def test_commit_acks_emits_and_deletes(r: redis.Redis) -> None:
    inputs = setup_entries(r)
    state = {"line": 3, "a": 1, "b": 2, "c": 5, "d": 8, "e": 13}
    parts = deltas(state)
    assert len(parts) > 1  # the delta spans several partitions
    req = request(inputs, deltas=parts, outputs=[(S1, "b.0", b"payload")],
                  emit_field=keys.counter_field(1, StageCounter.EMITTED))
    res = lua.commit(r, req)
    assert res.status == "ok" and res.due == []  # a fresh log is not due yet
    assert r.xlen(S0) == 0 and r.xpending(S0, keys.group(0))["pending"] == 0
    assert r.xlen(S1) == 1
    for p in range(P):  # each partition's log holds its part, whole, and counts its bytes
        rows = logged(r, keys.state(JOB, 0, p), keys.state_log(JOB, 0, p))
        mine = {k: v for k, v in state.items() if zlib.crc32(k.encode()) % P == p}
        assert [aggregates.decode(blob) for _, blob in rows] == ([mine] if mine else [])
        assert int(r.hget(keys.state(JOB, 0, p), "lb") or 0) == sum(len(b) for _, b in rows)
    # each delta in the key its token names, and nothing else of the state made
    assert state_keys(r, JOB) == {k for d in parts for k in (d.base, d.log, d.key)}
    c = r.hgetall(keys.counters(JOB))
    assert c[b"s0:committed"] == b"3" and c[b"s1:emitted"] == b"1"


def test_same_commit_twice_changes_nothing(r: redis.Redis) -> None:
    inputs = setup_entries(r)
    req = request(inputs, deltas=deltas({"x": 1, "y": 2, "z": 3}))
    assert lua.commit(r, req).status == "ok"
    before = snapshot_all(r)
    again = lua.commit(r, req)  # e.g. redis-py retrying after a lost reply
    assert again.status == "rejected"
    assert set(again.rejected) == {i[1] for i in inputs}
    after = snapshot_all(r)
    counters_key = keys.counters(JOB)
    before.pop(counters_key)
    assert r.hget(counters_key, "s0:rejected") == b"3"
    after.pop(counters_key)
    assert before == after


def test_stolen_entry_first_commit_wins(r: redis.Redis) -> None:
    inputs = setup_entries(r)
    # a thief claims everything; the straggler (w1) commits first and wins
    r.xclaim(S0, keys.group(0), "thief", 0, [i[1] for i in inputs])
    assert lua.commit(r, request(inputs)).status == "ok"
    late = lua.commit(r, request(inputs))
    assert late.status == "rejected" and set(late.rejected.values()) == {"acked"}


def test_partial_rejection_applies_nothing(r: redis.Redis) -> None:
    inputs = setup_entries(r)
    assert lua.commit(r, request(inputs[:1])).status == "ok"
    before = snapshot_all(r)
    res = lua.commit(r, request(inputs, deltas=deltas({"z": 9, "y": 8, "x": 7, "w": 6})))
    assert res.status == "rejected" and list(res.rejected) == [inputs[0][1]]
    counters_key = keys.counters(JOB)
    after = snapshot_all(r)
    before.pop(counters_key)
    after.pop(counters_key)
    assert after == before and logs_len(r) == 0  # no log, no 'lb' written
    assert r.xpending(S0, keys.group(0))["pending"] == 2


def test_stale_uid_is_rejected(r: redis.Redis) -> None:
    inputs = setup_entries(r)
    wrong = [(s, i, uid + "-other") for s, i, uid in inputs]
    res = lua.commit(r, request(wrong))
    assert res.status == "rejected" and set(res.rejected.values()) == {"stale"}
    assert r.xlen(S0) == 3


def test_backpressure_refuses_without_acking(r: redis.Redis) -> None:
    inputs = setup_entries(r)
    for i in range(4):
        r.xadd(S1, {"u": f"x{i}", "d": b""})
    req = request(inputs, outputs=[(S1, "b.0", b"p")], emit_field="s1:emitted", max_backlog=4)
    res = lua.commit(r, req)
    assert res.status == "backlog" and res.stream == S1
    assert r.xpending(S0, keys.group(0))["pending"] == 3 and r.xlen(S1) == 4


def test_malformed_call_writes_nothing(r: redis.Redis) -> None:
    inputs = setup_entries(r)
    before = snapshot_all(r)
    keys_ = [keys.counters(JOB), keys.dlq(JOB), keys.meta(JOB), S0]
    id_, uid = inputs[0][1], inputs[0][2]
    # ARGV: group stage n_in n_out n_dead max_backlog n_delta emit_field records_in
    # records_out bytes_in n_extra keep_inputs fold_entries fold_bytes, then the rest
    with pytest.raises(redis.ResponseError, match="n_out must be"):
        r.fcall("rainstorm_commit", len(keys_), *keys_, "g0", 0, 1, "x", 0, 0, 0, "", 0, 0, 0,
                0, 0, 8, 64, id_, uid)
    with pytest.raises(redis.ResponseError, match="wrong number of args"):
        r.fcall("rainstorm_commit", len(keys_), *keys_, "g0", 0, 1, 0, 0, 0, 0, "", 0, 0, 0, 0,
                0, 8, 64)
    with pytest.raises(redis.ResponseError, match="increment must be an integer"):
        r.fcall("rainstorm_commit", len(keys_), *keys_, "g0", 0, 1, 0, 0, 0, 0, "", 0, 0, 0, 1,
                0, 8, 64, id_, uid, "s0:x", "1.5")
    with pytest.raises(redis.ResponseError, match="keep_inputs must be 0 or 1"):
        r.fcall("rainstorm_commit", len(keys_), *keys_, "g0", 0, 1, 0, 0, 0, 0, "", 0, 0, 0, 0,
                2, 8, 64, id_, uid)
    with pytest.raises(redis.ResponseError, match="fold_bytes"):
        r.fcall("rainstorm_commit", len(keys_), *keys_, "g0", 0, 1, 0, 0, 0, 0, "", 0, 0, 0, 0,
                0, 8, "lots", id_, uid)
    # a delta whose keys are missing (n_delta 1, no base/log/delta keys), then whose
    # token and size are, then whose key is not its token's or whose size is no size
    with pytest.raises(redis.ResponseError, match="wrong number of keys"):
        r.fcall("rainstorm_commit", len(keys_), *keys_, "g0", 0, 1, 0, 0, 0, 1, "", 0, 0, 0, 0,
                0, 8, 64, id_, uid, "tok", 4)
    dkey = keys.state_delta(BASE0, "tok")
    with pytest.raises(redis.ResponseError, match="wrong number of args"):
        r.fcall("rainstorm_commit", len(keys_) + 3, *keys_, BASE0, LOG0, dkey, "g0", 0, 1, 0, 0,
                0, 1, "", 0, 0, 0, 0, 0, 8, 64, id_, uid)
    for token, key, size in (("tok", keys.state_delta(BASE0, "other"), 4), ("", dkey, 4),
                             ("tok", keys.meta(JOB), 4), ("tok", dkey, -4)):
        with pytest.raises(redis.ResponseError, match="not <base>:d:<token>|delta bytes"):
            r.fcall("rainstorm_commit", len(keys_) + 3, *keys_, BASE0, LOG0, key, "g0", 0, 1, 0,
                    0, 0, 1, "", 0, 0, 0, 0, 0, 8, 64, id_, uid, token, size)
    assert snapshot_all(r) == before


def test_a_refused_or_failed_commit_leaves_no_delta_key(r: redis.Redis) -> None:
    """The deltas follow the FCALL in its MULTI as SET ... XX: only a commit
    that succeeds makes their keys, so a refused one (or one whose FCALL
    fails) writes none of its blobs anywhere."""
    inputs = setup_entries(r)
    assert lua.commit(r, request(inputs[:1])).status == "ok"
    before = snapshot_all(r)
    refused = request(inputs, deltas=deltas({"x": 1, "y": 2, "z": 3}))
    assert lua.commit(r, refused).status == "rejected"
    bad = request(inputs[1:], deltas=deltas({"x": 1}), extra={"s0:x": 1})
    bad.extra = {"s0:x": "1.5"}  # type: ignore[dict-item]  # the FCALL fails on it
    with pytest.raises(redis.ResponseError, match="increment must be an integer"):
        lua.commit(r, bad)
    after = snapshot_all(r)
    for snap in (before, after):
        snap.pop(keys.counters(JOB))
    assert after == before
    assert not any(r.exists(d.key) for d in [*refused.deltas, *bad.deltas])


def test_load_moves_cursor_atomically_and_fences(r: redis.Redis) -> None:
    r.xgroup_create(S0, keys.group(0), id="0", mkstream=True)
    kw = dict(counters=keys.counters(JOB), cursor=keys.cursor(JOB), meta=keys.meta(JOB),
              max_backlog=0)
    gone = lua.load(r, expected_pos="", new_pos="0:1", entries=[(S0, "0:0", b"x")], **kw)
    assert gone.status == "gone" and r.xlen(S0) == 0
    r.hset(keys.meta(JOB), "state", "running")
    ok = lua.load(r, expected_pos="", new_pos="0:10", entries=[(S0, "0:0", b"0123456789")], **kw)
    assert ok.status == "ok"
    stale = lua.load(r, expected_pos="", new_pos="0:10", entries=[(S0, "0:0", b"x")], **kw)
    assert stale.status == "cursor" and stale.detail == "0:10"
    assert r.xlen(S0) == 1 and r.hget(keys.counters(JOB), "s0:emitted") == b"1"


def test_function_library_self_heals(r: redis.Redis) -> None:
    r.function_flush()
    inputs = setup_entries(r)
    assert lua.commit(r, request(inputs)).status == "ok"


def compact_request(snap: lua.Snapshot, ids: list[str], blob: bytes, part: int = 0,
                    **kw: object) -> lua.CompactRequest:
    """Fold ``ids`` of ``snap`` (partition ``part``) into ``blob``."""
    fields: dict[str, object] = dict(
        base=keys.state(JOB, 0, part), log=keys.state_log(JOB, 0, part), meta=keys.meta(JOB),
        counters=keys.counters(JOB), out=keys.output(JOB), dlq=keys.dlq(JOB), stage=0,
        version=snap.version, blob=blob, ids=ids, tokens=snap.token_by_id(),
        base_token=snap.base_token)
    fields.update(kw)
    return lua.CompactRequest(**fields)  # type: ignore[arg-type]


def test_compaction_checks_version_ids_and_keys(r: redis.Redis) -> None:
    r.hset(keys.meta(JOB), "state", "running")
    blobs = [aggregates.encode({"a": i}) for i in (1, 2)]
    ids = [append_delta(r, BASE0, LOG0, b) for b in blobs]
    r.hset(BASE0, "lb", sum(map(len, blobs)) + 7)  # 7 bytes of deltas not in this log
    snap = lua.snapshot(r, base=BASE0, log=LOG0)
    assert snap.log_ids == ids and snap.version == 0 and snap.deltas == blobs
    folded = aggregates.encode({"a": 3})
    before = snapshot_all(r)
    # only the log's head may be folded: not its second entry alone, nor an id it lacks
    for wrong in ([ids[1]], [ids[0], "1-1"], ["x"]):
        assert lua.compact(r, compact_request(snap, wrong, folded, tokens={
            i: "t" for i in wrong} | snap.token_by_id())) is lua.CompactStatus.CONFLICT
    # the keys must be the entries' own, the old folded part the base's
    with pytest.raises(redis.ResponseError, match="is not its log entry's"):
        lua.compact(r, compact_request(snap, ids, folded, tokens={ids[0]: snap.tokens[1],
                                                                  ids[1]: snap.tokens[0]}))
    with pytest.raises(redis.ResponseError, match="not the folded part the base names"):
        lua.compact(r, compact_request(snap, ids, folded, base_token="forged"))
    assert snapshot_all(r) == before  # nothing written
    assert lua.compact(r, compact_request(snap, ids, folded)) is lua.CompactStatus.OK
    assert lua.compact(r, compact_request(snap, ids, b"")) is lua.CompactStatus.CONFLICT
    assert r.xlen(LOG0) == 0 and r.hget(BASE0, "lb") == b"7"  # lowered by what it folded
    assert base_blob(r, BASE0) == folded and r.hget(BASE0, "bs") == str(len(folded)).encode()
    assert not any(r.exists(keys.state_delta(BASE0, t)) for t in snap.tokens)
    first = r.hget(BASE0, "t").decode()
    # the next compaction replaces the folded part: the old key goes
    snap = lua.snapshot(r, base=BASE0, log=LOG0)
    assert (snap.version, snap.base, snap.base_token) == (1, folded, first)
    assert lua.compact(r, compact_request(snap, [], aggregates.encode({"a": 4}))) \
        is lua.CompactStatus.OK
    assert not r.exists(keys.state_blob(BASE0, first))
    assert state_keys(r, JOB) == {BASE0, LOG0,
                                  keys.state_blob(BASE0, r.hget(BASE0, "t").decode())}
    assert aggregates.decode(lua.snapshot(r, base=BASE0, log=LOG0).base) == {"a": 4}


def test_compaction_emits_what_the_fold_closed_in_the_same_step(r: redis.Redis) -> None:
    r.hset(keys.meta(JOB), "state", "running")
    base, log = keys.state(JOB, 0, 2), keys.state_log(JOB, 0, 2)
    blob = aggregates.encode({"10|a": 1})
    id_ = append_delta(r, base, log, blob)
    r.hset(base, "lb", len(blob) + 5)  # 5 bytes of another, unfolded delta
    outs = [("w.1", b"closed one"), ("w.2", b"closed two")]
    field = keys.counter_field(0, StageCounter.OUTPUT_ENTRIES)
    snap = lua.snapshot(r, base=base, log=log)
    req = compact_request(snap, [id_], aggregates.encode({}), part=2, outputs=outs,
                          emit_field=field)
    assert lua.compact(r, req) is lua.CompactStatus.OK
    rows = r.xrange(keys.output(JOB))
    assert [(f[b"u"], f[b"d"]) for _, f in rows] == [(b"w.1", b"closed one"),
                                                      (b"w.2", b"closed two")]
    assert r.hget(keys.counters(JOB), field) == b"2"
    assert r.hmget(base, "v", "lb") == [b"1", b"5"]
    assert r.xlen(log) == 0


def test_keep_inputs_acks_without_deleting_or_checking_the_uid(r: redis.Redis) -> None:
    inputs = setup_entries(r)
    user = [(s, i, "") for s, i, _ in inputs]  # a user's stream: no uid of ours
    assert lua.commit(r, request(user, keep_inputs=True)).status == "ok"
    assert r.xlen(S0) == 3 and r.xpending(S0, keys.group(0))["pending"] == 0
    again = lua.commit(r, request(user, keep_inputs=True))
    assert again.status == "rejected" and set(again.rejected.values()) == {"acked"}


def test_requeue_moves_a_dead_entry_back_once(r: redis.Redis) -> None:
    inputs = setup_entries(r, 2)
    stream, id_, uid = inputs[0]
    dead = lua.deadletter(r, lua.DeadletterRequest(
        lua.JobKeys.of(JOB), stream=stream, group=keys.group(0), stage=0, entry_id=id_,
        uid=uid, error="boom", deliveries=7))
    assert dead is lua.DeadletterStatus.OK
    assert r.xlen(S0) == 1 and r.hget(keys.counters(JOB), "s0:dead") == b"1"
    (dead_id, fields), = r.xrange(keys.dlq(JOB))
    req = lua.RequeueRequest(lua.JobKeys.of(JOB), stream=S0, dead_id=dead_id.decode(),
                             stage=0, kind="entry", uid="rq1", payload=fields[b"d"])
    assert lua.requeue(r, req) is lua.RequeueStatus.OK
    again = lua.requeue(r, req)  # a second call: already gone
    assert again is lua.RequeueStatus.ABSENT
    assert r.xlen(keys.dlq(JOB)) == 0 and r.xlen(S0) == 2
    c = r.hgetall(keys.counters(JOB))
    assert c[b"s0:dead"] == b"0" and c[b"s0:requeued"] == b"1"
    (_, back), = r.xreadgroup(keys.group(0), "w2", {S0: ">"})[0][1]
    assert back == {b"u": b"rq1", b"d": fields[b"d"]} == {b"u": b"rq1", b"d": b"line 0\n"}


MAX_EVENT = keys.counter_field(0, StageCounter.MAX_EVENT_US)


def test_window_guard_refuses_a_commit_into_a_closed_window(r: redis.Redis) -> None:
    inputs = setup_entries(r)
    r.hset(keys.counters(JOB), MAX_EVENT, 100_000_000)
    before = snapshot_all(r)
    late = (keys.late(JOB), "b.late", b"late records")
    req = request(inputs, deltas=one_delta({"0|a": 1}), outputs=[late],
                  emit_field="s0:late_entries", window=(120_000_000, 100_000_000))
    res = lua.commit(r, req)  # the guard (a window's close) is already reached
    assert res.status == "closed" and res.max_event_us == 100_000_000
    assert snapshot_all(r) == before  # nothing written, not even a counter
    req.window = (120_000_000, 100_000_001)  # one µs later: still open
    assert lua.commit(r, req).status == "ok"
    c = r.hgetall(keys.counters(JOB))
    assert c[MAX_EVENT.encode()] == b"120000000" and c[b"s0:late_entries"] == b"1"
    assert r.xlen(keys.late(JOB)) == 1 and r.xlen(LOG0) == 1


def test_window_commit_raises_the_max_event_time_only(r: redis.Redis) -> None:
    inputs = setup_entries(r, 4)

    def commit(entry: tuple[str, str, str], window: tuple[int | None, int | None]) -> str:
        return lua.commit(r, request([entry], window=window)).status

    assert commit(inputs[0], (5_000_000, None)) == "ok"  # no watermark yet, no guard
    assert r.hget(keys.counters(JOB), MAX_EVENT) == b"5000000"
    assert commit(inputs[1], (-3_000_000, 9_000_000)) == "ok"  # smaller: unchanged
    assert r.hget(keys.counters(JOB), MAX_EVENT) == b"5000000"
    assert commit(inputs[2], (1_700_000_000_123_456, 1_700_000_000_000_000)) == "ok"
    assert r.hget(keys.counters(JOB), MAX_EVENT) == b"1700000000123456"
    assert commit(inputs[3], (None, None)) == "ok"  # an empty batch
    assert r.hget(keys.counters(JOB), MAX_EVENT) == b"1700000000123456"
    assert lua.commit(r, request(inputs[:1], window=(1, None))).status == "rejected"


def test_window_args_are_validated_before_any_write(r: redis.Redis) -> None:
    inputs = setup_entries(r)
    before = snapshot_all(r)
    for bad in [("1.5", ""), ("", "x"), ("9007199254740992", ""), ("0x10", "")]:
        with pytest.raises(redis.ResponseError, match="must be an integer below 2"):
            lua.commit(r, request(inputs, window=bad))  # type: ignore[arg-type]
    assert snapshot_all(r) == before
    assert lua.commit(r, request(inputs)).status == "ok"  # no window args: untouched
    assert r.hget(keys.counters(JOB), MAX_EVENT) is None
