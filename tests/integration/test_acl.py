"""The `worker` ACL user of docker-compose.yml, against a real server started
with the compose file's own `redis` command line (so these tests fail when
the file's rules change): a worker logged in as `worker` runs a job to the
right result; everything outside its job, and every admin or code-loading
command, is refused with NOPERM."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from click.testing import CliRunner

from rainstorm import keys, lua, state
from rainstorm.cli import main
from rainstorm.job import Job
from rainstorm.lease import Lease, holder_id
from rainstorm.local.run import prepare
from rainstorm.operators import aggregates
from rainstorm.protocol.counters import StageCounter
from rainstorm.spec import parse_spec
from rainstorm.worker.loop import Worker, WorkerOptions
from tests.compose_redis import service_url
from tests.composefile import TEST_ENV, LocalRedis, command_args, load_compose
from tests.conftest import reference_wordcount, write_corpus
from tests.helpers import (
    append_delta,
    base_blob,
    counters,
    drive,
    forge_base,
    state_keys,
    submit,
)

COMPOSE = load_compose(TEST_ENV)
REDIS = COMPOSE["services"]["redis"]


@pytest.fixture
def worker_url(srv: LocalRedis) -> str:
    return service_url("worker", srv)


@pytest.fixture
def w(worker_url: str, admin: redis.Redis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(worker_url)
    yield client
    client.close()


# exactly what workers, the dashboard, the autoscaler and the FUNCTION
# library send (no whole category but @connection, whose @dangerous part is
# removed again)
WORKER_COMMANDS = {
    "get", "mget", "type", "pttl", "hget", "hmget", "hgetall", "hlen", "hstrlen", "smembers",
    "xlen",
    "xrange", "xrevrange", "xpending", "fcall", "fcall_ro", "multi", "exec", "discard",
    "xreadgroup", "xautoclaim",
    "xclaim", "xack", "xadd", "xdel", "hset", "hdel", "hincrby", "set", "del", "wait",
    "waitaof", "info",
}


# the only keys the worker user may write (it reads rs:*): never a job's spec,
# signature, cursor, seal, sink position or stored result, nor the job list
WORKER_WRITES = ["~rs:workers", "~rs:worker:*", "~rs:{*}:meta", "~rs:{*}:s[0-9]*",
                 "~rs:{*}:counters", "~rs:{*}:failures", "~rs:{*}:refusals", "~rs:{*}:dlq",
                 "~rs:{*}:state:*", "~rs:{*}:output", "~rs:{*}:late", "~rs:{*}:compact:*"]


def test_compose_defines_the_worker_user() -> None:
    rules = command_args(REDIS["command"], "--user")
    assert rules[0] == "worker" and f">{TEST_ENV['RAINSTORM_WORKER_PASSWORD']}" in rules
    assert "%R~rs:*" in rules and "~rs:*" not in rules and "-@all" in rules
    assert [x for x in rules if x.startswith("~")] == WORKER_WRITES
    categories = [x for x in rules if x[0] in "+-" and "@" in x]
    assert categories == ["-@all", "+@connection", "-@dangerous"], categories
    assert {x[1:] for x in rules if x.startswith("+") and "@" not in x} == WORKER_COMMANDS
    assert rules.index("-@dangerous") == len(rules) - 2 and rules[-1] == "+info"
    assert command_args(REDIS["command"], "--maxmemory") == ["1gb"]
    assert command_args(REDIS["command"], "--maxmemory-policy") == ["noeviction"]


def test_the_server_has_a_memory_bound(admin: redis.Redis) -> None:
    cfg = admin.config_get("maxmemory*")
    assert int(cfg["maxmemory"]) == 1 << 30 and cfg["maxmemory-policy"] == "noeviction"


def test_worker_user_runs_a_job(tmp_path: Path, admin: redis.Redis, worker_url: str,
                                w: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    """Submitted as `default`, computed by a worker (in-process) logged in as
    `worker`: two stages (a repartition), so both stages' streams, the
    aggregate's delta log and the heartbeats go through the restricted user."""
    assert urlsplit(worker_url).username == "worker"
    paths = write_corpus(tmp_path / "in", n_files=2, kb=40)
    spec = parse_spec({
        "name": "aclwc", "source": {"type": "text", "batch_bytes": 4096},
        "pipeline": [{"op": "flat_map", "fn": "split_words"},
                     {"op": "repartition", "partitions": 2}, {"op": "count"}],
        "settings": {"batch_entries": 4, "compact_every": 2},
    })
    job, files = prepare(spec, [str(p) for p in paths], "acl-wc")
    submit(admin, job, files)
    crew = Worker(w, WorkerOptions(job=job.id, burst=True))  # in-process, as `worker`

    def turns() -> None:
        for _ in range(100):
            report = crew.run_once()
            if report.idle:
                return

    with caplog.at_level(logging.WARNING):
        try:
            result = drive(admin, job, timeout_s=25, on_step=turns)
        finally:
            crew.close()
    assert "NOPERM" not in caplog.text, caplog.text
    assert result == reference_wordcount(paths)
    c = counters(admin, job.id)
    assert c.stage(0).committed == c.stage(0).emitted > 10
    assert c.stage(1).committed == c.stage(1).emitted > 0


