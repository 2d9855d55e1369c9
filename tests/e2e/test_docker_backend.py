"""rainstorm's Docker code paths through the real Docker SDK, against a fake
Docker Engine (tests/fake_docker.py: its "containers" are local worker
processes) and the real test Redis: the autoscaler's Docker backend, and
`kill-worker --force` of a worker running in a container."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from rainstorm import keys, monitor
from rainstorm.local.run import prepare
from rainstorm.ops.autoscale.backends import LABEL, DockerBackend
from rainstorm.ops.autoscale.controller import Autoscaler
from rainstorm.ops.autoscale.policy import ScalePolicy
from rainstorm.ops.tasks import list_tasks, throttle
from rainstorm.spec import parse_spec
from tests.conftest import reference_wordcount, write_corpus
from tests.fake_docker import FakeDocker
from tests.helpers import (
    ROOT,
    Driven,
    cli,
    counters,
    stop_all,
    stopped_holding,
    submit,
    wait_for,
    wordcount_spec,
    worker,
)

pytest.importorskip("docker", reason="the Docker SDK is not installed: pip install "
                                      "'rainstorm[docker]' to test the docker backend")

IMAGE = "rainstorm:test"
SIGNING = {"RAINSTORM_SECRET": os.environ["RAINSTORM_SECRET"]}  # containers get only env=


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDocker]:
    with FakeDocker(images=(IMAGE,), networks=("rainstorm",)) as engine:
        monkeypatch.setenv("DOCKER_HOST", engine.url)  # docker.from_env() reaches the fake
        monkeypatch.delenv("RAINSTORM_HOSTNAME", raising=False)  # we are the "host"
        yield engine
        left = [c.name for c in engine.processes_left()]  # (leaving the block kills them)
    assert not left, f"containers still running after the test: {left}"


def test_autoscaler_runs_workers_as_containers(tmp_path: Path, url: str, r: redis.Redis,
                                               fake: FakeDocker) -> None:
    paths = write_corpus(tmp_path / "in", n_files=2, kb=40)
    spec = parse_spec({"name": "dk", "source": {"type": "text", "batch_bytes": 1024,
                                                "max_rate": 50},
                       "pipeline": [{"op": "flat_map", "fn": "tests.ops:slow_split"},
                                    {"op": "count"}],
                       "settings": {"max_backlog": 16, "claim_idle_ms": 2000}})
    job, files = prepare(spec, [str(p) for p in paths], "dk")
    submit(r, job, files)
    backend = DockerBackend(r, url, IMAGE, network="rainstorm",
                            env={**SIGNING, "RAINSTORM_ALLOW_MODULES": "tests",
                                 "RAINSTORM_TEST_SLOW_MS": "4"},
                            volumes=["rs-data:/work/data"])
    scaler = Autoscaler(r, backend, ScalePolicy(1, 3, period_s=0.5, cooldown_s=1,
                                                interval_s=0.25), job_id=job.id)
    stop = threading.Event()
    loop = threading.Thread(target=scaler.run, args=(stop,), daemon=True)
    loop.start()
    most = 0

    def running() -> int:
        nonlocal most
        most = max(most, len(fake.running()))
        return most

    try:
        driven = Driven(r, job, timeout_s=150)
        first = wait_for(lambda: fake.started, 60, "a first container", every_s=0.02)[0]
        beat = wait_for(lambda: [w for w in monitor.workers(r) if w.id == first.name], 60,
                        "the first containerized worker's heartbeat", every_s=0.05)[0]
        assert (beat.container, beat.host) == (first.id[:12], first.id[:12])
        for c in fake.started:  # each container: its worker, pinned, told where Redis is
            assert c.image == IMAGE and c.network == "rainstorm"
            assert c.binds == ["rs-data:/work/data"]
            assert c.labels == {LABEL: "true", f"{LABEL}.job": job.id, f"{LABEL}.stage": "0"}
            assert c.cmd == ["worker", "--job", job.id, "--stage", "0", "--id", c.name]
            assert c.env["RAINSTORM_REDIS"] == url
            assert c.env["RAINSTORM_ALLOW_MODULES"] == "tests"
        assert cli(url, "throttle", job.id, "off").returncode == 0  # the input rate jumps
        wait_for(lambda: any(d.change > 0 and d.workers >= 1
                             for d in scaler.decisions), 60, "a scale-up under load")
        wait_for(lambda: running() >= 2, 60, "a second container", every_s=0.05)
        result = driven.result(150)
        # a finished job keeps no workers: asked to stop, exited, removed
        wait_for(lambda: not fake.containers and not r.hlen(keys.WORKERS), 60,
                 "every container to exit and be removed", every_s=0.05)
    finally:
        stop.set()
        loop.join(10)
        backend.close(timeout_s=5)
    assert not loop.is_alive()
    assert Counter(result) == reference_wordcount(paths)
    assert all(d.workers + d.change <= 3 for d in scaler.decisions)  # never above MAX
    assert 2 <= most <= 3
    assert all(c.exit_code == 0 and not c.signals for c in fake.started)  # left politely
    assert fake.hits("POST", "/containers/create") and not fake.unknown
    removals = fake.hits("DELETE", "/containers/[0-9a-f]{64}")
    assert len(removals) == len(fake.started)
    assert not fake.hits("POST", r".*/(kill|stop)")
    assert not fake.processes_left()


@pytest.mark.chaos
def test_kill_worker_force_kills_its_container(tmp_path: Path, url: str, r: redis.Redis,
                                               fake: FakeDocker) -> None:
    paths = write_corpus(tmp_path / "in", n_files=2, kb=60)
    spec = wordcount_spec("tests.ops:slow_split", batch_bytes=2048, batch_entries=2,
                          claim_idle_ms=500)
    job, files = prepare(spec, [str(p) for p in paths], "dkill")
    submit(r, job, files)
    throttle(r, job.id, 20)  # the job outlasts the kill below on any machine (lifted after)
    backend = DockerBackend(r, url, IMAGE, env={**SIGNING, "RAINSTORM_ALLOW_MODULES": "tests",
                                                "RAINSTORM_TEST_SLOW_MS": "3"})
    boxed = backend.start(job.id, 0)
    procs = [worker(url, "--job", job.id, "--burst", RAINSTORM_TEST_SLOW_MS="3")]
    try:
        driven = Driven(r, job, timeout_s=150)
        (box,) = fake.running()
        assert box.name == boxed and box.proc is not None
        box_pid = box.proc.pid

        def holds() -> bool:  # listed as a holder, then stopped while it holds entries
            return counters(r, job.id).stage(0).committed > 0 and any(
                row.holders.get(boxed) for row in list_tasks(r, job.id, sample_s=0)
            ) and stopped_holding(r, job, box_pid, boxed)

        wait_for(holds, 120, "the containerized worker to hold entries", every_s=0.02)
        res = cli(url, "kill-worker", "--force", boxed)
        assert res.returncode == 0, res.stderr
        assert f"killed container {box.id[:12]} of worker {boxed}" in res.stderr
        assert fake.hits("GET", f"/containers/{box.id[:12]}/json")  # found by its short id
        assert fake.hits("POST", f"/containers/{box.id}/kill")  # and killed via the SDK
        assert box.status == "exited" and box.exit_code == 128 + signal.SIGKILL
        assert box.signals == [signal.SIGKILL]
        throttle(r, job.id, None)  # the job may end now
        wait_for(lambda: [w for w in monitor.workers(r)
                          if w.id == boxed and w.state == "dead"], 60,
                 "the killed worker's heartbeat shown as dead", every_s=0.1)
        result = driven.result(150)
        assert procs[0].wait(60) == 0
    finally:
        stop_all(procs)
        backend.close(timeout_s=5)
    assert Counter(result) == reference_wordcount(paths)
    assert counters(r, job.id).stage(0).claimed > 0  # the container's entries were stolen
    assert not fake.containers and not fake.unknown  # close() removed the dead container
    gone = cli(url, "kill-worker", "--force", boxed)
    assert gone.returncode == 0 and "already dead" in gone.stderr


def test_docker_backend_without_an_engine_fails_in_one_line(
        tmp_path: Path, url: str, r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/missing.sock")
    monkeypatch.delenv("RAINSTORM_HOSTNAME", raising=False)
    res = subprocess.run(
        [sys.executable, "-m", "rainstorm", "autoscale", "1:2", "--backend", "docker",
         "--image", IMAGE, "--network", "rainstorm", "--redis", url, "--job", "nojob"],
        cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "cannot reach the Docker engine" in lines[0]
    bad = subprocess.run(
        [sys.executable, "-m", "rainstorm", "autoscale", "1:2", "--backend", "docker",
         "--volume", "data", "--redis", url], cwd=ROOT, capture_output=True, text=True,
        timeout=30)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "rainstorm: error: --volume data: expected VOLUME:/absolute/path"], bad.stderr
    # kill-worker --force of a worker in a container elsewhere: the same one line
    r.hset(keys.WORKERS, "boxed-1", '{"host": "elsewhere", "pid": 1, "container": "abc", '
                                    f'"last_seen": {time.time()}}}')
    res = cli(url, "kill-worker", "--force", "boxed-1")
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "Docker could not kill container abc" in lines[0]


@pytest.mark.chaos
def test_close_stops_only_its_own_jobs_containers(url: str, r: redis.Redis,
                                                  fake: FakeDocker) -> None:
    """Two autoscalers on one engine (one per job): closing one leaves the
    other's workers alone; a worker still running at the deadline is
    force-removed (the engine SIGKILLs it); one that obeys leaves politely."""
    ours = DockerBackend(r, url, IMAGE, env={**SIGNING, "RAINSTORM_ALLOW_MODULES": "tests"})
    theirs = DockerBackend(r, url, IMAGE, env={**SIGNING, "RAINSTORM_ALLOW_MODULES": "tests"})
    try:
        mine, other = ours.start("job-a", 0), theirs.start("job-b", 0)
        wait_for(lambda: {w.id for w in monitor.workers(r)} == {mine, other}, 60,
                 "both containerized workers' heartbeats", every_s=0.05)
        (a,), (b,) = ([c for c in fake.started if c.name == n] for n in (mine, other))
        ours.close(timeout_s=0)  # no time to obey: removed by force
        assert mine not in {c.name for c in fake.containers.values()}
        assert a.signals == [signal.SIGKILL]
        assert fake.hits("DELETE", f"/containers/{a.id}")[-1].query["force"] == "True"
        assert b.status == "running" and not r.exists(keys.worker_stop(other))
        assert theirs.running("job-b", 0) == [other]
        theirs.close(timeout_s=60)  # obeys the polite stop
        assert b.status == "exited" and b.exit_code == 0 and not b.signals
        assert not fake.containers and not fake.unknown
    finally:
        ours.close(timeout_s=0)
        theirs.close(timeout_s=0)
