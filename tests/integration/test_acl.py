"""The `worker` ACL user of docker-compose.yml, against a real server started
with the compose file's own `redis` command line (so these tests fail when
the file's rules change): a worker logged in as `worker` runs a job to the
right result; everything outside its job, and every admin or code-loading
command, is refused with NOPERM."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from rainstorm import keys, lua
from rainstorm.coordinator.driver import drive
from rainstorm.coordinator.run import prepare
from rainstorm.coordinator.submit import submit
from rainstorm.spec import parse_spec
from tests.composefile import TEST_ENV, LocalRedis, command_args, load_compose, local_env
from tests.conftest import reference_wordcount, write_corpus
from tests.helpers import ROOT, counters

COMPOSE = load_compose(TEST_ENV)
REDIS = COMPOSE["services"]["redis"]


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    server = LocalRedis(REDIS, tmp_path_factory.mktemp("acl-redis"))
    try:
        yield server.start()
    finally:
        server.stop()


def _service_url(service: str, srv: LocalRedis) -> str:
    return local_env(COMPOSE["services"][service], srv.port)["RAINSTORM_REDIS"]


@pytest.fixture
def admin(srv: LocalRedis) -> Iterator[redis.Redis]:
    """The coordinator's connection (the compose file's default-user URL)."""
    client = redis.Redis.from_url(_service_url("coordinator", srv))
    client.flushall()
    lua.load_library(client)
    yield client
    client.close()


@pytest.fixture
def worker_url(srv: LocalRedis) -> str:
    return _service_url("worker", srv)


@pytest.fixture
def w(worker_url: str, admin: redis.Redis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(worker_url)
    yield client
    client.close()


def test_compose_defines_the_worker_user() -> None:
    rules = command_args(REDIS["command"], "--user")
    assert rules[0] == "worker" and f">{TEST_ENV['RAINSTORM_WORKER_PASSWORD']}" in rules
    assert "~rs:*" in rules and "-@all" in rules
    assert rules.index("-@dangerous") > max(rules.index("+@read"), rules.index("+@connection"))


def test_worker_user_runs_a_job(tmp_path: Path, admin: redis.Redis, worker_url: str,
                                w: redis.Redis) -> None:
    """Submitted as `default`, computed by a `rainstorm worker` logged in as
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
    log = tmp_path / "worker.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rainstorm", "worker", "--job", job.id, "--burst"],
            cwd=ROOT, stdin=subprocess.DEVNULL, stderr=err,
            env=dict(os.environ, RAINSTORM_REDIS=worker_url),
        )
        try:
            result = drive(admin, job, timeout_s=25)
            proc.wait(20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    text = log.read_text(errors="replace")
    assert "NOPERM" not in text, text
    assert proc.returncode == 0, text
    assert result == reference_wordcount(paths)
    c = counters(admin, job.id)
    assert c["s0:committed"] == c["s0:emitted"] > 10
    assert c["s1:committed"] == c["s1:emitted"] > 0


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
    (the delta-log compaction of rainstorm.state.maybe_compact included)."""
    assert w.ping()
    assert dict(w.info("server"))["run_id"]
    assert w.execute_command("WAIT", 0, 0) == 0  # type: ignore[no-untyped-call]
    assert w.fcall_ro("rainstorm_version", 0)
    base, log = keys.state("acl", 0), keys.state_log("acl", 0)
    ids = [w.xadd(log, {"d": b"delta"}).decode() for _ in range(3)]
    lease = keys.compact_lease("acl", 0)
    assert w.set(lease, "worker", nx=True, px=1000)
    snap = lua.snapshot(w, base=base, log=log)
    assert snap.log_ids == ids
    assert lua.compact(w, base=base, log=log, version=snap.version, blob=b"folded", ids=ids)
    assert w.delete(lease) == 1
    assert w.xlen(log) == 0 and admin.hget(base, "d") == b"folded"
    w.hset(keys.WORKERS, "w1", "{}")
    w.hincrby(keys.counters("acl"), "s0:lat:count", 1)
    w.hdel(keys.WORKERS, "w1")
    assert w.smembers(keys.JOBS) == set() and w.hgetall(keys.counters("acl"))
    # an empty reply, not NOPERM: XREADGROUP on a missing group is a plain error
    with pytest.raises(redis.ResponseError, match="NOGROUP"):
        w.xreadgroup("g0", "c", {keys.stage_stream("acl", 0, 0): ">"}, count=1)


def test_wrong_password_is_one_line(srv: LocalRedis) -> None:
    bad = srv.url("worker", "wrong")
    res = subprocess.run([sys.executable, "-m", "rainstorm", "workers", "--redis", bad],
                         cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "credentials" in lines[0] or "WRONGPASS" in lines[0] or "password" in lines[0]
    # and the healthcheck, with a wrong password, fails
    argv = srv.healthcheck_argv()
    argv[argv.index("--pass") + 1] = "wrong"
    assert subprocess.run(argv, capture_output=True, timeout=10).returncode != 0
