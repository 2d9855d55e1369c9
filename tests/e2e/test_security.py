"""A Redis write is not code execution (issue 10, found item 1).

The attacker holds only the restricted `worker` password of docker-compose.yml,
against a server started with the compose file's own ACL rules.  A job was
submitted, signed, by the coordinator.  The worker user may not write specs
(NOPERM); someone with more write access rewrites it (a map step
``tests.hostile.mod:os.system``, or a ``pipe`` step running a shell) and the
attacker XADDs an entry holding a shell command that would create a marker file.
Workers started with ``--allow-module tests.hostile`` (and ``--allow-exec``)
must not create it: they record a refusal naming the problem, stay up, and
the job fails with that reason.  Controls: the signed job runs, and a signed
``pipe`` step really creates the marker (so its absence means something).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from rainstorm import keys, lua, signing, state
from rainstorm.coordinator.driver import fail
from rainstorm.errors import JobFailed
from rainstorm.job import Job
from rainstorm.local.run import prepare
from rainstorm.operators import aggregates
from rainstorm.protocol.entries import partition_of
from rainstorm.spec import parse_spec, spec_to_json
from rainstorm.spec_signature import sign_spec
from rainstorm.worker.admit import INSECURE_WARNING
from tests.compose_redis import service_url
from tests.composefile import TEST_ENV, LocalRedis, load_compose
from tests.helpers import ROOT, append_delta, drive, forge_base, submit, wait_for

COMPOSE = load_compose(TEST_ENV)
KEY = os.environ["RAINSTORM_SECRET"]  # the suite's: the coordinator's and the workers'


@pytest.fixture
def attacker(srv: LocalRedis, admin: redis.Redis) -> Iterator[redis.Redis]:
    url = service_url("worker", srv)
    assert urlsplit(url).username == "worker"
    client = redis.Redis.from_url(url)
    yield client
    client.close()


def _spec(first: dict[str, Any]) -> dict[str, Any]:
    return {"name": "sec", "source": {"type": "text", "batch_bytes": 4096},
            "pipeline": [first, {"op": "count"}]}


LEGIT = _spec({"op": "map", "fn": "tests.hostile.mod:shout"})


def _submit(admin: redis.Redis, tmp_path: Path, job_id: str,
            data: dict[str, Any] = LEGIT, unsigned: bool = False) -> tuple[Job, list[str]]:
    """A job submitted by the coordinator (signed unless ``unsigned``)."""
    words = [f"w{i % 7}" for i in range(200)]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(words) + "\n")
    job, files = prepare(parse_spec(data), [str(src)], job_id)
    submit(admin, job, files, unsigned=unsigned)
    return job, words


def _worker(srv: LocalRedis, log: Path, *args: str, key: str | None = KEY
            ) -> subprocess.Popen[bytes]:
    """`rainstorm worker` logged in as `worker`, allowed the hostile package."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAINSTORM_")}
    env["RAINSTORM_REDIS"] = service_url("worker", srv)
    if key:
        env["RAINSTORM_SECRET"] = key
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "rainstorm", "worker",
                                 "--allow-module", "tests.hostile", *args],
                                cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stderr=out)


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.terminate()
    try:
        return proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


def _attack(attacker: redis.Redis, job: Job, spec_data: dict[str, Any], marker: Path,
            sig: str, writer: redis.Redis) -> None:
    """Rewrite the spec, fix its signature as told, XADD a shell command.  The
    `worker` user may not write specs or signatures at all (NOPERM), so the
    rewrite is done by ``writer``: someone with more write access than the
    worker password (another Redis user, a leaked admin password): the
    signature must still stop it."""
    evil = spec_to_json(parse_spec(spec_data))
    with pytest.raises(redis.exceptions.NoPermissionError):
        attacker.set(keys.spec(job.id), evil)
    with pytest.raises(redis.exceptions.NoPermissionError):
        attacker.delete(keys.spec_signature(job.id))
    writer.set(keys.spec(job.id), evil)
    if sig == "delete":
        writer.delete(keys.spec_signature(job.id))
    elif sig == "forge":  # the attacker's guess at a key
        writer.set(keys.spec_signature(job.id),
                   sign_spec(job.id, evil, b"attacker-guess-0123456789"))
    attacker.xadd(keys.stage_stream(job.id, 0, 0), {"u": "evil:1", "d": f"touch {marker}\n"})


