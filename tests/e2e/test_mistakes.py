"""Ordinary user mistakes and surprises: each gives one line naming what is
wrong and a non-zero exit, before anything runs where it can be checked
first, and never loses or half-deletes anything."""

from __future__ import annotations

import http.server
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from rainstorm import keys
from rainstorm.errors import JobFailed
from rainstorm.job import Job
from rainstorm.jobstore import mark_failed
from rainstorm.local.run import prepare
from rainstorm.local.server import EmbeddedRedis
from rainstorm.ops.autoscale.backends import LocalBackend
from tests.conftest import reference_wordcount, write_corpus
from tests.helpers import (
    ROOT,
    drive,
    start_worker,
    stop_all,
    submit,
    wait_for,
    wordcount_spec,
    worker,
)

SPEC = ROOT / "examples" / "wordcount.yaml"
NEVER = "3600"  # RAINSTORM_CONNECT_TIMEOUT that no test waits out


def rainstorm(*args: str, prefix: tuple[str, ...] = (), timeout_s: float = 120,
              **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, sys.executable, "-m", "rainstorm", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout_s,
                          env=dict(os.environ, RAINSTORM_ALLOW_MODULES="tests", **env))


def one_line_error(res: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    assert res.returncode == code, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rainstorm: error: "), res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def unprivileged() -> tuple[str, ...]:
    """A command prefix under which file permissions apply (root ignores them)."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if not setpriv:
        pytest.skip("running as root without setpriv: permissions cannot be tested")
    caps = "-dac_override,-dac_read_search"
    return (setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}")


@pytest.fixture
def text_input(tmp_path: Path) -> Path:
    p = tmp_path / "in.txt"
    p.write_text("a b a\n")
    return p


# -- refused at once -----------------------------------------------------------

def test_workers_0_without_redis_is_refused_at_once(text_input: Path) -> None:
    # at once: a job with no worker, or a wait for Redis (an hour here), would hang
    # past the 90 s the process is given, however loaded the machine
    res = rainstorm("run", str(SPEC), "--input", str(text_input), "--workers", "0",
                    timeout_s=90, RAINSTORM_CONNECT_TIMEOUT=NEVER)
    one_line_error(res, 2, "--workers 0", "--redis")


def test_a_negative_top_is_refused_before_anything_runs(text_input: Path) -> None:
    # it printed "top -5 of N keys" over an empty table
    for cmd in (("run", str(SPEC), "--input", str(text_input)), ("result", "any-job")):
        res = rainstorm(*cmd, "--top", "-5", timeout_s=90, RAINSTORM_CONNECT_TIMEOUT=NEVER)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert "Invalid value for '--top': -5 is not in the range x>=0" in res.stderr
        assert res.stdout == ""



def test_a_job_id_workers_would_skip_is_refused(text_input: Path, url: str,
                                                r: redis.Redis) -> None:
    # workers skip an id outside rainstorm.spec.JOB_ID_PATTERN: the submitter waited in silence
    for cmd, bad in ((("submit", str(SPEC), "--redis", url), "a b"),
                     (("run", str(SPEC), "--workers", "1"), "x}y")):
        res = rainstorm(*cmd, "--input", str(text_input), "--job", bad, timeout_s=90,
                        RAINSTORM_CONNECT_TIMEOUT=NEVER, RAINSTORM_SECRET="s" * 32)
        one_line_error(res, 2, repr(bad), "only letters, digits")
    assert not r.smembers(keys.JOBS)

@pytest.fixture
def http_port() -> Iterator[int]:
    srv = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never says anything."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield s.getsockname()[1]
    s.close()


@pytest.mark.parametrize("kind", ["http", pytest.param("silent", marks=pytest.mark.slow), "db",
                                  "scheme", "port"])
def test_redis_handshake_mistakes_are_one_line_and_bounded(
    kind: str, http_port: int, silent_port: int, url: str
) -> None:
    target, needle = {
        "http": (f"redis://127.0.0.1:{http_port}", "does not speak the Redis protocol"),
        "silent": (f"redis://127.0.0.1:{silent_port}", "did not answer within 5 s"),
        "db": (f"{url}?db=9999", "DB index is out of range"),
        "scheme": ("http://127.0.0.1:6379", "invalid Redis URL"),
        "port": ("redis://127.0.0.1:sixty", "invalid Redis URL"),
    }[kind]
    for command in (["status"], ["worker", "--burst"]):
        # bounded: retrying as if Redis were down (for an hour here) would hang past
        # the 90 s the process is given
        res = rainstorm(*command, "--redis", target, timeout_s=90,
                        RAINSTORM_CONNECT_TIMEOUT=NEVER)
        one_line_error(res, 1, needle)


# -- checked before the job runs -----------------------------------------------

def test_unwritable_output_is_refused_before_the_job_runs(tmp_path: Path,
                                                          text_input: Path) -> None:
    a_file = tmp_path / "plain-file"
    a_file.write_text("x")
    a_dir = tmp_path / "a-dir"
    a_dir.mkdir()
    res = rainstorm("run", str(SPEC), "--input", str(text_input), "--output",
                    str(a_file / "out.json"))
    one_line_error(res, 2, "--output", f"{a_file} is not a directory")
    res = rainstorm("run", str(SPEC), "--input", str(text_input), "--output", str(a_dir))
    assert res.returncode == 2 and "is a directory" in res.stderr  # click's own check
    # a file sink whose directory is read-only (permissions apply: not as root)
    ro = tmp_path / "read-only"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        res = rainstorm("run", str(SPEC), "--input", str(text_input), "--set",
                        "sink.type=file", "--set", f"sink.path={ro / 'out.json'}",
                        prefix=unprivileged())
        one_line_error(res, 2, "sink.path", str(ro))
        res = rainstorm("run", str(SPEC), "--input", str(text_input), "--output",
                        str(ro / "sub" / "out.json"), prefix=unprivileged())
        one_line_error(res, 2, "--output", "not writable")
    finally:
        ro.chmod(0o755)
    assert sorted(p.name for p in ro.iterdir()) == [], "a probe file was left behind"


def test_mapreduce_output_in_a_read_only_directory(tmp_path: Path, text_input: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        res = rainstorm("mapreduce", "--mapper", "tests.ops:wc_map", "--reducer",
                        "tests.ops:wc_reduce", "--input", str(text_input), "--output",
                        str(ro / "out"), prefix=unprivileged())
    finally:
        ro.chmod(0o755)
    one_line_error(res, 2, "--output")


@pytest.mark.parametrize("fn, args, needle", [
    ("grep", "{pattern: '('}", "invalid regular expression '('"),
    ("grep", "{pattern: 'a{99999999999}'}", "invalid regular expression"),
    ("grep", "{pattern: 7}", "pattern must be a string"),
    ("split", "{sep: ''}", "sep must be a non-empty string"),
])
def test_bad_builtin_args_are_refused_at_validation(
    tmp_path: Path, text_input: Path, url: str, r: redis.Redis, fn: str, args: str,
    needle: str
) -> None:
    spec = tmp_path / "spec.yaml"
    op = "filter" if fn == "grep" else "flat_map"
    spec.write_text(f"name: x\npipeline:\n  - {{op: {op}, fn: {fn}, args: {args}}}\n"
                    "  - {op: count}\n")
    res = rainstorm("run", str(spec), "--input", str(text_input), "--redis", url)
    one_line_error(res, 2, f"pipeline.0.fn: bad args for built-in '{fn}'", needle)
    assert r.dbsize() == 0, "the job was submitted"


@pytest.mark.parametrize("body, needle", [
    ("raise RuntimeError('no config file')\n", "RuntimeError: no config file"),
    ("import sys\nsys.exit(0)\n", "SystemExit: 0"),
    ("def f(:\n", "SyntaxError: invalid syntax"),
])
def test_a_user_module_that_fails_as_it_is_imported_is_one_line(
        tmp_path: Path, text_input: Path, url: str, r: redis.Redis, body: str,
        needle: str) -> None:
    """Only ImportError was one line: any other error raised by the module's
    own code (or its sys.exit) was a traceback, or a silent exit 0."""
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "usermod.py").write_text(body)
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: x\npipeline:\n  - {op: map, fn: 'usermod:f'}\n  - {op: count}\n")
    res = rainstorm("run", str(spec), "--input", str(text_input), "--redis", url,
                    PYTHONPATH=str(tmp_path / "mods"))
    one_line_error(res, 2, "pipeline.0.fn: importing 'usermod' failed: ", needle)
    assert r.dbsize() == 0, "the job was submitted"


def test_a_worker_whose_copy_of_a_module_fails_at_import_refuses_the_job(
        tmp_path: Path, text_input: Path, url: str) -> None:
    """The submitter imports the module; the worker's copy of it raises at
    import: the worker refuses the job (it does not die or loop), and the
    submitter fails with that reason in one line."""
    for d, body in (("good", "def f(x):\n    return x\n"),
                    ("bad", "raise RuntimeError('missing secret on this host')\n")):
        (tmp_path / d).mkdir()
        (tmp_path / d / "usermod.py").write_text(body)
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: x\npipeline:\n  - {op: map, fn: 'usermod:f'}\n  - {op: count}\n")
    procs = [worker(url, "--job", "refuse-import", "--burst", "--allow-module", "usermod",
                    PYTHONPATH=str(tmp_path / "bad"))]
    try:
        res = rainstorm("submit", str(spec), "--input", str(text_input), "--redis", url,
                        "--job", "refuse-import", PYTHONPATH=str(tmp_path / "good"))
    finally:
        stop_all(procs)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        "rainstorm: error: job refuse-import was refused by a worker: worker "
        f"{_worker_id(res.stderr)}: pipeline.0.fn: importing 'usermod' failed: RuntimeError: "
        "missing secret on this host (no live worker can run it)"), res.stderr


def _worker_id(text: str) -> str:
    return text.split("refused by a worker: worker ", 1)[1].split(":", 1)[0]


def test_a_tail_source_that_is_a_directory_is_refused_before_it_runs(
        tmp_path: Path, url: str, r: redis.Redis) -> None:
    """It ran, and failed in the coordinator: 'coordinator error:
    IsADirectoryError: [Errno 21] Is a directory', exit 1."""
    spec = tmp_path / "tail.yaml"
    spec.write_text(f"name: t\nsource: {{type: tail, path: '{tmp_path}'}}\n"
                    "pipeline: [{op: count}]\n")
    res = rainstorm("run", str(spec), "--redis", url, "--workers", "1")
    one_line_error(res, 2, f"source.path: {tmp_path} is a directory, not a file to tail")
    assert r.dbsize() == 0, "the job was submitted"


def test_unreadable_input_is_an_error_never_an_empty_result(tmp_path: Path) -> None:
    top = tmp_path / "logs"
    (top / "locked").mkdir(parents=True)
    (top / "ok.txt").write_text("a b\n")
    (top / "locked" / "hidden.txt").write_text("c d\n")
    secret = tmp_path / "secret.txt"
    secret.write_text("e f\n")
    (top / "locked").chmod(0o000)
    secret.chmod(0o000)
    try:
        res = rainstorm("run", str(SPEC), "--input", str(top), prefix=unprivileged())
        one_line_error(res, 2, "cannot read input directory", str(top / "locked"))
        res = rainstorm("run", str(SPEC), "--input", str(top / "*"), prefix=unprivileged())
        one_line_error(res, 2, "cannot read input directory", str(top / "locked"))
        res = rainstorm("run", str(SPEC), "--input", str(secret), prefix=unprivileged())
        one_line_error(res, 2, "cannot read input", str(secret))
    finally:
        (top / "locked").chmod(0o755)
        secret.chmod(0o644)


# -- input changed under the job -------------------------------------------------

def test_a_state_partition_too_large_for_one_call_fails_the_run_naming_the_remedy(
        tmp_path: Path, url: str) -> None:
    """2 M distinct ids into one state partition: its folded state outgrows
    what one call may carry.  The run fails as soon as a fold finds it, and
    its one error line gives the reason the worker recorded with the job and
    the remedy (before, only 'job ... is failed')."""
    ids = tmp_path / "ids.txt"
    with ids.open("w", encoding="ascii") as fh:
        for i in range(0, 2_000_000, 10_000):
            fh.write("".join(f"id{j:09d}\n" for j in range(i, i + 10_000)))
    spec = tmp_path / "one.yaml"
    spec.write_text("name: one\nsource: {type: text}\npipeline:\n"
                    "  - {op: flat_map, fn: split_words}\n  - {op: count}\n"
                    "sink: {type: stdout, top: 3}\nsettings: {state_partitions: 1}\n")
    res = rainstorm("run", str(spec), "--input", str(ids), "--workers", "2", "--redis", url,
                    timeout_s=240)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("rainstorm: error: ")]
    assert errors == lines[-1:], res.stderr
    # a worker's fold (the job failed with the reason) or the coordinator's own
    # at the end, whichever finds it first
    assert "stage 0 partition 0: its compaction would write" in errors[0], errors[0]
    assert "settings.state_partitions" in errors[0], errors[0]


