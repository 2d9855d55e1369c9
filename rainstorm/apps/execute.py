"""How Dataset actions run: the execution defaults, ``execute`` and
``rainstorm run script.py``.

An action (``collect``, ``count``, ``take``, ``save``, ``start`` …) builds its
JobSpec (rainstorm.apps.dataset) and calls :func:`execute`, which runs it with
:func:`rainstorm.local.run.run_job` -- by default an embedded Redis and 2
forked local workers; with ``redis_url=`` (or env ``RAINSTORM_REDIS``) on
that Redis, where ``workers=0`` means "only remote workers" -- or with the
runner set by :func:`configured` (rainstorm.testing runs them in-process).

The defaults live in a :class:`contextvars.ContextVar`: :func:`configure`
sets them for the current context (a thread starts with none set), and
:func:`configured` for a block only, so a test that switches them leaves
nothing behind for the next and never reaches another thread.
"""

from __future__ import annotations

import logging
import os
import runpy
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import redis

from rainstorm import signing
from rainstorm.coordinator.session import RunReport
from rainstorm.errors import IncompleteResult, UsageError
from rainstorm.graph import GraphSpec, parse_graph
from rainstorm.local.run import GraphReport, LocalRun, RunOptions, run_graph, run_job, spec_modules
from rainstorm.spec import JobSpec

__all__ = ["Defaults", "GraphRunner", "Runner", "configure", "configured", "execute",
           "last_report", "one_server", "run_graph_report", "run_key", "run_report",
           "run_script"]

log = logging.getLogger(__name__)

Runner = Callable[[JobSpec, RunOptions], RunReport]
GraphRunner = Callable[[GraphSpec, RunOptions], GraphReport]
_UNSET: Any = object()


@dataclass(frozen=True)
class Defaults:
    """What an action runs with unless its own keyword arguments say otherwise."""

    redis_url: str | None = None  # None: env RAINSTORM_REDIS, else an embedded server
    workers: int | None = None  # local worker processes (None: 2)
    timeout_s: float | None = None
    allow_modules: tuple[str, ...] = ()
    runner: Runner | None = None  # None: rainstorm.local.run.run_job
    graph_runner: GraphRunner | None = None  # None: rainstorm.local.run.run_graph


_NONE_SET = Defaults()  # frozen: safe to share as the ContextVar's default
_defaults: ContextVar[Defaults] = ContextVar("rainstorm_dataset_defaults", default=_NONE_SET)
_last_report: ContextVar[RunReport | None] = ContextVar("rainstorm_last_report", default=None)
# the embedded server of a one_server block (its workers are children of this process)
_own_url: ContextVar[str | None] = ContextVar("rainstorm_own_server", default=None)


def _changed(redis_url: Any, workers: Any, timeout_s: Any, allow_modules: Any,
             runner: Any, graph_runner: Any = _UNSET) -> Defaults:
    given = {"redis_url": redis_url, "workers": workers, "timeout_s": timeout_s,
             "runner": runner, "graph_runner": graph_runner}
    changes = {k: v for k, v in given.items() if v is not _UNSET}
    if allow_modules is not _UNSET:
        changes["allow_modules"] = tuple(allow_modules or ())
    return replace(_defaults.get(), **changes)


def configure(*, redis_url: str | None = _UNSET, workers: int | None = _UNSET,
              timeout_s: float | None = _UNSET,
              allow_modules: Iterable[str] | None = _UNSET, runner: Runner | None = _UNSET,
              graph_runner: GraphRunner | None = _UNSET) -> None:
    """Defaults for the actions of every Dataset in this context (an action's
    own keyword arguments win).  ``redis_url=None``: env RAINSTORM_REDIS, else
    an embedded server; ``workers``: local worker processes (default 2; 0 with
    a ``redis_url``: only remote workers).  ``runner(spec, RunOptions) ->
    RunReport`` runs the actions instead of ``rainstorm.local.run.run_job``
    (None: back to run_job)."""
    _defaults.set(_changed(redis_url, workers, timeout_s, allow_modules, runner, graph_runner))


