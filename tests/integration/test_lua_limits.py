"""The FUNCTION library's caps, its refusal to write into a job that stopped,
its typed statuses and its version check, against a real server.

Every hostile call here is refused before the function does any work (so
the refusal is fast; the timings are reported by experiments, not asserted),
and nothing is written."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis

from rainstorm import keys, lua
from rainstorm.errors import CallTooLarge, ProtocolError
from rainstorm.local.server import EmbeddedRedis
from rainstorm.lua.library import FORCE_ENV
from rainstorm.replies import as_str
from tests.helpers import append_delta, forge_base

JOB = "caps"
S0 = keys.stage_stream(JOB, 0, 0)
S1 = keys.stage_stream(JOB, 1, 0)
L = lua.LIMITS
BASE, LOG = keys.state(JOB, 0, 0), keys.state_log(JOB, 0, 0)


def snapshot_all(r: redis.Redis) -> dict[str, Any]:
    return {k.decode(): r.dump(k) for k in r.keys("*")}


def pending(r: redis.Redis, n: int = 2) -> list[tuple[str, str, str]]:
    """A running job with ``n`` stage-0 entries pending for worker w1."""
    r.hset(keys.meta(JOB), "state", "running")
    r.xgroup_create(S0, keys.group(0), id="0", mkstream=True)
    r.xgroup_create(S1, keys.group(1), id="0", mkstream=True)
    for i in range(n):
        r.xadd(S0, {"u": f"0:{i}", "d": f"line {i}\n"})
    rows = r.xreadgroup(keys.group(0), "w1", {S0: ">"}, count=n)[0][1]
    return [(S0, rid.decode(), f"0:{i}") for i, (rid, _) in enumerate(rows)]


def request(inputs: list[tuple[str, str, str]], **kw: Any) -> lua.CommitRequest:
    base: dict[str, Any] = dict(
        counters=keys.counters(JOB), dlq=keys.dlq(JOB), meta=keys.meta(JOB),
        group=keys.group(0), stage=0, inputs=inputs, records_in=len(inputs))
    base.update(kw)
    return lua.CommitRequest(**base)


def raw_commit(r: redis.Redis, n_in: int, n_out: int = 0, n_dead: int = 0, n_extra: int = 0,
               payload: bytes = b"", n_delta: int | None = None) -> Any:
    """FCALL rainstorm_commit as an attacker would send it (no Python checks);
    ``payload``: one delta's token (n_delta 1) unless ``n_delta`` says how many
    (deltas are not arguments: a delta's token and size are)."""
    n_delta = (1 if payload else 0) if n_delta is None else n_delta
    token = payload or b"tok"
    ks = [keys.counters(JOB), keys.dlq(JOB), keys.meta(JOB)]
    ks += [S0] * n_in + [S1] * n_out
    ks += [k for p in range(n_delta) for k in (keys.state(JOB, 0, p), keys.state_log(JOB, 0, p),
                                                keys.state_delta(keys.state(JOB, 0, p), "tok"))]
    args: list[Any] = ["g0", 0, n_in, n_out, n_dead, 0, n_delta, "s1:emitted" if n_out else "",
                       0, 0, 0, n_extra, 0, 8, 64]
    for i in range(n_in):
        args += [f"{i + 1}-0", f"u{i}"]
    args += ["u", b"x"] * n_out + [b"d"] * n_dead + ["s0:x", 1] * n_extra
    args += [token, 1] * n_delta
    return r.fcall("rainstorm_commit", len(ks), *ks, *args)


def test_commit_with_100k_made_up_ids_is_refused(r: redis.Redis) -> None:
    pending(r)
    before = snapshot_all(r)
    with pytest.raises(redis.ResponseError, match="n_in is 100000, above the cap of"):
        raw_commit(r, 100_000)
    assert snapshot_all(r) == before
    # the typed wrapper refuses it before sending anything
    fake = [(S0, f"{i + 1}-0", f"u{i}") for i in range(L.inputs + 1)]
    with pytest.raises(CallTooLarge, match="n_in is"):
        lua.commit(r, request(fake))


@pytest.mark.parametrize("over", ["n_out", "n_dead", "n_extra", "n_delta", "bytes"])
def test_every_commit_cap_refuses_before_writing(r: redis.Redis, over: str) -> None:
    inputs = pending(r, 1)
    n = {"n_out": L.outputs + 1, "n_dead": L.dead + 1, "n_extra": L.extra + 1,
         "n_delta": L.deltas + 1}
    before = snapshot_all(r)
    big = b"x" * (L.bytes + 1) if over == "bytes" else b""
    with pytest.raises(redis.ResponseError, match=f"{over if over != 'bytes' else ''}.*cap of"):
        raw_commit(r, 1, payload=big, **({over: n[over]} if over in n else {}))
    assert snapshot_all(r) == before
    kw: dict[str, Any] = {
        "n_out": {"outputs": [(S1, f"o{j}", b"p") for j in range(n["n_out"])],
                  "emit_field": "s1:emitted"},
        "n_dead": {"dead": [b"d"] * n["n_dead"]},
        "n_extra": {"extra": {f"s0:x{j}": 1 for j in range(n["n_extra"])}},
        "n_delta": {"deltas": [lua.Delta(keys.state(JOB, 0, p), keys.state_log(JOB, 0, p),
                                         b"\x80", p) for p in range(n["n_delta"])]},
        "bytes": {"deltas": [lua.Delta(BASE, LOG, big, 0)]},
    }[over]
    with pytest.raises(CallTooLarge) as exc:
        lua.commit(r, request(inputs, **kw))
    assert exc.value.what == over and exc.value.size > exc.value.cap
    assert snapshot_all(r) == before
    assert lua.commit(r, request(inputs)).status is lua.CommitStatus.OK  # the batch itself is fine


def test_load_and_compact_caps(r: redis.Redis) -> None:
    r.hset(keys.meta(JOB), "state", "running")
    before = snapshot_all(r)
    n = L.load + 1
    ks = [keys.counters(JOB), keys.cursor(JOB), keys.meta(JOB)] + [S0] * n
    with pytest.raises(redis.ResponseError, match="n is .* above the cap"):
        r.fcall("rainstorm_load", len(ks), *ks, "", "done", 0, n, n, *(["u", b"x"] * n))
    with pytest.raises(CallTooLarge):
        lua.load(r, counters=keys.counters(JOB), cursor=keys.cursor(JOB), meta=keys.meta(JOB),
                 expected_pos="", new_pos="done", max_backlog=0,
                 entries=[(S0, f"u{i}", b"x") for i in range(n)])
    ids = [f"{i + 1}-0" for i in range(L.compact_ids + 1)]
    new = keys.state_blob(BASE, "tok")
    ks = [BASE, LOG, keys.meta(JOB), keys.counters(JOB), keys.output(JOB), keys.dlq(JOB), new,
          new]
    # ARGV: version token bytes stage n_out emit_field n_bad, then the rest
    with pytest.raises(redis.ResponseError, match="number of ids is .* above the cap"):
        r.fcall("rainstorm_compact", len(ks), *ks, 0, "tok", 4, 0, 0, "", 0, *ids)
    n_out = L.outputs + 1
    with pytest.raises(redis.ResponseError, match="n_out is .* above the cap"):
        r.fcall("rainstorm_compact", len(ks), *ks, 0, "tok", 4, 0, n_out, "s0:output_entries", 0,
                *(["u", b"x"] * n_out))
    with pytest.raises(redis.ResponseError, match="wrong number of args"):
        r.fcall("rainstorm_compact", len(ks), *ks, 0, "tok", 4, 0, 2, "s0:output_entries", 0,
                "u", b"x")
    with pytest.raises(redis.ResponseError, match="wrong number of keys"):  # an id, no key
        r.fcall("rainstorm_compact", len(ks), *ks, 0, "tok", 4, 0, 0, "", 0, "1-0")
    with pytest.raises(redis.ResponseError, match="not <base>:b:<token>"):
        r.fcall("rainstorm_compact", len(ks), *ks, 0, "other", 4, 0, 0, "", 0)
    kw: dict[str, Any] = dict(base=BASE, log=LOG, meta=keys.meta(JOB), counters=keys.counters(JOB),
                              out=keys.output(JOB), dlq=keys.dlq(JOB), stage=0, version=0,
                              blob=b"", tokens={i: "t" for i in ids})
    with pytest.raises(CallTooLarge):
        lua.compact(r, lua.CompactRequest(ids=ids, **kw))
    with pytest.raises(CallTooLarge, match="n_out"):
        lua.compact(r, lua.CompactRequest(ids=[], outputs=[("u", b"x")] * n_out,
                                          emit_field="s0:output_entries", **kw))
    assert snapshot_all(r) == before


def test_snapshot_head_folds_at_most_the_cap() -> None:
    snap = lua.Snapshot(3, b"base", [f"{i}-0" for i in range(10)], [b"d"] * 10,
                        [f"t{i}" for i in range(10)], "b")
    head = snap.head(4)
    assert (head.version, head.base, head.log_ids, len(head.deltas), head.tokens,
            head.base_token) == (3, b"base", snap.log_ids[:4], 4, snap.tokens[:4], "b")
    assert len(snap.head().log_ids) == 10  # under the library's cap: all of it


def test_a_long_log_is_read_in_bounded_pages(r: redis.Redis) -> None:
    """Anyone who may XADD can grow a delta log: no read of a snapshot asks
    the server for more than one page (the cap, plus one to see there is
    more; SLOWLOG at threshold 0 records every command with its arguments),
    and the wrapper still gets every delta, in order, with the base it
    belongs to."""
    base, log = keys.state(JOB, 1, 5), keys.state_log(JOB, 1, 5)
    r.hset(base, "v", 7)
    forge_base(r, base, b"folded")
    n = L.compact_ids * 2 + 5
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.set(keys.state_delta(base, f"t{i}"), str(i).encode())
        pipe.xadd(log, {"t": f"t{i}", "n": len(str(i))})
    pipe.execute()
    r.config_set("slowlog-log-slower-than", 0)
    r.config_set("slowlog-max-len", 1000)
    r.slowlog_reset()
    r.config_resetstat()
    try:
        snap = lua.snapshot(r, base=base, log=log)
        reads = [[as_str(a) for a in e["command"].split()] for e in r.slowlog_get(1000)
                 if as_str(e["command"]).upper().startswith("XRANGE")]
        mgets = r.info("commandstats")["cmdstat_mget"]["calls"]
    finally:
        r.config_set("slowlog-log-slower-than", 10000)
    assert mgets == -(-(n + 1) // lua.MGET_CHUNK)  # the deltas and the base, in bounded MGETs
    assert len(reads) >= 3  # the first page, then the rest in pages
    counts = [int(cmd[cmd.index("COUNT") + 1]) for cmd in reads if "COUNT" in cmd]
    assert len(counts) == len(reads) and max(counts) <= L.compact_ids + 1
    assert (snap.version, snap.base) == (7, b"folded")
    assert snap.deltas == [str(i).encode() for i in range(n)]
    assert snap.log_ids == [x[0].decode() for x in r.xrange(log)]
    head = lua.snapshot(r, base=base, log=log, max_deltas=10)
    assert head.deltas == [str(i).encode() for i in range(10)]
    assert head.tokens == [f"t{i}" for i in range(10)] and head.base_token


def test_bad_integers_are_refused_before_writing(r: redis.Redis) -> None:
    inputs = pending(r, 1)
    before = snapshot_all(r)
    for bad in ["inf", "nan", "1e5", "-1", "1" * 16, "0x10"]:
        with pytest.raises(redis.ResponseError, match="records_in must be"):
            lua.commit(r, request(inputs, records_in=bad))
    with pytest.raises(redis.ResponseError, match="stage must be"):
        lua.commit(r, request(inputs, stage="0:x"))  # type: ignore[arg-type]
    with pytest.raises(redis.ResponseError, match="increment must be an integer"):
        lua.commit(r, request(inputs, extra={"s0:x": "9" * 16}))
    assert snapshot_all(r) == before


@pytest.mark.parametrize("state", ["cancelled", "done", "failed", None])
def test_no_writing_function_writes_into_a_stopped_job(r: redis.Redis, state: str | None
                                                       ) -> None:
    inputs = pending(r, 2)
    base, log = BASE, LOG
    r.hset(base, "v", 1)
    forge_base(r, base, b"the result")
    append_delta(r, base, log, b"delta")
    snap = lua.snapshot(r, base=base, log=log)
    r.xadd(keys.dlq(JOB), {"stage": 0, "kind": "entry", "d": b"x"})
    dead_id = r.xrange(keys.dlq(JOB))[0][0].decode()
    if state is None:
        r.delete(keys.meta(JOB))
    else:
        r.hset(keys.meta(JOB), "state", state)
    before = snapshot_all(r)
    want = "gone" if state is None else "stopped"

    res = lua.commit(r, request(inputs, deltas=[lua.Delta(base, log, b"late", 0)],
                                outputs=[(S1, "o", b"p")], emit_field="s1:emitted"))
    assert res.status == want and res.state == (state or "")
    assert lua.compact(r, lua.CompactRequest(
        base=base, log=log, meta=keys.meta(JOB), counters=keys.counters(JOB),
        out=keys.output(JOB), dlq=keys.dlq(JOB), stage=0, version=1, blob=b"1000000000",
        ids=snap.log_ids, tokens=snap.token_by_id(), base_token=snap.base_token,
        outputs=[("w", b"closed")], emit_field="s0:output_entries")) == want
    assert lua.deadletter(r, lua.DeadletterRequest(
        lua.JobKeys.of(JOB), stream=S0, group=keys.group(0), stage=0, entry_id=inputs[0][1],
        uid=inputs[0][2], error="e", deliveries=1)) == want
    assert lua.requeue(r, lua.RequeueRequest(
        lua.JobKeys.of(JOB), stream=S0, dead_id=dead_id, stage=0, kind="entry", uid="rq",
        payload=b"x")) == want
    loaded = lua.load(r, counters=keys.counters(JOB), cursor=keys.cursor(JOB),
                      meta=keys.meta(JOB), expected_pos="", new_pos="done", max_backlog=0,
                      entries=[(S0, "9:0", b"more")])
    assert loaded.status == want
    assert snapshot_all(r) == before
    assert r.xpending(S0, keys.group(0))["pending"] == 2  # left as they were


def fake_library(version: str, commit_reply: str = "ok") -> str:
    return (f"#!lua name=rainstorm\n"
            f"redis.register_function{{function_name='rainstorm_version', "
            f"callback=function() return '{version}' end, flags={{'no-writes'}}}}\n"
            f"redis.register_function('rainstorm_commit', "
            f"function() return {{'{commit_reply}'}} end)\n")


def test_unknown_status_is_a_loud_error(r: redis.Redis) -> None:
    inputs = pending(r, 1)
    r.function_load(fake_library(lua.LIB_VERSION, "busy"), replace=True)
    with pytest.raises(ProtocolError, match="rainstorm_commit answered the unknown status 'busy'"):
        lua.commit(r, request(inputs))


def fresh(server: EmbeddedRedis) -> redis.Redis:
    return redis.Redis.from_url(server.url)


def test_a_client_checks_the_library_version_once(r: redis.Redis, server: EmbeddedRedis
                                                  ) -> None:
    inputs = pending(r, 1)
    r.function_load(fake_library("0"), replace=True)
    other = fresh(server)
    with pytest.raises(ProtocolError) as exc:
        lua.commit(other, request(inputs))
    msg = str(exc.value)
    assert "\n" not in msg and "version 0" in msg and f"version {lua.LIB_VERSION}" in msg
    assert r.xpending(S0, keys.group(0))["pending"] == 1  # nothing was called
    # a client that checked before keeps its answer (one check per client)
    assert lua.loaded_version(r) == "0"
    other.close()


def test_load_library_does_not_replace_another_version_under_running_jobs(
        r: redis.Redis, server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FORCE_ENV, raising=False)
    r.function_load(fake_library("0"), replace=True)
    r.sadd(keys.JOBS, JOB)
    r.hset(keys.meta(JOB), "state", "running")
    with pytest.raises(ProtocolError, match=rf"version 0, this rainstorm needs version "
                       rf"{lua.LIB_VERSION}, and 1 job\(s\) still run on it \({JOB}\)"):
        lua.load_library(fresh(server))
    assert lua.loaded_version(r) == "0"
    monkeypatch.setenv(FORCE_ENV, "1")
    lua.load_library(fresh(server))
    assert lua.loaded_version(r) == lua.LIB_VERSION
    monkeypatch.delenv(FORCE_ENV)
    r.function_load(fake_library("0"), replace=True)
    r.hset(keys.meta(JOB), "state", "done")  # no job runs: replaced
    lua.load_library(fresh(server))
    assert lua.loaded_version(r) == lua.LIB_VERSION


def test_a_missing_library_is_loaded_again(r: redis.Redis, server: EmbeddedRedis) -> None:
    """Redis restarted without its data: the first call (and a later one)
    loads the library again, whatever the client checked before."""
    inputs = pending(r, 2)
    r.function_flush()
    client = fresh(server)
    calls: list[Callable[[], lua.CommitResult]] = [
        lambda: lua.commit(client, request(inputs[:1])),
        lambda: lua.commit(client, request(inputs[1:])),
    ]
    assert calls[0]().status is lua.CommitStatus.OK
    r.function_flush()
    assert calls[1]().status is lua.CommitStatus.OK
    client.close()