def test_a_job_failed_by_a_worker_is_reported_with_its_reason(text_input: Path,
                                                              url: str) -> None:
    """A job a worker marks failed (here: by hand, as jobcheck does) ends
    `submit` with one line that carries the recorded reason, not only the
    state."""
    r = redis.Redis.from_url(url)
    job_id = "failed-elsewhere"
    proc = subprocess.Popen([sys.executable, "-m", "rainstorm", "submit", str(SPEC), "--input",
                             str(text_input), "--job", job_id, "--redis", url], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: r.hget(keys.meta(job_id), "state") == b"running", 60,
                 "the job to be submitted")
        assert mark_failed(r, job_id, "serving it failed: the test's reason \x1b]0;pwned\x07")
        _out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert err.strip().splitlines()[1:] == [  # after "submitted job ..."; no raw ESC or BEL
        f"rainstorm: error: job {job_id} is failed: serving it failed: the test's reason "
        "\\x1b]0;pwned\\x07"], err


def test_keys_that_look_like_markup_or_escapes_are_printed_as_they_are(
        tmp_path: Path) -> None:
    """A result table prints keys as the data holds them: '[/bold]' raised
    rich's MarkupError (a traceback after the job, its result lost), '[red]'
    recoloured the table, and an ESC or a bidi override in the data reached
    the terminal; now each is shown, the controls as escapes."""
    words = ["[/bold]", "[red]x", "[link=http://evil]y", "\x1b[31mred\x1b[0m", "\u202eevil",
             "plain", "plain"]
    data = tmp_path / "in.txt"
    data.write_text(" ".join(words) + "\n", encoding="utf-8")
    res = rainstorm("run", str(SPEC), "--input", str(data), "--workers", "1")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert "\x1b" not in res.stdout and "\u202e" not in res.stdout, repr(res.stdout)
    rows = {}
    for line in res.stdout.splitlines():
        cells = [c.strip() for c in line.split("\u2502")[1:-1]]  # the table's | separators
        if len(cells) == 2 and cells[1].isdigit():
            rows[cells[0]] = int(cells[1])
    shown = {w.replace("\x1b", "\\x1b").replace("\u202e", "\\u202e"): n
             for w, n in Counter(words).items()}
    assert rows == shown, res.stdout