def _refused(call: Callable[[], Any]) -> str:
    with pytest.raises(redis.exceptions.NoPermissionError) as exc:
        call()
    return str(exc.value)


DENIED_COMMANDS: list[tuple[str, ...]] = [
    ("EVAL", "return 1", "0"),
    ("EVAL_RO", "return 1", "0"),
    ("EVALSHA", "e0e1f9fabfc9d4800c877a703b823ac0578ff8db", "0"),
    ("SCRIPT", "LOAD", "return 1"),
    ("SCRIPT", "FLUSH"),
    ("FUNCTION", "LOAD", "REPLACE", "#!lua name=rainstorm\nredis.register_function('x', "
     "function() return 1 end)"),
    ("FUNCTION", "DELETE", "rainstorm"),
    ("FUNCTION", "FLUSH"),
    ("FUNCTION", "RESTORE", "x"),
    ("CONFIG", "SET", "maxmemory-policy", "allkeys-lru"),
    ("CONFIG", "GET", "requirepass"),
    ("CONFIG", "REWRITE"),
    ("FLUSHALL",),
    ("FLUSHDB",),
    ("KEYS", "*"),
    ("SHUTDOWN", "NOSAVE"),
    ("DEBUG", "SLEEP", "0"),
    ("ACL", "SETUSER", "worker", "+@all"),
    ("ACL", "LIST"),
    ("ACL", "GETUSER", "default"),
    ("ACL", "DELUSER", "default"),
    ("MODULE", "LIST"),
    ("MONITOR",),
    ("CLIENT", "KILL", "ID", "1"),
    ("CLIENT", "LIST"),
    ("REPLICAOF", "127.0.0.1", "1"),
    ("BGSAVE",),
    ("BGREWRITEAOF",),
    ("SAVE",),
    ("SWAPDB", "0", "1"),
    ("SLOWLOG", "GET"),
    ("MIGRATE", "127.0.0.1", "1", "rs:x", "0", "1000"),
    ("SORT", "rs:x"),
    ("RESTORE", "rs:x", "0", "x"),
    ("RENAME", "rs:x", "rs:y"),
    ("EXPIRE", "rs:x", "1"),
    ("XGROUP", "DESTROY", "rs:x", "g0"),
    ("XTRIM", "rs:x", "MAXLEN", "0"),
    ("PUBLISH", "rs:x", "hello"),
    # slow or wide reads: only the plain reads rainstorm uses are granted
    ("LCS", "rs:a", "rs:b"),
    ("SCAN", "0"),
    ("SORT_RO", "rs:x"),
    ("DUMP", "rs:x"),
    ("RANDOMKEY",),
    ("DBSIZE",),
    ("OBJECT", "ENCODING", "rs:x"),
    ("XINFO", "STREAM", "rs:x", "FULL"),
    ("SUNION", "rs:a", "rs:b"),
    ("ZRANGE", "rs:x", "0", "-1"),
    ("LRANGE", "rs:x", "0", "-1"),
    ("GETRANGE", "rs:x", "0", "-1"),
    ("HRANDFIELD", "rs:x", "-100000"),
    ("SRANDMEMBER", "rs:x", "-100000"),
    ("BITCOUNT", "rs:x"),
    ("PFCOUNT", "rs:x"),
    ("GEOSEARCH", "rs:x", "FROMLONLAT", "0", "0", "BYRADIUS", "1", "km"),
    ("CLIENT", "PAUSE", "1000"),
    ("CLIENT", "NO-EVICT", "on"),
    ("FUNCTION", "LIST"),
    ("FUNCTION", "DUMP"),
    ("LATENCY", "LATEST"),
    ("MEMORY", "USAGE", "rs:x"),
]


