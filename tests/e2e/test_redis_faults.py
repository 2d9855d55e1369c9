"""Redis itself dies: SIGKILL + restart from AOF or RDB, an empty restart, a
primary killed under Sentinel.  Results stay exact or the job fails loudly."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis

from rainstorm import keys
from rainstorm.coordinator.result import load_stored
from rainstorm.errors import JobFailed
from rainstorm.jobstore import load_job
from rainstorm.local.run import LocalRun
from tests.conftest import reference_wordcount, write_corpus
from tests.helpers import start_worker, wordcount_spec

pytestmark = pytest.mark.chaos  # every test here kills Redis or workers


def slow_spec(**settings: object):  # type: ignore[no-untyped-def]
    base: dict[str, object] = {"batch_bytes": 2048, "claim_idle_ms": 1000, "batch_entries": 2}
    return wordcount_spec("tests.ops:slow_split", **{**base, **settings})


@pytest.fixture
def slow_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAINSTORM_TEST_SLOW_MS", "5")


@pytest.mark.parametrize("persistence", ["aof-everysec", "rdb"])
def test_redis_sigkilled_and_restarted_repeatedly(
    tmp_path: Path, persistence: str, slow_env: None
) -> None:
    paths = write_corpus(tmp_path, n_files=3, kb=30)
    kills = {"n": 0, "last": time.monotonic()}
    with LocalRun(persistence=persistence, rdb_every_s=1) as env:
        assert env.server is not None
        server = env.server

        def chaos(_status: object) -> None:
            if kills["n"] < 3 and time.monotonic() - kills["last"] > 0.5:
                server.kill()  # the run's supervisor restarts it from its AOF/RDB
                kills["n"] += 1
                kills["last"] = time.monotonic()

        rep = env.run(slow_spec(), inputs=[str(p) for p in paths], workers=2,
                      on_progress=chaos, timeout_s=120)
        assert kills["n"] == 3 and server.restarts == 3
        assert rep.result == reference_wordcount(paths)
        # the finished job survives one more crash: its result is on disk
        server.kill()
        server.start()
        r = redis.Redis.from_url(server.url)
        assert r.hget(keys.meta(rep.job_id), "state") == b"done"
        assert load_stored(r, load_job(r, rep.job_id), allow=("*",)) == reference_wordcount(paths)
        r.close()


def test_redis_restarted_empty_fails_loudly(tmp_path: Path, slow_env: None) -> None:
    paths = write_corpus(tmp_path, n_files=2, kb=30)
    with LocalRun(persistence="none") as env:
        assert env.server is not None
        server = env.server
        killed = []

        def chaos(status: object) -> None:
            if not killed:
                server.kill()
                killed.append(1)

        with pytest.raises(JobFailed, match="keys are gone from Redis"):
            env.run(slow_spec(), inputs=[str(p) for p in paths], workers=2, on_progress=chaos,
                    timeout_s=60)
        assert killed and server.restarts == 1


@pytest.mark.slow
def test_primary_killed_sentinel_failover(tmp_path: Path, slow_env: None) -> None:
    paths = write_corpus(tmp_path, n_files=3, kb=30)
    with LocalRun(replicas=2, persistence="none") as env:
        assert env.replicas is not None
        rs = env.replicas
        first = rs.primary_index()
        killed = []

        def chaos(status: object) -> None:
            committed = sum(s.committed for s in status.stages)  # type: ignore[attr-defined]
            if not killed and committed >= 5:
                rs.nodes[first].kill()
                killed.append(committed)

        rep = env.run(slow_spec(), inputs=[str(p) for p in paths], workers=2,
                      on_progress=chaos, timeout_s=120)
        assert killed, "the primary was never killed"
        assert rs.primary_index() != first  # Sentinel promoted a replica
        assert rep.result == reference_wordcount(paths)


def test_wait_replicas_after_commits(tmp_path: Path) -> None:
    paths = write_corpus(tmp_path, n_files=1, kb=20)
    with LocalRun(replicas=1) as env:
        rep = env.run(wordcount_spec(wait_replicas=1, wait_timeout_ms=2000),
                      inputs=[str(p) for p in paths], workers=2, timeout_s=60)
        assert rep.result == reference_wordcount(paths)
        assert rep.status.stages[0].wait_short == 0


def _respawning_chaos(url: str, job: str, every_s: float, kills: list[int],
                      workers: list[subprocess.Popen[bytes]]):  # type: ignore[no-untyped-def]
    rng = random.Random(7)
    last = [time.monotonic()]

    def chaos(_status: object) -> None:
        if time.monotonic() - last[0] < every_s:
            return
        last[0] = time.monotonic()
        alive = [w for w in workers if w.poll() is None]
        victim = rng.choice(alive)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        kills.append(victim.pid)
        workers.append(start_worker(url, job, RAINSTORM_TEST_SLOW_MS="5"))

    return chaos


def test_worker_sigkilled_every_second(tmp_path: Path, url: str, r: redis.Redis) -> None:
    from rainstorm.local.run import prepare
    from tests.helpers import drive, submit

    paths = write_corpus(tmp_path, n_files=3, kb=40)
    job, files = prepare(slow_spec(claim_idle_ms=500), [str(p) for p in paths], "kill-often")
    submit(r, job, files)
    workers = [start_worker(url, job.id, RAINSTORM_TEST_SLOW_MS="5") for _ in range(3)]
    kills: list[int] = []
    try:
        result = drive(r, job, on_progress=_respawning_chaos(url, job.id, 0.7, kills, workers),
                       timeout_s=180)
    finally:
        for w in workers:
            w.kill()
            w.wait(10)
    assert len(kills) >= 3
    assert result == reference_wordcount(paths)
    assert int(r.hget(keys.counters(job.id), "s0:claimed") or 0) > 0


def test_straggler_frozen_in_cycles_is_robbed(tmp_path: Path, url: str, r: redis.Redis) -> None:
    from rainstorm.local.run import prepare
    from tests.helpers import drive, submit

    paths = write_corpus(tmp_path, n_files=3, kb=30)
    job, files = prepare(slow_spec(claim_idle_ms=400), [str(p) for p in paths], "half-speed")
    submit(r, job, files)
    slow, fast = (start_worker(url, job.id, RAINSTORM_TEST_SLOW_MS="2") for _ in range(2))
    cycle = {"stopped": False, "at": time.monotonic(), "cycles": 0}

    # frozen 1.2 s, running 0.4 s: a frozen worker renews nothing, so its
    # entries go idle past claim_idle_ms and are stolen (a live, merely slow
    # worker keeps its entries: its keep-alive thread renews them)
    def holds_entries() -> bool:
        return any(f"-{slow.pid}-" in c["name"].decode() and c["pending"] > 0
                   for stream in job.streams(0) if r.exists(stream)
                   for c in r.xinfo_consumers(stream, keys.group(0)))

    def duty_cycle(_status: object) -> None:
        if time.monotonic() - cycle["at"] < (1.2 if cycle["stopped"] else 0.4):
            return
        if not cycle["stopped"] and not holds_entries():
            return  # freeze it only while it holds entries: those must be stolen
        cycle["at"] = time.monotonic()
        slow.send_signal(signal.SIGCONT if cycle["stopped"] else signal.SIGSTOP)
        cycle["stopped"] = not cycle["stopped"]
        cycle["cycles"] += 1

    try:
        result = drive(r, job, on_progress=duty_cycle, timeout_s=180)
    finally:
        for w in (slow, fast):
            w.send_signal(signal.SIGCONT)
            w.kill()
            w.wait(10)
    assert cycle["cycles"] >= 2  # frozen at least once
    assert result == reference_wordcount(paths)
    assert int(r.hget(keys.counters(job.id), "s0:claimed") or 0) > 0