def _refused_run(admin: redis.Redis, job: Job) -> str:
    """Drive the job as the coordinator does; it must fail; returns the error."""
    with pytest.raises(JobFailed) as info:
        drive(admin, job, timeout_s=90)
    fail(admin, job, str(info.value))
    return str(info.value)


def _refusals(admin: redis.Redis, job: Job) -> dict[str, str]:
    rows: Any = admin.hgetall(keys.refusals(job.id))
    return {k.decode(): v.decode() for k, v in rows.items()}


ATTACKS = {
    # issue 10: `pkg.mod:os.system` resolved to os.system once pkg/mod.py imported os
    "os.system, old signature": ({"op": "map", "fn": "tests.hostile.mod:os.system"},
                                 "keep", "job spec signature check failed"),
    "os.system, forged signature": ({"op": "map", "fn": "tests.hostile.mod:os.system"},
                                    "forge", "job spec signature check failed"),
    "os.system, no signature": ({"op": "map", "fn": "tests.hostile.mod:os.system"},
                                "delete", "job spec is not signed"),
    "re-exported system": ({"op": "map", "fn": "tests.hostile.mod:system"},
                           "keep", "job spec signature check failed"),
    "pipe on --allow-exec": ({"op": "pipe", "cmd": ["sh", "-c", "xargs -r -L1 sh -c"]},
                             "keep", "job spec signature check failed"),
    "pipe, no signature": ({"op": "pipe", "cmd": ["sh", "-c", "xargs -r -L1 sh -c"]},
                           "delete", "job spec is not signed"),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_a_worker_password_does_not_run_code(name: str, tmp_path: Path, admin: redis.Redis,
                                             attacker: redis.Redis, srv: LocalRedis) -> None:
    first, sig, reason = ATTACKS[name]
    marker = tmp_path / "pwned"
    job, _ = _submit(admin, tmp_path, "sec-attack")
    _attack(attacker, job, _spec(first), marker, sig, writer=admin)
    log = tmp_path / "worker.log"
    proc = _worker(srv, log, "--job", job.id, "--allow-exec")
    try:
        error = _refused_run(admin, job)
        assert proc.poll() is None, "the worker must stay up"  # never crashes
    finally:
        code = _stop(proc)
    text = log.read_text(errors="replace")
    assert not marker.exists()
    assert code == 0 and "Traceback" not in text, text
    refusals = _refusals(admin, job)
    assert len(refusals) == 1 and next(iter(refusals.values())).startswith(reason), refusals
    assert reason in error and "no live worker can run it" in error
    assert admin.hget(keys.meta(job.id), "state") == b"failed"
    assert reason in admin.hget(keys.meta(job.id), "error").decode()  # type: ignore[union-attr]
    assert f"refuses job {job.id}: {reason}" in text


def test_the_signed_job_runs_as_worker(tmp_path: Path, admin: redis.Redis,
                                       srv: LocalRedis) -> None:
    """Control: the same setup without the attack gives the right result."""
    job, words = _submit(admin, tmp_path, "sec-legit")
    proc = _worker(srv, tmp_path / "worker.log", "--job", job.id, "--burst")
    try:
        result = drive(admin, job, timeout_s=90)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            _stop(proc)
    assert result == Counter(w.upper() for w in words)
    assert _refusals(admin, job) == {}


def test_a_signed_pipe_really_runs_its_command(tmp_path: Path, admin: redis.Redis,
                                               srv: LocalRedis) -> None:
    """Control for the marker: what a key holder submits does run (on --allow-exec)."""
    marker = tmp_path / "made"
    job, words = _submit(admin, tmp_path, "sec-pipe",
                         _spec({"op": "pipe", "cmd": ["sh", "-c", f"touch {marker}; cat"]}))
    proc = _worker(srv, tmp_path / "worker.log", "--job", job.id, "--burst", "--allow-exec")
    try:
        assert drive(admin, job, timeout_s=90) == Counter(words)
    finally:
        _stop(proc)
    assert marker.exists()


def test_exec_allowlist_refuses_other_programs(tmp_path: Path, admin: redis.Redis,
                                               srv: LocalRedis) -> None:
    """A signed spec, but `sh` is not among the worker's --allow-exec-path programs."""
    marker = tmp_path / "made"
    job, _ = _submit(admin, tmp_path, "sec-exec",
                     _spec({"op": "pipe", "cmd": ["sh", "-c", f"touch {marker}; cat"]}))
    log = tmp_path / "worker.log"
    proc = _worker(srv, log, "--job", job.id, "--allow-exec-path", "cat,grep")
    try:
        error = _refused_run(admin, job)
    finally:
        _stop(proc)
    assert not marker.exists()
    assert "pipeline.0: runs 'sh'" in error and "--allow-exec-path" in error, error


def test_a_worker_without_the_key_runs_nothing(tmp_path: Path, admin: redis.Redis,
                                               srv: LocalRedis) -> None:
    job, _ = _submit(admin, tmp_path, "sec-nokey")
    log = tmp_path / "worker.log"
    proc = _worker(srv, log, "--job", job.id, key=None)
    assert proc.wait(60) == 2
    lines = log.read_text().strip().splitlines()
    assert len(lines) == 1 and "RAINSTORM_SECRET" in lines[0], lines
    assert "--insecure-accept-unsigned" in lines[0]
    other = _worker(srv, tmp_path / "other.log", "--job", job.id,
                    key="a-different-key-0123456789")
    try:
        error = _refused_run(admin, job)
    finally:
        _stop(other)
    assert "job spec signature check failed" in error and "RAINSTORM_SECRET differs" in error


def test_dev_mode_runs_unsigned_specs_and_says_so(tmp_path: Path, admin: redis.Redis,
                                                  attacker: redis.Redis, srv: LocalRedis,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """--insecure-accept-unsigned: an unsigned job runs, with a warning on
    start; even then an attribute chain out of the module is refused."""
    monkeypatch.delenv("RAINSTORM_SECRET")  # a submitter without a key: unsigned
    job, words = _submit(admin, tmp_path, "sec-dev", unsigned=True)
    assert admin.get(keys.spec_signature(job.id)) is None
    log = tmp_path / "worker.log"
    proc = _worker(srv, log, "--insecure-accept-unsigned", key=None)  # every job
    try:
        assert drive(admin, job, timeout_s=90) == Counter(w.upper() for w in words)
        wait_for(lambda: INSECURE_WARNING in log.read_text(), 60, "the warning")
        marker = tmp_path / "pwned"
        evil, _ = _submit(admin, tmp_path, "sec-dev-evil", unsigned=True)
        _attack(attacker, evil, _spec({"op": "map", "fn": "tests.hostile.mod:os.system"}),
                marker, "keep", writer=admin)
        error = _refused_run(admin, evil)
        assert proc.poll() is None
    finally:
        _stop(proc)
    warnings = [ln for ln in log.read_text().splitlines() if INSECURE_WARNING in ln]
    assert len(warnings) == 1 and " WARNING worker " in warnings[0], warnings  # on start
    assert not marker.exists()
    assert "'tests.hostile.mod:os.system': after the ':' comes one public function name" in error


# -- the submitter's side --------------------------------------------------------

def _no_key_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in ("RAINSTORM_SECRET", "RAINSTORM_SECRET_FILE", "RAINSTORM_REDIS")}


def test_submit_without_a_key_is_one_line(tmp_path: Path, admin: redis.Redis,
                                          srv: LocalRedis) -> None:
    src = tmp_path / "in.txt"
    src.write_text("a b\n")
    res = subprocess.run([sys.executable, "-m", "rainstorm", "submit", "examples/wordcount.yaml",
                          "--input", str(src), "--redis", service_url("coordinator", srv)],
                         cwd=ROOT, env=_no_key_env(), capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "RAINSTORM_SECRET" in lines[0], res.stderr
    assert admin.dbsize() == 0  # nothing was written


def test_run_needs_no_setup(tmp_path: Path) -> None:
    """`rainstorm run` on its embedded server signs with a random key of its own."""
    src = tmp_path / "in.txt"
    src.write_text("a b a\n")
    res = subprocess.run([sys.executable, "-m", "rainstorm", "run", "examples/wordcount.yaml",
                          "--input", str(src), "--json", "--workers", "1"], cwd=ROOT,
                         env=_no_key_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"a": 2, "b": 1}, res.stdout


def test_local_key_is_random_per_process() -> None:
    code = "from rainstorm import signing; print(signing.local_key().decode())"
    keys_ = {subprocess.run([sys.executable, "-c", code], env=_no_key_env(), cwd=ROOT,
                            capture_output=True, text=True, timeout=30).stdout.strip()
             for _ in range(2)}
    assert len(keys_) == 2 and all(len(k) == 64 for k in keys_)
    assert signing.local_key() == KEY.encode()  # a shared key, when set, is the key


def test_compose_gives_coordinator_and_workers_the_same_key() -> None:
    raw = load_compose(None)["services"]
    values = {raw[s]["environment"]["RAINSTORM_SECRET"]
              for s in ("coordinator", "worker", "autoscaler")}
    assert len(values) == 1 and next(iter(values)).startswith("${RAINSTORM_SECRET:-")
    env = {s: COMPOSE["services"][s]["environment"]["RAINSTORM_SECRET"]
           for s in ("coordinator", "worker", "autoscaler")}
    assert set(env.values()) == {TEST_ENV["RAINSTORM_SECRET"]}
    assert "RAINSTORM_SECRET" not in COMPOSE["services"]["dashboard"]["environment"]


# -- found items 2 and 5 as attacks: writes that used to stop the pool -------------

TWO_STAGES = {"name": "wc2", "source": {"type": "text", "batch_bytes": 4096},
              "pipeline": [{"op": "flat_map", "fn": "split_words"}, {"op": "repartition"},
                           {"op": "count"}]}


def test_worker_password_writes_do_not_stop_the_pool(tmp_path: Path, srv: LocalRedis,
                                                     admin: redis.Redis,
                                                     attacker: redis.Redis) -> None:
    """As `worker`: a bogus job state, a spec that is not JSON, an undecodable
    stage entry and a crafted aggregate delta.  Workers (logged in as
    `worker`) and the coordinator stay up; the healthy job finishes with every
    word of its input; the crafted data is in the dead-letter stream."""
    bogus, _ = _submit(admin, tmp_path, "bogus")
    broken, _ = _submit(admin, tmp_path, "broken")
    attacker.hset(keys.meta(bogus.id), "state", "bogus")
    attacker.hset(keys.counters(bogus.id), mapping={"s0:emitted": "many", "s0:claimed": "x"})
    with pytest.raises(redis.exceptions.NoPermissionError):
        attacker.set(keys.spec(broken.id), "{not json")
    admin.set(keys.spec(broken.id), "{not json")  # (a user with more rights)
    src = tmp_path / "healthy.txt"
    src.write_text("".join(f"w{i % 11} x{i % 3}\n" for i in range(3000)))
    job, files = prepare(parse_spec(TWO_STAGES), [str(src)], "healthy")
    submit(admin, job, files)
    attacker.xadd(job.streams(1)[0], {"u": "evil-1", "d": b"\xc1\xc1 not msgpack"})
    # into the log of the state partition one of its words goes to
    attacked = partition_of("w3", state.partitions(job))
    stage = job.plan.last.index
    append_delta(attacker, keys.state(job.id, stage, attacked),
                 keys.state_log(job.id, stage, attacked), b"\xc1 not a delta")
    logs = [tmp_path / f"w{i}.log" for i in range(2)]
    procs = [_worker(srv, log) for log in logs]
    try:
        wait_for(lambda: admin.hlen(keys.WORKERS) >= 2, 30, "both workers to be up")
        result = drive(admin, job, timeout_s=60)
        assert all(p.poll() is None for p in procs), "every worker must stay up"
    finally:
        codes = [_stop(p) for p in procs]
    text = "".join(log.read_text() for log in logs)
    assert codes == [0, 0] and "Traceback" not in text, text
    assert Counter(result) == Counter(src.read_text().split())
    assert admin.hget(keys.meta(bogus.id), "state") == b"failed"
    assert b"bogus" in (admin.hget(keys.meta(bogus.id), "error") or b"")
    status = subprocess.run([sys.executable, "-m", "rainstorm", "status", "--json", "--redis",
                             service_url("coordinator", srv)], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)  # bogus counters: still a status, no traceback
    assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr
    rows = {j["job"]: j for j in json.loads(status.stdout)}
    assert rows[broken.id]["state"] == "broken" and rows[job.id]["state"] == "done", rows
    assert _refusals(admin, broken), "the unreadable spec is refused, not run"
    letters = admin.xrange(keys.dlq(job.id))
    assert {f.get(b"kind") for _, f in letters} >= {b"entry", b"delta"}, letters
    assert admin.hget(keys.meta(job.id), "incomplete") == b"1"  # said, not hidden


@pytest.mark.parametrize("how", ["hset base", "hset idle base", "xadd delta",
                                 "reopen and compact"])
def test_a_finished_result_cannot_be_changed_unnoticed(how: str, tmp_path: Path,
                                                      srv: LocalRedis, admin: redis.Redis,
                                                      attacker: redis.Redis) -> None:
    """Found item 4: as `worker`, after the job finished, rewrite one state
    partition (directly, or by reopening the job and calling
    rainstorm_compact); "idle base": a partition no key of the job went to.
    The seal (rs:{job}:seal, which `worker` may not write) no longer
    matches, so `rainstorm result` refuses with one line instead of showing a
    forged result, and so does `result --key` of a key in that partition; a
    key of another partition still reads (each partition is sealed)."""
    job, words = _submit(admin, tmp_path, "sealed", data=_spec({"op": "map", "fn": "lower"}))
    proc = _worker(srv, tmp_path / "w.log", "--job", job.id, "--burst")
    try:
        assert drive(admin, job, timeout_s=90) == Counter(words)
    finally:
        _stop(proc)
    url = service_url("coordinator", srv)
    before = _result(url, job.id)
    assert before.returncode == 0 and json.loads(before.stdout) == Counter(words), before.stderr
    with pytest.raises(redis.exceptions.NoPermissionError):
        attacker.set(keys.seal(job.id), "0" * 64)
    stage, n = job.plan.last.index, state.partitions(job)
    used = {partition_of(w, n) for w in words}
    if how == "hset idle base":  # a key of a partition that held nothing
        p = min(set(range(n)) - used)
        key = next(k for k in (f"forged{i}" for i in range(100 * n)) if partition_of(k, n) == p)
    else:
        key = "w3"
        p = partition_of(key, n)
    other = next(w for w in sorted(set(words)) if partition_of(w, n) != p)
    base, log = keys.state(job.id, stage, p), keys.state_log(job.id, stage, p)
    forged = aggregates.encode({key: 10**9})  # a valid delta: it would be shown
    if how in ("hset base", "hset idle base"):
        forge_base(attacker, base, forged)
    elif how == "xadd delta":
        append_delta(attacker, base, log, forged)
    else:
        attacker.hset(keys.meta(job.id), "state", "running")
        append_delta(attacker, base, log, forged)
        snap = lua.snapshot(attacker, base=base, log=log)
        assert lua.compact(attacker, lua.CompactRequest(
            base=base, log=log, meta=keys.meta(job.id), counters=keys.counters(job.id),
            out=keys.output(job.id), dlq=keys.dlq(job.id), stage=stage, version=snap.version,
            blob=forged, ids=snap.log_ids, tokens=snap.token_by_id(),
            base_token=snap.base_token)) is lua.CompactStatus.OK
        attacker.hset(keys.meta(job.id), "state", "done")
    after = _result(url, job.id)
    lines = after.stderr.strip().splitlines()
    assert after.returncode == 1 and str(10**9) not in after.stdout, after.stdout
    assert len(lines) == 1 and "was changed after it finished" in lines[0], after.stderr
    one = _result(url, job.id, "--key", key)
    lines = one.stderr.strip().splitlines()
    assert one.returncode == 1 and str(10**9) not in one.stdout, one.stdout
    assert len(lines) == 1 and "was changed after it finished" in lines[0], one.stderr
    fine = _result(url, job.id, "--key", other)  # its partition is as sealed
    assert fine.returncode == 0, fine.stderr
    assert json.loads(fine.stdout)["value"] == Counter(words)[other]


def _result(url: str, job_id: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rainstorm", "result", job_id, "--json",
                           *args, "--redis", url], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_a_finished_records_result_cannot_be_changed_unnoticed(
        tmp_path: Path, srv: LocalRedis, admin: redis.Redis, attacker: redis.Redis) -> None:
    """The same for a job without aggregate: its result is the output stream,
    sealed as it is read; an entry XADDed there afterwards is caught."""
    import msgpack

    data = {"name": "rec", "source": {"type": "text", "batch_bytes": 4096},
            "pipeline": [{"op": "map", "fn": "tests.hostile.mod:shout"}]}
    job, words = _submit(admin, tmp_path, "sealed-records", data=data)
    proc = _worker(srv, tmp_path / "w.log", "--job", job.id, "--burst")
    try:
        assert sorted(drive(admin, job, timeout_s=90)) == sorted(w.upper() for w in words)
    finally:
        _stop(proc)
    url = service_url("coordinator", srv)
    before = _result(url, job.id)
    assert before.returncode == 0, before.stderr
    assert sorted(json.loads(before.stdout)) == sorted(w.upper() for w in words)
    attacker.xadd(keys.output(job.id), {"u": "forged.0", "d": msgpack.packb(["FORGED"])})
    after = _result(url, job.id)
    lines = after.stderr.strip().splitlines()
    assert after.returncode == 1 and "FORGED" not in after.stdout, after.stdout
    assert len(lines) == 1 and "was changed after it finished" in lines[0], after.stderr