def _submitted(r: redis.Redis, paths: list[Path], job_id: str) -> Job:
    """A submitted job under ``job_id``, which may be one prepare refuses
    now (an id from before that check, or keys written by hand)."""
    job, files = prepare(wordcount_spec(batch_bytes=2048), [str(p) for p in paths])
    job = Job.build(job_id, job.spec)
    submit(r, job, files)
    return job


def test_input_deleted_while_loading_fails_the_job_with_one_line(
    tmp_path: Path, url: str, r: redis.Redis
) -> None:
    """`rainstorm run` as a user types it; the last input file is deleted
    while the (throttled) loader is still on the first."""
    paths = write_corpus(tmp_path / "in", n_files=2, kb=20)
    proc = subprocess.Popen(
        [sys.executable, "-m", "rainstorm", "run", str(SPEC), "--input", str(paths[0]),
         "--input", str(paths[1]), "--job", "vanish", "--workers", "1", "--redis", url,
         "--set", "source.max_rate=100", "--no-progress"],  # ~3 s on the first file
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        wait_for(lambda: r.hget(keys.meta("vanish"), "state") == b"running", 60,
                 "the job to be submitted")
        paths[1].unlink()
        _out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 1, err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("rainstorm: error: job vanish: input ") and str(paths[1]) in last
    assert "removed or replaced after submit" in last
    assert r.hget(keys.meta("vanish"), "state") == b"failed"


def test_input_that_shrank_after_submit_fails_the_job(tmp_path: Path, url: str,
                                                      r: redis.Redis) -> None:
    paths = write_corpus(tmp_path / "in", n_files=2, kb=20)
    job = _submitted(r, paths, "shrunk")
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) // 2])
    worker = start_worker(url, job.id)
    try:
        with pytest.raises(JobFailed, match=f"input {paths[1]} shrank after submit, from "
                                             f"{len(data)} to {len(data) // 2} bytes"):
            drive(r, job, timeout_s=60)
    finally:
        stop_all([worker])