@pytest.mark.parametrize("command", DENIED_COMMANDS, ids=lambda c: " ".join(c[:2])[:30])
def test_worker_user_is_refused(command: tuple[str, ...], w: redis.Redis,
                                admin: redis.Redis) -> None:
    verdict = admin.execute_command("ACL", "DRYRUN", "worker", *command)  # type: ignore[no-untyped-call]
    assert b"no permissions" in verdict, verdict
    if command[0] == "DEBUG":  # refused before the ACL: enable-debug-command is off
        return
    msg = _refused(lambda: w.execute_command(*command))  # type: ignore[no-untyped-call]
    assert "no permissions" in msg, msg


def test_worker_user_keys_outside_rs_refused(w: redis.Redis, admin: redis.Redis) -> None:
    admin.set("other", "x")
    _refused(lambda: w.get("other"))
    _refused(lambda: w.set("other", "y"))
    _refused(lambda: w.hset("other:h", "a", 1))
    _refused(lambda: w.xadd("stream", {"a": 1}))
    _refused(lambda: w.delete("other"))
    # a FUNCTION runs with its caller's permissions: no way round through FCALL
    _refused(lambda: lua.snapshot(w, base="other", log="other:log"))
    assert admin.get("other") == b"x"


def test_worker_user_may_do_what_workers_do(w: redis.Redis, admin: redis.Redis) -> None:
    """What workers and the dashboard send directly besides the commit FCALL
    (a state partition's fold, as rainstorm.state.fold_part sends it, included)."""
    assert w.ping()
    assert dict(w.info("server"))["run_id"]
    assert w.execute_command("WAIT", 0, 0) == 0  # type: ignore[no-untyped-call]
    assert w.fcall_ro("rainstorm_version", 0) == lua.LIB_VERSION.encode()
    admin.hset(keys.meta("acl"), "state", "running")
    base, log = keys.state("acl", 0, 3), keys.state_log("acl", 0, 3)
    ids = [append_delta(w, base, log, b"delta") for _ in range(3)]
    w.hincrby(base, "lb", 15)
    lease = keys.compact_lease("acl", 0, 3)
    assert w.set(lease, "worker", nx=True, px=1000) and w.pttl(lease) > 0
    snap = lua.snapshot(w, base=base, log=log)
    assert snap.log_ids == ids
    field = keys.counter_field(0, StageCounter.OUTPUT_ENTRIES)
    ok = lua.compact(w, lua.CompactRequest(
        base=base, log=log, meta=keys.meta("acl"), counters=keys.counters("acl"),
        out=keys.output("acl"), dlq=keys.dlq("acl"), stage=0, version=snap.version,
        blob=b"folded", ids=ids, tokens=snap.token_by_id(), base_token=snap.base_token,
        outputs=[("w.0", b"a closed window")], emit_field=field))
    assert ok is lua.CompactStatus.OK
    assert w.delete(lease) == 1
    assert w.xlen(log) == 0 and base_blob(admin, base) == b"folded"
    assert admin.hget(base, "lb") == b"0"
    assert admin.xlen(keys.output("acl")) == 1 and admin.hget(keys.counters("acl"), field) == b"1"
    w.hset(keys.WORKERS, "w1", "{}")
    assert w.hlen(keys.WORKERS) == 1 and w.hmget(keys.WORKERS, ["w1"]) == [b"{}"]
    w.hincrby(keys.counters("acl"), "s0:lat:count", 1)
    w.hdel(keys.WORKERS, "w1")
    assert w.smembers(keys.JOBS) == set() and w.hgetall(keys.counters("acl"))
    assert w.mget([keys.spec("acl"), keys.spec_signature("acl")]) == [None, None]
    assert w.type(keys.meta("acl")) == b"hash"
    # an empty reply, not NOPERM: XREADGROUP on a missing group is a plain error
    stream = keys.stage_stream("acl", 0, 0)
    with pytest.raises(redis.ResponseError, match="NOGROUP"):
        w.xreadgroup("g0", "c", {stream: ">"}, count=1)
    # the keep-alive of a long batch: XCLAIM ... JUSTID of its own entries
    admin.xgroup_create(stream, "g0", id="0", mkstream=True)
    entry = admin.xadd(stream, {"u": "0:0", "d": b"x"})
    w.xreadgroup("g0", "c", {stream: ">"}, count=1)
    assert w.xclaim(stream, "g0", "c", 0, [entry], justid=True) == [entry]
    assert w.xpending(stream, "g0")["pending"] == 1 and w.xrevrange(stream, count=1)


