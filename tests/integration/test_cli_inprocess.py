"""The thin CLI, invoked in-process (click's CliRunner) against the suite's
server: shared options, one-line errors and exit codes, throttle through
rainstorm.ops.tasks.  (tests/e2e/test_cli.py runs `python -m rainstorm`.)"""

from __future__ import annotations

from pathlib import Path

import redis
from click.testing import CliRunner

from rainstorm import keys
from rainstorm.cli import main
from rainstorm.coordinator.session import Session, prepare
from tests.helpers import wordcount_spec


def _invoke(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(main, list(args), env={"RAINSTORM_REDIS": ""})
    return res.exit_code, res.stdout, res.stderr


def _submitted(tmp_path: Path, r: redis.Redis, job_id: str) -> str:
    src = tmp_path / "in.txt"
    src.write_text("a b\n")
    job, files = prepare(wordcount_spec(), [str(src)], job_id)
    Session(r, job, files).submit()
    return job.id


def test_throttle_sets_and_clears_the_rate(tmp_path: Path, r: redis.Redis, url: str) -> None:
    job = _submitted(tmp_path, r, "thr")
    code, out, err = _invoke("throttle", job, "12.5", "--redis", url)
    assert (code, out) == (0, "") and err == f"job {job}: loading at most 12.5 lines/s\n"
    assert r.hget(keys.meta(job), "max_rate") == b"12.5"
    code, _, err = _invoke("throttle", job, "off", "--redis", url)
    assert code == 0 and err == f"job {job}: loading unthrottled\n"
    assert r.hget(keys.meta(job), "max_rate") is None


def test_throttle_mistakes_are_one_line(tmp_path: Path, r: redis.Redis, url: str) -> None:
    job = _submitted(tmp_path, r, "thr2")
    code, _, err = _invoke("throttle", job, "fast", "--redis", url)
    assert code == 2 and err.startswith("rainstorm: error: RATE must be a positive number")
    assert err.count("\n") == 1 and r.hget(keys.meta(job), "max_rate") is None
    code, _, err = _invoke("throttle", "no-such-job", "5", "--redis", url)
    assert code != 0 and err.count("\n") == 1 and "no-such-job" in err


def test_no_redis_given_is_a_usage_error() -> None:
    for args in (["status"], ["throttle", "j", "5"], ["workers"]):
        code, _, err = _invoke(*args)
        assert code == 2, args
        assert err == "rainstorm: error: no Redis given: pass --redis URL or set " \
                      "RAINSTORM_REDIS\n"


def test_connect_timeout_reaches_the_client(tmp_path: Path) -> None:
    dead = f"unix://{tmp_path / 'nothing.sock'}"
    code, _, err = _invoke("status", "--redis", dead, "--connect-timeout", "0")
    assert code == 1 and err.startswith("rainstorm: error: ") and err.count("\n") == 1
    assert "Traceback" not in err
