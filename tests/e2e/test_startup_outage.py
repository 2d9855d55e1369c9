"""Start-up rides out a Redis outage like the steady state does: a worker,
`submit` and `run --redis` started while Redis is down wait for it (with
backoff, up to --connect-timeout / RAINSTORM_CONNECT_TIMEOUT) and then run
the job exactly; with no server at all they fail with one line, in time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import IO

import yaml

from rainstorm import keys
from rainstorm.connection import DEFAULT_CONNECT_TIMEOUT_S, connect
from rainstorm.local.server import EmbeddedRedis
from tests.conftest import reference_wordcount, write_corpus
from tests.helpers import ROOT, stop_all, wait_for


def _spec_file(tmp: Path) -> Path:
    spec = {"name": "outage", "source": {"type": "text", "batch_bytes": 4096},
            "pipeline": [{"op": "flat_map", "fn": "split_words"}, {"op": "count"}]}
    path = tmp / "outage.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def _rainstorm(args: list[str], out: IO[bytes], err: IO[bytes],
               **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "rainstorm", *args], cwd=ROOT,
                            env=dict(os.environ, RAINSTORM_ALLOW_MODULES="tests", **env),
                            stdin=subprocess.DEVNULL, stdout=out, stderr=err)


def test_worker_submit_and_run_started_before_the_server(tmp_path: Path) -> None:
    paths = write_corpus(tmp_path / "in", n_files=2, kb=30)
    spec = _spec_file(tmp_path)
    srv = EmbeddedRedis(workdir=tmp_path / "redis")  # its socket does not exist yet
    url = srv.url
    names = ("worker", "submit", "run")
    outs = {n: (tmp_path / f"{n}.out").open("wb") for n in names}
    errs = {n: tmp_path / f"{n}.err" for n in names}
    err_files = {n: errs[n].open("wb") for n in names}
    inputs = [a for p in paths for a in ("--input", str(p))]
    procs = {
        "worker": _rainstorm(["worker", "--job", "sub", "--burst", "--redis", url],
                             outs["worker"], err_files["worker"]),
        "submit": _rainstorm(["submit", str(spec), *inputs, "--job", "sub", "--json",
                              "--redis", url], outs["submit"], err_files["submit"],
                             RAINSTORM_CONNECT_TIMEOUT="120"),
        "run": _rainstorm(["run", str(spec), *inputs, "--job", "ran", "--json", "--workers",
                           "1", "--no-progress", "--redis", url, "--connect-timeout", "120"],
                          outs["run"], err_files["run"]),
    }
    try:
        wait_for(lambda: all("unavailable" in errs[n].read_text() for n in names), 60,
                 "worker, submit and run to report that Redis is down")
        assert all(p.poll() is None for p in procs.values()), "one gave up at once"
        srv.start()
        for name in ("submit", "run", "worker"):
            assert procs[name].wait(120) == 0, f"{name}: {errs[name].read_text()[-2000:]}"
        want = reference_wordcount(paths)
        for name in ("submit", "run"):
            got = json.loads((tmp_path / f"{name}.out").read_text())
            assert Counter(got) == want, name
    finally:
        stop_all(list(procs.values()))
        for f in (*outs.values(), *err_files.values()):
            f.close()
        srv.stop()


def test_no_server_fails_with_one_line_within_the_bound(tmp_path: Path) -> None:
    paths = write_corpus(tmp_path / "in", n_files=1, kb=5)
    spec = _spec_file(tmp_path)
    url = f"unix://{tmp_path / 'nothing-here.sock'}"
    commands = {
        "worker": (["worker", "--redis", url, "--connect-timeout", "2"], {}),
        "submit": (["submit", str(spec), "--input", str(paths[0]), "--redis", url],
                   {"RAINSTORM_CONNECT_TIMEOUT": "2"}),
        "run": (["run", str(spec), "--input", str(paths[0]), "--redis", url,
                 "--connect-timeout", "2"], {}),
        "status": (["status", "--redis", url], {"RAINSTORM_CONNECT_TIMEOUT": "1"}),
    }
    t0 = time.monotonic()
    procs = {n: subprocess.Popen([sys.executable, "-m", "rainstorm", *args], cwd=ROOT,
                                 env=dict(os.environ, **env), stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for n, (args, env) in commands.items()}
    try:
        for name, proc in procs.items():
            _out, err = proc.communicate(timeout=90)
            assert proc.returncode == 1, f"{name}: {err}"
            assert "Traceback" not in err, err
            last = err.strip().splitlines()[-1]
            assert last.startswith("rainstorm: error: cannot reach Redis at unix://"), last
            assert "--connect-timeout" in last
        # the 2 s bound, not the default 60 s one (which alone would take longer
        # than this), whatever interpreter start-up costs on a busy machine
        assert time.monotonic() - t0 < DEFAULT_CONNECT_TIMEOUT_S
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def test_bad_connect_timeout_setting_is_one_line(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "rainstorm", "status", "--redis",
                          f"unix://{tmp_path / 'x.sock'}"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60,
                         env=dict(os.environ, RAINSTORM_CONNECT_TIMEOUT="soon"))
    assert out.returncode == 2
    assert out.stderr.strip() == ("rainstorm: error: RAINSTORM_CONNECT_TIMEOUT must be a "
                                  "number of seconds >= 0, got 'soon'")


def test_the_jobs_timeout_holds_while_redis_is_down(tmp_path: Path) -> None:
    """`submit --timeout 5` of a job no worker serves: Redis SIGKILLed while
    it runs, the coordinator gives up at the job's 5 s (one line, exit 1),
    not after the 120 s it rides out outages for."""
    paths = write_corpus(tmp_path / "in", n_files=1, kb=5)
    spec = _spec_file(tmp_path)
    srv = EmbeddedRedis(workdir=tmp_path / "redis")
    srv.start()
    err = tmp_path / "submit.err"
    with (tmp_path / "submit.out").open("wb") as out, err.open("wb") as err_fh:
        proc = _rainstorm(["submit", str(spec), "--input", str(paths[0]), "--job", "late",
                           "--timeout", "5", "--redis", srv.url], out, err_fh)
        try:
            r = connect(srv.url)
            wait_for(lambda: r.hget(keys.meta("late"), "state") == b"running", 60,
                     "the job to run")
            started = time.monotonic()
            srv.kill()
            assert srv.proc is not None and srv.proc.poll() is not None  # the fault happened
            assert proc.wait(60) == 1
            took = time.monotonic() - started
        finally:
            stop_all([proc])
            srv.stop()
    text = err.read_text()
    assert "did not finish within 5.0 s" in text and "Redis unreachable" in text, text
    assert "Traceback" not in text and took < 30, (took, text)