def _finished_job(admin: redis.Redis) -> tuple[str, str, bytes]:
    """A job that finished with its aggregate folded into the base (version 1)
    and one delta left in the log; returns (base, log, the base's blob)."""
    job = "done-job"
    base, log = keys.state(job, 0, 0), keys.state_log(job, 0, 0)
    blob = aggregates.encode({"real": 3})
    admin.hset(base, "v", 1)
    forge_base(admin, base, blob)
    append_delta(admin, base, log, aggregates.encode({"real": 1}))
    admin.hset(keys.meta(job), "state", "done")
    return base, log, blob


def test_attack_compact_cannot_rewrite_a_finished_result(w: redis.Redis, admin: redis.Redis
                                                         ) -> None:
    base, log, blob = _finished_job(admin)
    rows = admin.xrange(log)
    ids = [i.decode() for i, _ in rows]
    dkeys = [keys.state_delta(base, f[b"t"].decode()) for _, f in rows]
    old = keys.state_blob(base, admin.hget(base, "t").decode())
    kept = {k: admin.dump(k) for k in [base, log, old, *dkeys]}
    forged = aggregates.encode({"made-up": 10**9})
    out, counters_key = keys.output("done-job"), keys.counters("done-job")
    # also trying to slip a forged output entry into the finished job's output
    dlq = keys.dlq("done-job")
    new = keys.state_blob(base, "forged")
    args = [1, "forged", len(forged), 0, 1, "s0:output_entries", 0, "u", b"forged", *ids]
    call = ["rainstorm_compact", 8 + len(dkeys), base, log, keys.meta("done-job"), counters_key,
            out, dlq, new, old, *dkeys]
    pipe = w.pipeline(transaction=True)  # as a worker sends it: MULTI, FCALL, SET ... XX
    pipe.fcall(*call, *args)
    pipe.set(new, forged, xx=True)
    assert pipe.execute() == [[b"stopped", b"done"], None]
    assert {k: admin.dump(k) for k in kept} == kept and not admin.exists(new)
    assert admin.xlen(out) == 0 and admin.hgetall(counters_key) == {}
    # nor with the meta key of a job that does not exist
    call[4] = keys.meta("nojob")
    assert w.fcall(*call, *args) == [b"gone"]
    assert {k: admin.dump(k) for k in kept} == kept and admin.xlen(out) == 0
    assert base_blob(admin, base) == blob


def test_attack_commit_with_100k_made_up_ids_is_refused(w: redis.Redis, admin: redis.Redis
                                                        ) -> None:
    job = "victim"
    admin.hset(keys.meta(job), "state", "running")
    n = 100_000
    ks = [keys.counters(job), keys.dlq(job), keys.meta(job)]
    ks += [keys.stage_stream(job, 0, 0)] * n
    args: list[Any] = ["g0", 0, n, 0, 0, 0, 0, "", 0, 0, 0, 0, 0, 256, 65536]
    for i in range(n):
        args += [f"{i + 1}-0", f"u{i}"]
    with pytest.raises(redis.ResponseError, match="n_in is 100000, above the cap"):
        w.fcall("rainstorm_commit", len(ks), *ks, *args)
    assert admin.hgetall(keys.counters(job)) == {}


def test_attack_lcs_and_config_are_refused(w: redis.Redis, admin: redis.Redis) -> None:
    admin.set("rs:a", "ab" * 5000)
    admin.set("rs:b", "ba" * 5000)
    assert "no permissions" in _refused(
        lambda: w.execute_command("LCS", "rs:a", "rs:b"))  # type: ignore[no-untyped-call]
    assert "no permissions" in _refused(lambda: w.config_set("maxmemory", "0"))
    assert "no permissions" in _refused(lambda: w.config_get("maxmemory"))
    assert int(admin.config_get("maxmemory")["maxmemory"]) == 1 << 30


