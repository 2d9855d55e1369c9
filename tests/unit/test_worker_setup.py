"""A `rainstorm worker`'s options from its command line and environment
(rainstorm.local.worker_setup), and the autoscaler's local backend as the
one factory builds it (rainstorm.local.scaling)."""

from __future__ import annotations

import pytest

from rainstorm.errors import UsageError
from rainstorm.local.scaling import BackendOptions, make_backend
from rainstorm.local.worker_setup import WorkerFlags, split_commas, worker_options
from rainstorm.ops.autoscale.backends import LocalBackend

KEY = "a-worker-key-0123456789abcdef"


def test_split_commas_flattens_repeated_and_comma_separated_values() -> None:
    assert split_commas(("a,b", "c", ",d,,")) == ("a", "b", "c", "d")
    assert split_commas(()) == ()


def test_options_from_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAINSTORM_SECRET", KEY)
    monkeypatch.setenv("RAINSTORM_ALLOW_MODULES", "envmod")
    opts = worker_options(WorkerFlags(job_id="j", burst=True, stage=1, worker_id="w-1",
                                      allow=("m1,m2", "m3"), exec_paths=("cat,sort",)))
    assert (opts.job, opts.burst, opts.stage, opts.worker_id) == ("j", True, 1, "w-1")
    assert opts.allow_modules == ("m1", "m2", "m3")  # the flags win over the environment
    assert opts.allow_exec_paths == ("cat", "sort") and opts.secret == KEY.encode()
    assert worker_options(WorkerFlags()).allow_modules == ("envmod",)  # else the env's
    assert worker_options(WorkerFlags()).worker_id != "w-1"  # a default id


@pytest.mark.parametrize("flags, needle", [
    (WorkerFlags(job_id="bad id!"), "--job 'bad id!': only letters"),
    (WorkerFlags(job_id="g h.*"), "--job 'g h': only letters"),
    (WorkerFlags(allow=("os;rm",)), "--allow-module 'os;rm': not a module name"),
    (WorkerFlags(allow=("tests,my-pkg",)), "--allow-module 'my-pkg': not a module name"),
])
def test_a_job_or_module_that_can_never_match_is_refused(
        monkeypatch: pytest.MonkeyPatch, flags: WorkerFlags, needle: str) -> None:
    """A --job no job can have waited for ever (in silence, even with
    --burst); an --allow-module that is no module name let every operator of
    it be refused later, far from the typo."""
    monkeypatch.setenv("RAINSTORM_SECRET", KEY)
    with pytest.raises(UsageError) as err:
        worker_options(flags)
    assert str(err.value).startswith(needle) and err.value.exit_code == 2, str(err.value)


def test_a_graph_pattern_and_the_wildcard_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAINSTORM_SECRET", KEY)
    opts = worker_options(WorkerFlags(job_id="etl.*", allow=("*", "pkg.sub")))
    assert opts.job == "etl.*" and opts.allow_modules == ("*", "pkg.sub")


def test_no_secret_is_refused_unless_insecure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAINSTORM_SECRET", raising=False)
    monkeypatch.delenv("RAINSTORM_SECRET_FILE", raising=False)
    with pytest.raises(UsageError, match="no RAINSTORM_SECRET") as err:
        worker_options(WorkerFlags())
    assert "\n" not in str(err.value) and err.value.exit_code == 2
    opts = worker_options(WorkerFlags(insecure=True))
    assert opts.secret is None and opts.insecure_unsigned


def test_local_backend_gets_the_run_key_only_when_given() -> None:
    given = make_backend(None, "redis://x", BackendOptions(  # type: ignore[arg-type]
        allow_modules=("m",), allow_exec=True, key=KEY.encode()))
    assert isinstance(given, LocalBackend)
    assert given.env == {"RAINSTORM_SECRET": KEY} and given.allow_modules == ("m",)
    assert given.allow_exec and given.redis_url == "redis://x"
    inherited = make_backend(None, "redis://x", BackendOptions())  # type: ignore[arg-type]
    assert isinstance(inherited, LocalBackend) and inherited.env == {}
