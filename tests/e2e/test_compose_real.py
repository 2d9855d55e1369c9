"""docker-compose.yml for real: the project's own Dockerfile and compose file
on a Docker engine, as a user types them (stand-in base images from Debian
packages where no image registry is reachable: tools/docker_env.sh).

One stack (a project of its own, ``-p rst-<pid>``) serves every check, in
order, each bounded in time:

* the default job (the `sample` service's input, splits on the shared data
  volume) == collections.Counter over the input files, read back from the
  volume;
* its workers run the C per-key code (rainstorm.native), compiled in the
  image's build stage, and the image holds no compiler;
* the `worker` ACL user cannot load functions, touch CONFIG, write a job's
  spec or flush;
* the dashboard's ``/`` and ``/metrics`` from this host (RAINSTORM_UI_PORT);
* ``--scale worker=4``: four worker containers, each doing some of a job
  over a second, bigger input (the `sample` service run again; the workers
  slowed by a CPU quota so that the job lasts); in that job one worker,
  paused while it holds pending entries, is ``docker kill``ed (an operator
  stop: Docker never restarts it; ``docker compose up -d`` does) and
  another one's process is SIGKILLed from the host (a crash: its restart
  policy restarts it) -- the result stays exact;
* Valkey ``docker kill``ed mid-job and started again: AOF, exact result;
* ``--profile autoscale``: the autoscaler starts worker containers on the
  project's network and data volume, and removes them when the job is done;
* ``--profile autoscale down -v`` leaves no container, network or volume.

Needs root (tools/docker_env.sh installs docker.io, starts dockerd, builds
the stand-ins); it skips with the reason otherwise.  A dockerd it starts is
left running (tools/docker_env.sh: its pid in the cache directory).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rainstorm.local.server import free_ports
from tests.composefile import COMPOSE_FILE, ROOT, TEST_ENV
from tests.helpers import wait_for

# from nothing (apt-get, debootstrap, image builds) it takes ~4 min here,
# above the suite's 180 s per test
pytestmark = [pytest.mark.slow, pytest.mark.chaos, pytest.mark.docker, pytest.mark.timeout(900)]

DOCKER_ENV = ROOT / "tools" / "docker_env.sh"
STANDINS = {"RAINSTORM_BASE_IMAGE": "rainstorm-standin/python:3.11-slim",
            "RAINSTORM_VALKEY_IMAGE": "rainstorm-standin/valkey:8.1"}
SAMPLE_MB = "5"
BIG_MB = "40"
def _wordcount(name: str, glob: str, source: str, claim_idle_ms: int) -> str:
    """The YAML of a word count over ``glob``, ``source`` more source settings."""
    return (f"name: {name}\nsource: {{type: text, paths: [{glob!r}], {source}}}\n"
            "pipeline: [{op: flat_map, fn: split_words}, {op: count}]\n"
            f"settings: {{claim_idle_ms: {claim_idle_ms}}}\nsink: {{type: stdout, top: 3}}\n")


# every worker busy for a while: splits of a bigger input, read from the volume
BIG_SPEC = _wordcount("big", "data/big/*.txt", "batch_bytes: 262144", 2000)
# a job that lasts ~10 s: the loader paces the input (transport bytes), so
# there is time to kill things while it runs
PACED_SPEC = _wordcount("paced", "data/sample/*.txt", "batch_bytes: 16384, max_rate: 5000",
                        1000)


def _run(argv: list[str], timeout_s: float, env: dict[str, str] | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        res = subprocess.run(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{' '.join(argv)}: still running after {timeout_s} s") from exc
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: exit {res.returncode}\n"
                             f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


@dataclass
class Stack:
    project: str
    env: dict[str, str]
    ui_port: int
    timings: dict[str, float] = field(default_factory=dict)
    seen: dict[str, object] = field(default_factory=dict)  # what the checks saw, for the report

    def compose(self, *args: str, timeout_s: float = 120, check: bool = True,
                **env: str) -> subprocess.CompletedProcess[str]:
        return _run(["docker", "compose", "-f", str(COMPOSE_FILE), "-p", self.project,
                     *args], timeout_s, {**self.env, **env}, check)

    def name(self, service: str, index: int = 1) -> str:
        return f"{self.project}-{service}-{index}"

    def state(self, container: str) -> dict[str, object]:
        out = _run(["docker", "inspect", "-f", "{{json .State}}|{{.RestartCount}}", container],
                   30).stdout.strip()
        state, restarts = out.rsplit("|", 1)
        return {**json.loads(state), "RestartCount": int(restarts)}

    def finished(self, container: str, timeout_s: float) -> None:
        """Until ``container`` has exited for good, with 0 (a restart after a
        failure is not an end: its policy is on-failure)."""
        def done() -> bool:
            st = self.state(container)
            return st["Status"] == "exited" and not st["Restarting"]
        wait_for(done, timeout_s, f"{container} to finish", every_s=0.5)
        st = self.state(container)
        logs = _run(["docker", "logs", "--tail", "30", container], 30).stderr
        assert st["ExitCode"] == 0, f"{container}: exit {st['ExitCode']}\n{logs}"

    def workers(self) -> list[dict[str, object]]:
        """`rainstorm workers --json`, run in the dashboard's container (the
        `worker` ACL user)."""
        out = self.compose("exec", "-T", "dashboard", "rainstorm", "workers", "--json",
                           timeout_s=60).stdout
        rows: list[dict[str, object]] = json.loads(out)
        return rows

    def result(self, job: str) -> Counter[str]:
        out = self.compose("run", "--rm", "--no-deps", "-T", "coordinator", "result", job,
                           "--json", timeout_s=90).stdout
        return Counter(json.loads(out))

    def admin_cli(self, *args: str, user: str = "default", password: str = "",
                  check: bool = False) -> subprocess.CompletedProcess[str]:
        pw = password or TEST_ENV["RAINSTORM_REDIS_PASSWORD"]
        return self.compose("exec", "-T", "redis", "valkey-cli", "--no-auth-warning",
                            "--user", user, "--pass", pw, *args, timeout_s=30, check=check)

    def submit(self, job: str, spec_yaml: str, timeout_s: float = 60) -> None:
        """A new job through the coordinator service (its env, its restart policy)."""
        self.compose("up", "-d", "--no-deps", "coordinator", timeout_s=timeout_s,
                     RAINSTORM_JOB=job, RAINSTORM_SPEC="", RAINSTORM_SPEC_YAML=spec_yaml)

        def submitted() -> bool:
            logs = _run(["docker", "logs", self.name("coordinator")], 30)
            return f"submitted job {job}" in logs.stdout + logs.stderr
        wait_for(submitted, 60, f"job {job} submitted", every_s=0.5)

    def timed(self, what: str, since: float) -> None:
        self.timings[what] = round(time.monotonic() - since, 1)


def _docker_env() -> None:
    if os.geteuid() != 0:
        pytest.skip("the real compose test needs root (tools/docker_env.sh: apt-get, dockerd)")
    try:
        res = subprocess.run(["bash", str(DOCKER_ENV)], cwd=ROOT, capture_output=True,
                             text=True, timeout=600, env={**os.environ, **STANDINS})
    except subprocess.TimeoutExpired:
        pytest.skip("tools/docker_env.sh did not finish within 10 min")
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["(no output)"])[-1]
        pytest.skip(f"no Docker engine here: {last}")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    t0 = time.monotonic()
    _docker_env()
    port = free_ports(1)[0]
    project = f"rst-{os.getpid()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAINSTORM_", "COMPOSE_"))}
    env.update({**TEST_ENV, **STANDINS, "RAINSTORM_SAMPLE_MB": SAMPLE_MB,
                "RAINSTORM_UI_PORT": str(port), "RAINSTORM_AUTOSCALE": "1:2"})
    st = Stack(project, env, port)
    st.timed("docker_env.sh", t0)
    try:
        yield st
    finally:
        st.compose("--profile", "autoscale", "down", "-v", "--timeout", "30",
                   timeout_s=120, check=False)
        print(f"\ncompose test timings (s): {json.dumps(st.timings)}\nseen: {st.seen}")
        report = os.environ.get("RAINSTORM_COMPOSE_REPORT")
        if report:
            Path(report).write_text(json.dumps({"timings_s": st.timings, "seen": st.seen},
                                               indent=1, default=str) + "\n")


def _input_counter(st: Stack, directory: str = "data/sample") -> Counter[str]:
    """Python's str.split over the input files, as they lie in the data volume."""
    text = st.compose("exec", "-T", "worker", "sh", "-c", f"cat {directory}/*.txt",
                      timeout_s=120).stdout
    c: Counter[str] = Counter()
    for line in text.splitlines():
        c.update(line.split())
    return c