def test_wrong_password_is_one_line(srv: LocalRedis) -> None:
    bad = srv.url("worker", "wrong")
    res = CliRunner().invoke(main, ["workers", "--redis", bad])
    assert res.exit_code != 0
    assert "Traceback" not in res.stderr
    assert isinstance(res.exception, SystemExit)  # a one-line ClickException, no crash
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "credentials" in lines[0] or "WRONGPASS" in lines[0] or "password" in lines[0]
    # and the healthcheck, with a wrong password, fails
    argv = srv.healthcheck_argv()
    argv[argv.index("--pass") + 1] = "wrong"
    assert subprocess.run(argv, capture_output=True, timeout=10).returncode != 0


def test_worker_user_folds_a_partition_and_dead_letters_a_bad_delta(
        w: redis.Redis, admin: redis.Redis) -> None:
    """Workers fold due state partitions (rainstorm.state.fold_due): all of
    it, a bad delta's dead-lettering included, goes through the `worker` user."""
    spec = parse_spec({"name": "aclfold", "pipeline": [{"op": "flat_map", "fn": "split_words"},
                                                       {"op": "count"}],
                       "settings": {"state_partitions": 4}})
    job = Job.build("aclfold", spec)
    admin.hset(keys.meta(job.id), "state", "running")
    part = state.Part(job.id, 0, 2)
    good = [aggregates.encode({"a": 1, "b": 2}), aggregates.encode({"a": 5})]
    bad = b"\xc1 not a delta"
    for blob in (good[0], bad, good[1]):
        append_delta(w, part.base, part.log, blob)
        w.hincrby(part.base, "lb", len(blob))
    agg = state.agg_of(job, ("*",))
    lease = Lease(w, part.lease, holder_id("worker"))
    assert lease.acquire()
    try:
        status = state.fold_part(w, job, part, agg, lease)
    finally:
        lease.release()
    assert status is lua.CompactStatus.OK
    assert aggregates.decode(base_blob(admin, part.base)) == {"a": 6, "b": 2}
    assert admin.xlen(part.log) == 0 and admin.xlen(keys.dlq(job.id)) == 1
    (_, letter), = admin.xrange(keys.dlq(job.id))
    assert letter[b"kind"] == b"delta" and letter[b"d"] == bad  # the bad delta's own bytes
    assert state_keys(admin, job.id) == {part.base, part.log, keys.state_blob(
        part.base, admin.hget(part.base, "t").decode())}  # no delta key left
    assert admin.hget(keys.counters(job.id), "s0:dead_deltas") == b"1"
    assert admin.hget(part.base, "lb") == b"0"


def test_worker_user_commits_into_a_partition_whose_log_outgrew_its_base(
        w: redis.Redis, admin: redis.Redis) -> None:
    """Once a partition's unfolded bytes reach the fold threshold, the commit
    compares them with its base's size: that too runs as the `worker` user,
    and the commit is whole (inputs acked, every delta logged) or refused."""
    job = "aclcommit"
    admin.hset(keys.meta(job), "state", "running")
    stream = keys.stage_stream(job, 0, 0)
    admin.xgroup_create(stream, "g0", id="0", mkstream=True)
    admin.xadd(stream, {"u": "0:0", "d": b"a b\n"})
    (rid, _), = w.xreadgroup("g0", "w1", {stream: ">"}, count=1)[0][1]
    parts = [lua.Delta(keys.state(job, 0, p), keys.state_log(job, 0, p),
                       aggregates.encode({k: 1}), p) for p, k in ((0, "a"), (1, "b"))]
    forge_base(admin, parts[0].base, b"x" * 1000)  # a folded base bigger than the delta
    req = lua.CommitRequest(counters=keys.counters(job), dlq=keys.dlq(job), meta=keys.meta(job),
                            group="g0", stage=0, inputs=[(stream, rid.decode(), "0:0")],
                            records_in=1, deltas=parts, fold=lua.FoldRule(entries=64, bytes=1))
    try:
        res, err = lua.commit(w, req), ""
    except redis.ResponseError as exc:
        res, err = None, str(exc)
    # whatever happened, it happened whole or not at all
    logged = [admin.xlen(d.log) for d in parts]
    acked = admin.xlen(stream) == 0
    assert (logged, acked) in (([0, 0], False), ([1, 1], True)), (logged, acked, err)
    assert res is not None and res.status is lua.CommitStatus.OK, err
    assert [d.partition for d in res.due] == [1]  # b's base is empty; a's is 1000 bytes