@contextmanager
def configured(*, redis_url: str | None = _UNSET, workers: int | None = _UNSET,
               timeout_s: float | None = _UNSET,
               allow_modules: Iterable[str] | None = _UNSET, runner: Runner | None = _UNSET,
               graph_runner: GraphRunner | None = _UNSET) -> Iterator[None]:
    """:func:`configure` for the block only; the defaults before it come back
    at its end.  ``graph_runner(graph spec, RunOptions) -> GraphReport`` runs
    the actions that need a dataflow graph (a union, a step after an
    aggregate, ``Dataset.run_all``) instead of rainstorm.local.run.run_graph."""
    token = _defaults.set(_changed(redis_url, workers, timeout_s, allow_modules, runner,
                                   graph_runner))
    try:
        yield
    finally:
        _defaults.reset(token)


def last_report() -> RunReport | None:
    """The RunReport of the latest action in this context."""
    return _last_report.get()


def _target_url(redis_url: str | None = _UNSET) -> str | None:
    """The Redis an action runs on: its own, the default, env
    RAINSTORM_REDIS, else None (an embedded server)."""
    url = _defaults.get().redis_url if redis_url is _UNSET else redis_url
    return url or os.environ.get("RAINSTORM_REDIS") or None


def run_key(run: dict[str, Any]) -> bytes | None:
    """The key inline functions are signed with: on an embedded server (every
    worker a child of this process) the shared key or this process's random
    one; on a given Redis, whose workers may run anywhere, None (the shared
    RAINSTORM_SECRET, required).  ``run``: the action's keyword arguments."""
    if _defaults.get().runner is not None:  # e.g. rainstorm.testing: the workers are ours
        return signing.local_key()
    url = _target_url(run.get("redis_url", _UNSET))
    return signing.local_key() if url is None or url == _own_url.get() else None