def test_input_that_grew_after_submit_is_loaded_as_listed(
    tmp_path: Path, url: str, r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Like a Hadoop/Spark split: the bytes the file had at submit, exactly,
    and a warning naming the file."""
    paths = write_corpus(tmp_path / "in", n_files=2, kb=20)
    want = reference_wordcount(paths)
    job = _submitted(r, paths, "grown")
    with paths[0].open("a") as fh:
        fh.write("appended words that were not there at submit\n" * 50)
    worker = start_worker(url, job.id)
    try:
        with caplog.at_level(logging.WARNING, logger="rainstorm.sources.loader"):
            assert drive(r, job, timeout_s=60) == want
    finally:
        stop_all([worker])
    warned = [m for m in caplog.messages if "changed after submit" in m]
    assert len(warned) == 1 and str(paths[0]) in warned[0]


# -- kill-job refused halfway ------------------------------------------------------

def _user_url(server: EmbeddedRedis, user: str, password: str) -> str:
    return f"unix://{user}:{password}@{server.socket}"


def test_a_worker_whose_user_may_not_run_multi_stops_at_start_in_one_line(
        server: EmbeddedRedis, r: redis.Redis) -> None:
    """A worker ACL user from before LIB_VERSION 10 (no MULTI/EXEC): the
    worker says so as it starts, naming the grant, instead of a refusal at
    every commit; with the grant it runs (burst: nothing to do, exit 0)."""
    rules = ["%R~rs:*", "~rs:*", "-@all", "+@connection", "+@read", "+fcall", "+fcall_ro",
             "+xreadgroup", "+xautoclaim", "+xclaim", "+xack", "+xadd", "+xdel", "+hset",
             "+hdel", "+hincrby", "+set", "+del", "-@dangerous", "+info"]
    r.execute_command("ACL", "SETUSER", "oldworker", "reset", "on", ">old-pw", *rules)
    url = _user_url(server, "oldworker", "old-pw")
    res = rainstorm("worker", "--redis", url, "--burst", timeout_s=60)
    one_line_error(res, 1, "may not run MULTI/EXEC", "+multi +exec +discard")
    r.execute_command("ACL", "SETUSER", "oldworker", "+multi", "+exec", "+discard")
    ok = rainstorm("worker", "--redis", url, "--burst", timeout_s=60)
    assert ok.returncode == 0 and "Traceback" not in ok.stderr, ok.stderr


@pytest.mark.parametrize("rules", [
    # may queue MULTI, HSET and DEL, but not SREM/EXPIRE: the transaction aborts
    ["+@connection", "+@read", "+hset", "+del", "+multi", "+exec", "+discard"],
    # a worker-like user with no MULTI at all
    ["+@connection", "+@read", "+fcall", "+hset", "+hdel", "+set", "+del", "-@dangerous",
     "+info"],
])
def test_kill_job_refused_by_acl_leaves_the_job_whole(
    tmp_path: Path, server: EmbeddedRedis, r: redis.Redis, rules: list[str]
) -> None:
    paths = write_corpus(tmp_path / "in", n_files=1, kb=5)
    job = _submitted(r, paths, "kept")
    before = {k: r.type(k) for k in r.scan_iter("rs:*")}
    meta = r.hgetall(keys.meta(job.id))
    r.acl_setuser("limited", enabled=True, passwords=["+limited-pw"], keys=["rs:*"],
                  commands=["-@all", *rules], reset=True)
    res = rainstorm("kill-job", job.id, "--redis", _user_url(server, "limited", "limited-pw"))
    one_line_error(res, 1, f"job {job.id} was left as it was", "admin user")
    assert {k: r.type(k) for k in r.scan_iter("rs:*")} == before
    assert r.hgetall(keys.meta(job.id)) == meta and r.ttl(keys.meta(job.id)) == -1
    assert r.sismember(keys.JOBS, job.id)
    # the admin user does it all
    res = rainstorm("kill-job", job.id, "--redis", server.url)
    assert res.returncode == 0, res.stderr
    assert [k for k in r.scan_iter("rs:*") if job.id.encode() in k] == \
        [keys.meta(job.id).encode()]
    assert r.hget(keys.meta(job.id), "state") == b"cancelled"
    assert not r.sismember(keys.JOBS, job.id)
    r.acl_deluser("limited")


def test_kill_job_with_glob_characters_in_its_id_touches_only_that_job(
    tmp_path: Path, url: str, r: redis.Redis
) -> None:
    paths = write_corpus(tmp_path / "in", n_files=1, kb=5)
    other = _submitted(r, paths, "ab")
    star = _submitted(r, paths, "a*")
    before = sorted(k for k in r.scan_iter("rs:*") if b"{ab}" in k)
    res = rainstorm("kill-job", star.id, "--redis", url)
    assert res.returncode == 0, res.stderr
    assert sorted(k for k in r.scan_iter("rs:*") if b"{ab}" in k) == before
    assert r.sismember(keys.JOBS, other.id)


# -- the autoscaler's local backend ----------------------------------------------------

def test_local_backend_close_while_the_scaler_thread_is_busy(url: str, r: redis.Redis) -> None:
    backend = LocalBackend(redis.Redis.from_url(url), url)
    errors: list[BaseException] = []
    done = threading.Event()

    def scaler() -> None:  # what Autoscaler.tick does, as fast as it can
        try:
            while not done.is_set():
                ids = backend.running("nojob", 0)
                if len(ids) < 3:
                    backend.start("nojob", 0)
                elif ids:
                    backend.stop(ids[0])
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=scaler, daemon=True)
    thread.start()
    wait_for(lambda: len(backend.stopping) >= 2, 30, "workers being stopped")
    backend.close(timeout_s=20)
    done.set()
    thread.join(10)
    assert not errors, errors
    assert backend.start("nojob", 0) == ""  # closed: nothing new is started
    assert not backend.procs and not backend.stopping