def _holders(st: Stack, job: str, consumers: Iterable[str]) -> dict[str, int]:
    """How many entries of ``job``'s stage-0 streams each of ``consumers`` holds."""
    pw = TEST_ENV["RAINSTORM_REDIS_PASSWORD"]
    script = (f'for s in $(valkey-cli --no-auth-warning -a {pw} --scan --pattern '
              f'"rs:{{{job}}}:s0:*"); do valkey-cli --no-auth-warning -a {pw} '
              f'xpending "$s" g0 - + 1000; done')
    out = st.compose("exec", "-T", "redis", "sh", "-c", script, timeout_s=30).stdout
    lines = Counter(line.strip() for line in out.splitlines())  # a consumer name: one entry
    return {c: lines[c] for c in consumers}


def _container_of(worker_id: str, ids: list[str]) -> str:
    """A worker id starts with its container's host name (the id's first 12)."""
    return next(c for c in ids if worker_id.startswith(c[:12]))


def test_compose_stack(stack: Stack) -> None:
    st = stack
    # 1. as typed: `up --build` -> sample input, one build, the default job
    t = time.monotonic()
    st.compose("up", "--build", "-d", timeout_s=600)
    st.finished(st.name("coordinator"), 240)
    st.timed("up --build -> default job done", t)
    images = _run(["docker", "images", "-q", "--filter", "dangling=true",
                   "--filter", f"label=com.docker.compose.project={st.project}"], 30).stdout
    assert not images.strip(), "one build: no dangling copies of rainstorm:local"
    t = time.monotonic()
    expected = _input_counter(st)
    assert sum(expected.values()) > 100_000
    assert st.result("compose-job") == expected
    spec = st.admin_cli("get", "rs:{compose-job}:spec", check=True).stdout
    assert '"transport":"split"' in spec.replace(" ", ""), "splits on the shared volume"
    st.timed("default job == Counter", t)
    # the image's build stage compiled the C per-key code: its workers run it
    # (the image itself has no compiler)
    code = {str(w["id"]): w["native"] for w in st.workers() if w["state"] == "alive"}
    assert code and all(v is True for v in code.values()), code
    gcc = st.compose("run", "--rm", "--no-deps", "-T", "--entrypoint", "sh", "coordinator",
                     "-c", "command -v gcc cc || echo none", timeout_s=60).stdout
    assert gcc.strip() == "none", f"a compiler in the image: {gcc}"

    # 2. the worker ACL user holds
    t = time.monotonic()
    wpw = TEST_ENV["RAINSTORM_WORKER_PASSWORD"]
    assert st.admin_cli("ping", user="worker", password=wpw).stdout.strip() == "PONG"
    for refused in (["function", "load", "#!lua name=x\nredis.register_function('f', "
                     "function() return 1 end)"],
                    ["config", "get", "maxmemory"],
                    ["set", "rs:{compose-job}:spec", "x"],
                    ["del", "rs:jobs"],
                    ["flushall"],
                    ["eval", "return 1", "0"]):
        res = st.admin_cli("-e", *refused, user="worker", password=wpw)
        assert res.returncode != 0 and "NOPERM" in res.stdout + res.stderr, (refused, res)
    assert st.admin_cli("exists", "rs:{compose-job}:spec", check=True).stdout.strip() == "1"
    st.timed("worker ACL", t)

    # 3. the dashboard, from this host
    t = time.monotonic()

    def page(path: str) -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{st.ui_port}{path}",
                                        timeout=5) as resp:
                return str(resp.read().decode()) if resp.status == 200 else ""
        except OSError:
            return ""

    assert wait_for(lambda: page("/"), 60, "the dashboard's /", every_s=0.5)
    assert "rainstorm_redis_up 1" in wait_for(lambda: page("/metrics"), 30, "/metrics")
    st.timed("dashboard / and /metrics", t)

    # 4. four workers, each taking part of a job on a bigger input (splits,
    #    unpaced: every worker busy); in it, one worker docker-killed while it
    #    holds pending entries, another crashed (its process SIGKILLed from
    #    the host); the result stays exact
    t = time.monotonic()
    st.compose("run", "--rm", "--no-deps", "-T", "sample", "--mb", BIG_MB, "--out", "data/big",
               timeout_s=180)
    big = _input_counter(st, "data/big")
    st.timed(f"a second input (sample service, --mb {BIG_MB}) and its Counter", t)
    t = time.monotonic()
    st.compose("up", "-d", "--no-recreate", "--scale", "worker=4", "worker", timeout_s=120)
    ids = st.compose("ps", "-q", "worker").stdout.split()
    assert len(ids) == 4
    before = wait_for(lambda: (rows := st.workers()) and len(rows) >= 4 and rows, 60,
                      "4 worker heartbeats", every_s=0.5)
    batches = {str(w["id"]): int(str(w["batches"])) for w in before}
    # 40 MB take a free 2-core machine ~0.5 s of worker CPU (the C per-key
    # code; ~4 s in Python): slowed down (a CPU quota of 1% of a core per
    # container, Docker's least; 8% let the job end before a worker was
    # caught mid-batch once the workers ran the C code), the job lasts long
    # enough to catch a worker mid-batch.  (A container this throttled may
    # not freeze: `docker pause` answered "unable to freeze" at 1%, so the
    # worker is stopped with SIGSTOP below.)
    _run(["docker", "update", "--cpus", "0.01", *ids], 30)
    st.submit("big-1", BIG_SPEC)

    def all_working() -> list[dict[str, object]]:
        rows = [w for w in st.workers() if str(w["id"]) in batches]
        return rows if len(rows) == 4 and all(
            int(str(w["batches"])) > batches[str(w["id"])] for w in rows) else []

    rows = wait_for(all_working, 60, "all 4 workers to take work in big-1", every_s=0.3)
    assert {_container_of(str(w["id"]), ids) for w in rows} == set(ids)
    st.timed("scale=4, all took work", t)

    t = time.monotonic()
    victim = ""
    workers = {str(w["id"]) for w in rows}
    for _ in range(12):
        # the worker holding the most entries now, stopped (SIGSTOP from the
        # host reaches a container's PID 1; `docker pause` could not freeze
        # a container held to 1% of a core): caught still holding them, it
        # is killed; otherwise it goes on
        held_now = {w: n for w, n in _holders(st, "big-1", workers).items() if n}
        if not held_now:
            continue  # between batches: look again
        wid = max(held_now, key=lambda w: held_now[w])
        cid = _container_of(wid, ids)
        _run(["docker", "kill", "--signal", "SIGSTOP", cid], 30)
        held = _holders(st, "big-1", [wid])[wid]
        if held:
            st.seen["killed worker's pending entries"] = held
            victim = cid
            break
        _run(["docker", "kill", "--signal", "SIGCONT", cid], 30)
    assert victim, "no worker caught holding pending entries"
    _run(["docker", "kill", victim], 30)
    wait_for(lambda: st.state(victim)["Status"] == "exited", 30, "the killed worker to exit")
    crashed = next(c for c in ids if c != victim)
    pid = int(str(st.state(crashed)["Pid"]))
    os.kill(pid, signal.SIGKILL)  # what the kernel's OOM killer does
    st.seen["job running when both were killed"] = st.state(st.name("coordinator"))["Running"]
    # the crashed one comes back by its restart policy; the docker-killed one
    # (Docker: an operator stop) when compose reconciles the replicas
    wait_for(lambda: int(str((s := st.state(crashed))["RestartCount"])) >= 1 and s["Running"],
             60, "the crashed worker's restart", every_s=0.5)
    assert st.state(victim)["Status"] == "exited"
    st.compose("up", "-d", "--no-recreate", "--scale", "worker=4", "worker", timeout_s=120)
    assert st.state(victim)["Running"]
    st.finished(st.name("coordinator"), 240)
    _run(["docker", "update", "--cpus", "0", *ids], 30)
    st.seen["crashed worker restarts"] = st.state(crashed)["RestartCount"]
    st.seen["docker-killed worker restarts by policy"] = st.state(victim)["RestartCount"]
    assert st.result("big-1") == big
    st.timed("worker killed + worker crashed mid-job -> exact", t)

    # 5. Valkey killed mid-job and started again (AOF)
    t = time.monotonic()
    st.submit("paced-2", PACED_SPEC)
    wait_for(lambda: any(w.get("current") == "paced-2:s0" and int(str(w["batches"])) > 0
                         for w in st.workers()), 60, "paced-2 under way", every_s=0.5)
    _run(["docker", "kill", st.name("redis")], 30)
    running = st.state(st.name("coordinator"))["Running"]
    st.seen["job running when Valkey was killed"] = running
    assert running, "paced-2 ended before Valkey was killed"
    wait_for(lambda: st.state(st.name("redis"))["Status"] == "exited", 30, "Valkey down")
    st.compose("up", "-d", "--no-recreate", "redis", timeout_s=120)
    st.finished(st.name("coordinator"), 180)
    st.seen["coordinator restarts while Valkey was down"] = \
        st.state(st.name("coordinator"))["RestartCount"]
    assert st.result("paced-2") == expected
    st.timed("Valkey killed mid-job -> exact", t)

    # 6. the autoscale profile starts worker containers and removes them
    t = time.monotonic()
    st.compose("--profile", "autoscale", "up", "-d", "--no-recreate", "--scale", "worker=1",
               "autoscaler", "worker", timeout_s=120)
    st.submit("paced-3", PACED_SPEC)
    label = "io.rainstorm.autoscaled.job=paced-3"

    def autoscaled() -> list[str]:
        out = _run(["docker", "ps", "--no-trunc", "--filter", f"label={label}", "--format",
                    "{{.Names}} {{.Networks}} {{.Mounts}}"], 30).stdout
        return out.strip().split("\n") if out.strip() else []

    started = wait_for(autoscaled, 90, "an autoscaled worker container", every_s=0.5)
    st.seen["autoscaled containers"] = started
    assert all(f"{st.project}_default" in row and f"{st.project}_data" in row
               for row in started), started
    st.finished(st.name("coordinator"), 180)
    assert st.result("paced-3") == expected
    wait_for(lambda: not _run(["docker", "ps", "-a", "--filter", f"label={label}", "-q"],
                              30).stdout.strip(), 90, "the autoscaled containers removed",
             every_s=1)
    st.timed("autoscale profile", t)

    # 7. one command tears everything down
    t = time.monotonic()
    st.compose("--profile", "autoscale", "down", "-v", "--timeout", "30", timeout_s=120)
    project = f"label=com.docker.compose.project={st.project}"
    assert not _run(["docker", "ps", "-aq", "--filter", project], 30).stdout.strip()
    assert not _run(["docker", "network", "ls", "-q", "--filter", project], 30).stdout.strip()
    assert not _run(["docker", "volume", "ls", "-q", "--filter", project], 30).stdout.strip()
    assert not _run(["docker", "ps", "-aq", "--filter", "label=io.rainstorm.autoscaled"],
                    30).stdout.strip()
    st.timed("down -v", t)