@contextmanager
def one_server(run: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The keyword arguments for several jobs of one action that must run on
    one Redis (a join: its two sides, then the join reading their state).
    Where each job would start its own embedded server, one is started for
    the block and ``redis_url`` names it (its jobs' local workers are still
    children of this process: :func:`run_key` signs with the local key);
    otherwise ``run`` as it is (a given Redis, or a runner's)."""
    n = _defaults.get().workers if run.get("workers", _UNSET) is _UNSET else run["workers"]
    if _defaults.get().runner is not None or _target_url(run.get("redis_url", _UNSET)) \
            is not None or n == 0:
        yield run
        return
    with LocalRun(RunOptions()) as env:
        token = _own_url.set(env.url)
        try:
            yield {**run, "redis_url": env.url}
        finally:
            _own_url.reset(token)


def execute(spec: JobSpec, *, redis_url: str | None = _UNSET, workers: int | None = _UNSET,
            timeout_s: float | None = _UNSET, allow_modules: Iterable[str] = (),
            job_id: str | None = None, raw_keys: bool = True) -> dict[Any, Any] | list[Any]:
    """Run a spec to the end: the list of records, or the aggregate, with
    (``raw_keys``) its keys as the operators made them, re-read from Redis,
    rather than as the JSON text of the job's stored result."""
    report = run_report(spec, redis_url=redis_url, workers=workers, timeout_s=timeout_s,
                        allow_modules=allow_modules, job_id=job_id, raw_keys=raw_keys)
    # the user's program asked for the whole result: materialize it
    return report.result if isinstance(report.result, list) else dict(report.result)


def _run_options(redis_url: Any, workers: Any, timeout_s: Any, allow_modules: tuple[str, ...],
                 job_id: str | None, raw_keys: bool,
                 on_result: Callable[[RunReport, redis.Redis], None] | None,
                 own_runner: bool) -> RunOptions:
    """An action's RunOptions: its keyword arguments over the defaults
    (``own_runner``: a configured runner, which needs no local worker)."""
    defaults = _defaults.get()
    url = _target_url(redis_url)
    n = defaults.workers if workers is _UNSET else workers
    n = 2 if n is None else n
    if n < 0:
        raise UsageError(f"workers: expected 0 or more, got {n}")
    if n == 0 and url is None and not own_runner:
        raise UsageError("workers=0 runs no local worker, which needs a redis_url (or "
                         "RAINSTORM_REDIS) that remote workers serve")
    return RunOptions(redis_url=url, workers=n, job_id=job_id,
                      allow_modules=(*defaults.allow_modules, *allow_modules),
                      timeout_s=defaults.timeout_s if timeout_s is _UNSET else timeout_s,
                      raw_keys=raw_keys, on_result=on_result,
                      local_only=url is not None and url == _own_url.get())


def run_report(spec: JobSpec, *, redis_url: str | None = _UNSET, workers: int | None = _UNSET,
               timeout_s: float | None = _UNSET, allow_modules: Iterable[str] = (),
               job_id: str | None = None, raw_keys: bool = True,
               on_result: Callable[[RunReport, redis.Redis], None] | None = None
               ) -> RunReport:
    """:func:`execute`'s run, returning its report.  ``on_result(report, r)``
    is called while the job's Redis still runs, to read the result from it
    as it is consumed (a state partition at a time); the report's result is
    then not read (nor materialized) here."""
    defaults = _defaults.get()
    opts = _run_options(redis_url, workers, timeout_s, (*allow_modules, *spec_modules(spec)),
                        job_id, raw_keys, on_result, defaults.runner is not None)
    report = (defaults.runner or run_job)(spec, opts)
    _last_report.set(report)
    _check_complete(spec, report, report.result)
    return report


def run_graph_report(doc: dict[str, Any], *, redis_url: str | None = _UNSET,
                     workers: int | None = _UNSET, timeout_s: float | None = _UNSET,
                     allow_modules: Iterable[str] = (), job_id: str | None = None,
                     raw_keys: bool = True,
                     on_result: Callable[[RunReport, redis.Redis], None] | None = None
                     ) -> GraphReport:
    """:func:`run_report` for a graph (the document rainstorm.apps.dataflow
    compiles); ``on_result`` is called with its one leaf's report while its
    Redis still runs."""
    gspec = parse_graph(doc, "built by Dataset")
    defaults = _defaults.get()
    opts = _run_options(redis_url, workers, timeout_s, tuple(allow_modules), job_id, raw_keys,
                        on_result, defaults.graph_runner is not None)
    report = (defaults.graph_runner or run_graph)(gspec, opts)
    for step in report.graph.steps:
        rep = report.reports[step.name]
        _last_report.set(rep)
        _check_complete(step.spec, rep, rep.result)
    return report


def _check_complete(spec: JobSpec, report: RunReport, result: Any) -> None:
    """Dead letters in a batch job: IncompleteResult (carrying ``result``,
    naming the first letter's reason: a run's own server is gone by now, so
    `rainstorm dlq` cannot show it), unless ``settings.skip_bad_records``
    (``with_settings(skip_bad_records=True)``) accepts them; then, and for a
    streaming job, a warning."""
    job_id, dead = report.job_id, report.status.dead_letters
    if not dead:
        return
    if spec.unbounded or spec.settings.skip_bad_records:
        log.warning("job %s: %d dead letters (bad records skipped), see `rainstorm dlq %s`",
                    job_id, dead, job_id)
        return
    raise IncompleteResult(job_id, dead, result, report.first_dead)


def run_script(path: str, argv: Iterable[str] = (), *, redis_url: str | None = None,
               workers: int | None = None, allow_modules: Iterable[str] = ()) -> None:
    """``rainstorm run script.py [args]``: run a Python script that builds and
    runs Datasets (like spark-submit), with these execution defaults and
    ``sys.argv = [script, *args]``."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"script not found: {path}")
    old_argv, old_path = sys.argv, list(sys.path)
    sys.argv = [str(p), *argv]
    sys.path.insert(0, str(p.resolve().parent))  # as `python script.py` does
    try:
        with configured(redis_url=redis_url, workers=workers, allow_modules=allow_modules):
            runpy.run_path(str(p), run_name="__main__")
    finally:
        sys.argv = old_argv
        sys.path[:] = old_path
