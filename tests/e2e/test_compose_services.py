"""Every service of docker-compose.yml, run on this machine without Docker:
the same commands behind the image's entry point, the same environment
(interpolated the way compose does), the same volume layout below the
image's working directory.  Substituted, and only that: the local server
binary, free ports, 127.0.0.1 for the `redis` host name and for the
dashboard's listening address, a temp dir for the `data` volume and for Valkey's /data.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from rainstorm import keys
from rainstorm.local.server import free_ports
from tests.composefile import (
    TEST_ENV,
    LocalRedis,
    load_compose,
    local_env,
    rainstorm_argv,
    replace_arg,
    stop_all,
    workdir_with_mounts,
)
from tests.conftest import reference_wordcount, write_corpus
from tests.helpers import wait_for

TIMEOUT_S = 30


@dataclass
class Stack:
    compose: dict[str, Any]
    redis: LocalRedis
    tmp: Path
    corpus: list[Path]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def service(self, name: str) -> dict[str, Any]:
        return dict(self.compose["services"][name])

    def run(self, name: str, *extra: str, compose: dict[str, Any] | None = None,
            timeout_s: float = TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        """Run service ``name`` (or its command + ``extra`` args) to the end."""
        service = (compose or self.compose)["services"][name]
        root = self.tmp / f"root-{name}-{time.monotonic_ns()}"
        cwd = workdir_with_mounts(service, root, {"data": self.tmp / "data"})
        argv = rainstorm_argv(service)
        if extra:
            argv = argv[:-len(service["command"])] + list(extra)
        return subprocess.run(argv, cwd=cwd, env=local_env(service, self.redis.port),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout_s)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    compose = load_compose(TEST_ENV)
    tmp = tmp_path_factory.mktemp("compose")
    corpus = write_corpus(tmp / "data" / "sample", n_files=3, kb=60)
    srv = LocalRedis(compose["services"]["redis"], tmp / "redis-data")
    st = Stack(compose, srv, tmp, corpus)
    worker = compose["services"]["worker"]
    try:
        srv.start()  # returns once the service's healthcheck passes
        for i in range(int(worker["deploy"]["replicas"])):
            cwd = workdir_with_mounts(worker, tmp / f"root-worker-{i}", {"data": tmp / "data"})
            log = tmp / f"worker-{i}.log"
            with open(log, "wb") as out:
                st.workers.append(subprocess.Popen(
                    rainstorm_argv(worker), cwd=cwd, env=local_env(worker, srv.port),
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT))
            st.logs.append(log)
        yield st
    finally:
        stop_all(st.workers)
        srv.stop()
    for p, log in zip(st.workers, st.logs, strict=True):  # a clean stop on SIGTERM
        text = log.read_text(errors="replace")
        assert p.returncode == 0 and "Traceback" not in text, text[-2000:]


def _admin(st: Stack) -> redis.Redis:
    return redis.Redis.from_url(local_env(st.service("coordinator"), st.redis.port)
                                ["RAINSTORM_REDIS"])


def _wait_for_workers(st: Stack, timeout_s: float = 60) -> None:
    """Until every replica is logged in (as `worker`); fail fast if one exits."""
    admin = _admin(st)
    deadline = time.monotonic() + timeout_s
    try:
        while sum(c.get("user") == "worker" for c in admin.client_list()) < len(st.workers):
            for p, log in zip(st.workers, st.logs, strict=True):
                if p.poll() is not None:
                    raise AssertionError(f"a worker exited with {p.returncode}: "
                                         + log.read_text(errors="replace")[-2000:])
            if time.monotonic() > deadline:
                raise AssertionError(f"workers not logged in within {timeout_s} s")
            time.sleep(0.05)
    finally:
        admin.close()


def test_compose_job_runs(stack: Stack) -> None:
    """`rainstorm submit` with the coordinator's environment (the default
    spec, examples/wordcount.yaml, over the mounted data volume), computed by the
    worker replicas logged in as the `worker` ACL user."""
    _wait_for_workers(stack)
    run = stack.run("coordinator")
    assert run.returncode == 0, run.stderr
    job = stack.service("coordinator")["environment"]["RAINSTORM_JOB"]
    assert f"submitted job {job}" in run.stderr
    assert "top 10 of" in run.stdout
    got = stack.run("coordinator", "result", job, "--json")
    assert got.returncode == 0, got.stderr
    assert Counter(json.loads(got.stdout)) == reference_wordcount(stack.corpus)
    # the replicas did it, as `worker`, and `rainstorm workers` works for that user too
    def listed() -> list[dict[str, object]]:
        ws = stack.run("worker", "workers", "--json")
        assert ws.returncode == 0, ws.stderr
        rows: list[dict[str, object]] = json.loads(ws.stdout)
        return rows

    # every replica is listed (idle ones too) and, within a heartbeat, their
    # batches add up to some work
    rows = wait_for(lambda: (r := listed()) and sum(int(str(w["batches"])) for w in r) > 0
                    and r, 30, "the workers' heartbeats to count their batches")
    assert {int(str(w["pid"])) for w in rows} == {p.pid for p in stack.workers}
    # the server runs with the compose file's persistence and eviction policy
    admin = _admin(stack)
    try:
        assert admin.config_get("appendonly")["appendonly"] == "yes"
        assert admin.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        assert (stack.redis.dir / "appendonlydir").is_dir()
        # submit --shared-fs: the workers read the input as splits
        spec = json.loads(admin.get(keys.spec(job)) or b"{}")
        assert spec["source"]["transport"] == "split"
    finally:
        admin.close()
    # submitting the same job again resumes it: done, so the same result
    again = stack.run("coordinator")
    assert again.returncode == 0 and f"resuming job {job}" in again.stderr, again.stderr


def test_inline_spec_from_the_environment(stack: Stack) -> None:
    """RAINSTORM_SPEC= (empty) + RAINSTORM_SPEC_YAML, RAINSTORM_INPUT and
    RAINSTORM_JOB from the host environment, through the compose file."""
    spec = ("name: inline\n"
            "pipeline:\n"
            "  - {op: flat_map, fn: split_words}\n"
            "  - {op: map, fn: lower}\n"
            "  - {op: count}\n")
    env = dict(TEST_ENV, RAINSTORM_SPEC="", RAINSTORM_SPEC_YAML=spec,
               RAINSTORM_INPUT="data/sample/f0.txt data/sample/f2.txt",
               RAINSTORM_JOB="inline-1")
    compose = load_compose(env)
    run = stack.run("coordinator", compose=compose)
    assert run.returncode == 0, run.stderr
    assert "submitted job inline-1" in run.stderr
    got = stack.run("coordinator", "result", "inline-1", "--json")
    assert got.returncode == 0, got.stderr
    inputs = [stack.corpus[0], stack.corpus[2]]
    expected = Counter(w.lower() for w in reference_wordcount(inputs).elements())
    assert Counter(json.loads(got.stdout)) == expected


def test_submit_without_a_job_is_one_line(stack: Stack) -> None:
    compose = load_compose(dict(TEST_ENV, RAINSTORM_SPEC=""))
    run = stack.run("coordinator", compose=compose)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "rainstorm: error: no job given: pass SPEC, or set RAINSTORM_SPEC (a spec file) or "
        "RAINSTORM_SPEC_YAML (the spec's YAML text)"]
    bad = load_compose(dict(TEST_ENV, RAINSTORM_SPEC="", RAINSTORM_SPEC_YAML="name: ["))
    run = stack.run("coordinator", compose=bad)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "RAINSTORM_SPEC_YAML" in lines[0], run.stderr


def _get(url: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()


def test_dashboard(stack: Stack) -> None:
    """`rainstorm ui` with the dashboard's command and environment (the
    restricted `worker` user): / and /metrics answer 200."""
    service = stack.service("dashboard")
    port = free_ports(1)[0]
    args = replace_arg(service["command"], "--port", str(port))
    service["command"] = replace_arg(args, "--host", "127.0.0.1")
    cwd = workdir_with_mounts(service, stack.tmp / "root-dashboard", {})
    log = stack.tmp / "dashboard.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(rainstorm_argv(service), cwd=cwd,
                                env=local_env(service, stack.redis.port),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"`rainstorm ui` exited with {proc.returncode}: "
                                     f"{log.read_text(errors='replace')[-2000:]}")
            try:
                status, _, page = _get(base + "/")
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    raise AssertionError("the dashboard did not answer within 60 s: "
                                         + log.read_text(errors="replace")[-2000:]) from None
                time.sleep(0.05)
        assert status == 200 and page.strip()
        status, ctype, metrics = _get(base + "/metrics")
        assert status == 200 and ctype.startswith("text/plain")
        assert "# TYPE" in metrics
    finally:
        stop_all([proc])
    text = log.read_text(errors="replace")
    assert "Traceback" not in text and "NOPERM" not in text, text[-2000:]


def test_autoscaler_service(stack: Stack) -> None:
    """The `autoscaler` service (profile `autoscale`) with its command and
    environment, against a fake Docker Engine (tests/fake_docker.py; Redis is
    the real server): it starts worker containers of the compose image on the
    compose network, logged in as `worker`, and removes them when the job ends."""
    pytest.importorskip("docker", reason="the Docker SDK (pip install 'rainstorm[docker]')")
    from rainstorm.local.run import prepare
    from rainstorm.ops.tasks import throttle
    from rainstorm.spec import parse_spec
    from tests.fake_docker import FakeDocker
    from tests.helpers import Driven, submit

    service = stack.service("autoscaler")
    image = service["command"][service["command"].index("--image") + 1]
    network = service["command"][service["command"].index("--network") + 1]
    admin = _admin(stack)
    spec = parse_spec({"name": "scaled", "source": {"type": "text", "batch_bytes": 2048,
                                                    "max_rate": 1000},
                       "pipeline": [{"op": "flat_map", "fn": "split_words"}, {"op": "count"}]})
    job, files = prepare(spec, [str(p) for p in stack.corpus], "compose-autoscaled")
    with FakeDocker(images=(image,), networks=(network,)) as engine:
        env = {**local_env(service, stack.redis.port), "DOCKER_HOST": engine.url}
        log = stack.tmp / "autoscaler.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(rainstorm_argv(service), env=env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT)
        try:
            coordinator_key = stack.service("coordinator")["environment"]["RAINSTORM_SECRET"]
            submit(admin, job, files, key=coordinator_key.encode())  # as the coordinator
            # throttled until the container's worker is seen, so the job cannot end
            # (and its container leave) first on a slow machine
            throttle(admin, job.id, 20)
            driven = Driven(admin, job, timeout_s=150)
            container = wait_for(lambda: engine.started and engine.started[0], 60,
                                 "the autoscaler to start a worker container")
            assert container.image == image and container.network == network
            assert container.env["RAINSTORM_REDIS"] == env["RAINSTORM_WORKER_REDIS"]
            assert "redis://worker:" in container.env["RAINSTORM_REDIS"]
            wait_for(lambda: any(w["container"] == container.id[:12] for w in
                                 json.loads(stack.run("worker", "workers", "--json").stdout)),
                     60, "the container's worker to send heartbeats", every_s=0.2)
            throttle(admin, job.id, 1000)  # the spec's own rate
            assert Counter(driven.result()) == reference_wordcount(stack.corpus)
            wait_for(lambda: not engine.containers, 60, "the finished job's containers removed")
        finally:
            stop_all([proc])
            admin.close()
        assert not engine.unknown and not engine.processes_left()
    text = log.read_text(errors="replace")
    assert proc.returncode == 0 and "Traceback" not in text, text[-2000:]
