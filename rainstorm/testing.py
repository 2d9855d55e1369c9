"""Run a job in-process and get its result: a kit for tests (like bytewax.testing).

    from collections import Counter
    from rainstorm.testing import run_job

    def test_wordcount() -> None:
        lines = ["the cat", "the dog", "a cat"]
        spec = {"name": "wc", "source": {"type": "text"},
                "pipeline": [{"op": "flat_map", "fn": "split_words"}, {"op": "count"}]}
        assert run_job(spec, lines) == Counter(" ".join(lines).split())

There are no worker processes: the coordinator and ``workers`` in-process
workers (:meth:`rainstorm.worker.loop.Worker.run_once`) take turns in the
calling thread, on the same keys, Lua commits and exactly-once path as
``rainstorm run``.  The Redis is an embedded server started once per process
and reused (:func:`shared_url`; a private one for a block: :func:`server`),
or the one of ``redis_url`` (one small ``_Servers`` object holds them, a
cache for the process).  Specs are signed with this process's key
(rainstorm.signing.local_key), as ``rainstorm run`` does for its workers.

An operator that raises is retried like in production, but after 50 ms
instead of ``claim_idle_ms`` (unless the spec sets it); when its records
end in the dead-letter stream, :class:`OperatorFailed` (an IncompleteResult)
says on one line how many and the first error, unless the spec sets
``settings.skip_bad_records``.

Datasets: :func:`run_dataset`, or any action inside ``with in_process():``
(set for the block and the current thread only: rainstorm.apps.execute keeps
the defaults in a ContextVar).
"""

from __future__ import annotations

import atexit
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import redis

from rainstorm.apps.dataset import Dataset
from rainstorm.apps.execute import configured
from rainstorm.connection import connect, redact
from rainstorm.coordinator.graph_run import GraphReport, GraphSession, prepare_graph
from rainstorm.coordinator.result import Result, materialized
from rainstorm.coordinator.session import Hooks, RunReport, Session, prepare
from rainstorm.errors import IncompleteResult, one_line
from rainstorm.graph import GraphSpec, members
from rainstorm.graphstore import forget_graph
from rainstorm.local.run import RunOptions, spec_modules
from rainstorm.local.server import EmbeddedRedis
from rainstorm.monitor.deadletters import first_dead_letter
from rainstorm.ops.tasks import kill_job
from rainstorm.signing import local_key
from rainstorm.spec import JobSpec, load_spec, parse_spec
from rainstorm.worker.loop import Worker, WorkerOptions

__all__ = ["OperatorFailed", "in_process", "run_dataset", "run_in_process", "run_job",
           "server", "shared_url"]

RETRY_AFTER_MS = 50  # claim_idle_ms in the kit, unless the spec sets it
ROUNDS_PER_LOOK = 100  # worker rounds between two looks of the coordinator



class _Servers:
    """The kit's embedded servers: the process-wide one (started on first
    use, stopped at exit) and a stack of the private ones of :func:`server`
    blocks (the innermost is the kit's default while it runs)."""

    def __init__(self) -> None:
        self.shared: EmbeddedRedis | None = None
        self.blocks: list[str] = []

    def url(self) -> str:
        if self.blocks:
            return self.blocks[-1]
        if self.shared is None:
            srv = EmbeddedRedis()
            srv.start()
            atexit.register(srv.stop)
            self.shared = srv
        return self.shared.url


_SERVERS = _Servers()


class OperatorFailed(IncompleteResult):
    """The job's operators failed on some records, which ended in the
    dead-letter stream: how many, and the first error, on one line."""

    def __init__(self, job_id: str, dead_letters: int, result: Any, first_error: str) -> None:
        super().__init__(job_id, dead_letters, result)
        self.first_error = first_error
        self.args = (f"job {job_id}: {dead_letters} dead letter(s); first: {first_error}",)


def shared_url() -> str:
    """The URL of this process's embedded Redis, started on first use and
    stopped when the process exits."""
    return _SERVERS.url()


@contextmanager
def server() -> Iterator[str]:
    """A private embedded Redis for the block (its URL); the kit's runs in
    the block use it.  Stopped, and its data gone, at the end."""
    srv = EmbeddedRedis()
    srv.start()
    _SERVERS.blocks.append(srv.url)
    try:
        yield srv.url
    finally:
        _SERVERS.blocks.remove(srv.url)
        srv.stop()


def run_job(spec: JobSpec | dict[str, Any] | str | Path,
            records: Iterable[str] | None = None, *, workers: int = 1,
            redis_url: str | None = None, timeout_s: float = 60.0,
            allow_modules: Iterable[str] = (), allow_exec: bool = False) -> Result:
    """Run ``spec`` (a JobSpec, its dict, or a YAML/JSON file) to the end and
    return its result: ``{key: value}`` (keys as text) for an aggregate, else
    the list of output records.  ``records``: input lines, written to a
    temporary file that replaces ``source.paths``."""
    job_spec = _as_spec(spec)
    opts = RunOptions(redis_url=redis_url, workers=workers, timeout_s=timeout_s,
                      allow_modules=tuple(allow_modules), allow_exec=allow_exec)
    if records is None:
        return run_in_process(job_spec, opts).result
    with tempfile.TemporaryDirectory(prefix="rainstorm-test-") as d:
        path = Path(d) / "input.txt"
        path.write_text("".join(f"{line}\n" for line in records), encoding="utf-8")
        return run_in_process(job_spec, replace(opts, inputs=(str(path),))).result


def run_dataset(ds: Dataset, *, workers: int = 1, redis_url: str | None = None,
                timeout_s: float = 60.0) -> list[Any]:
    """``ds.collect()``, run in-process (see :func:`in_process`)."""
    with in_process(workers=workers, redis_url=redis_url, timeout_s=timeout_s):
        return ds.collect()


@contextmanager
def in_process(*, workers: int = 1, redis_url: str | None = None,
               timeout_s: float = 60.0) -> Iterator[None]:
    """Inside the block, every Dataset action (collect, count, top, save)
    runs in-process, with ``workers`` in-process workers."""
    def runner(spec: JobSpec, opts: RunOptions) -> RunReport:
        return run_in_process(spec, replace(opts, redis_url=redis_url, workers=workers,
                                 timeout_s=opts.timeout_s or timeout_s))

    def graph_runner(gspec: GraphSpec, opts: RunOptions) -> GraphReport:
        return run_graph_in_process(gspec, replace(opts, redis_url=redis_url, workers=workers,
                                                   timeout_s=opts.timeout_s or timeout_s))

    with configured(runner=runner, graph_runner=graph_runner):
        yield


def run_graph_in_process(gspec: GraphSpec, options: RunOptions) -> GraphReport:
    """:func:`run_in_process` for a dataflow graph: its steps served by
    ``options.workers`` in-process workers; with the kit's own server, every
    step's keys are removed after."""
    url = options.redis_url or shared_url()
    fast = gspec.model_copy(update={"settings": {"claim_idle_ms": RETRY_AFTER_MS,
                                                 **gspec.settings}})
    graph, steps = prepare_graph(fast, options.job_id, options.allow_exec, shared_fs=True)
    key = local_key()
    r = connect(url)
    modules = tuple(m for job, _ in steps.values() for m in spec_modules(job.spec))
    crew = [Worker(r, WorkerOptions(job=members(graph.id), secret=key,
                                    allow_exec=options.allow_exec,
                                    allow_modules=options.allow_modules + modules))
            for _ in range(max(options.workers, 1))]
    try:
        report = GraphSession(r, graph, steps, key=key).run(
            Hooks(on_step=lambda: _take_turns(crew)), timeout_s=options.timeout_s,
            raw_keys=options.raw_keys, server=redact(url))
        if options.on_result and len(report.results) == 1:
            options.on_result(report.reports[next(iter(report.results))], r)
        report.materialize()
    finally:
        for w in crew:
            w.close()
        if options.redis_url is None:
            for s in graph.steps:
                _forget(r, s.job_id)
            forget_graph(r, graph.id)
        r.close()
    return report


def run_in_process(spec: JobSpec, options: RunOptions) -> RunReport:
    """Run ``spec`` in-process with ``options.workers`` workers (at least
    one) on ``options.redis_url`` (None: :func:`shared_url`, and the job's
    keys are removed after); the server and autoscale fields are not used.
    OperatorFailed for dead letters, unless ``settings.skip_bad_records``."""
    url = options.redis_url or shared_url()
    job, files = prepare(_fast_retries(spec), list(options.inputs) or None, options.job_id,
                         options.allow_exec, shared_fs=True)
    key = local_key()
    r = connect(url)
    crew = [Worker(r, WorkerOptions(job=job.id, secret=key, allow_exec=options.allow_exec,
                                    allow_modules=options.allow_modules
                                    + spec_modules(job.spec)))
            for _ in range(max(options.workers, 1))]
    session = Session(r, job, files, key=key)
    try:
        report = session.run(Hooks(on_progress=options.on_progress,
                                   on_step=lambda: _take_turns(crew)),
                             wait_s=options.connect_timeout_s, timeout_s=options.timeout_s,
                             raw_keys=options.raw_keys, server=redact(url))
        if options.on_result:
            options.on_result(report, r)
        report.result = materialized(report.result)  # a test asserts on all of it
        failed = _failure(r, job.id, job.spec, report.status.dead_letters, report.result)
    finally:
        for w in crew:
            w.close()
        # the kit's own server: leave nothing behind, but a job that keeps its
        # state for the next (a join's side: the join deletes it)
        if options.redis_url is None and job.spec.sink.type != "keep":
            _forget(r, job.id)
        r.close()
    if failed:
        raise failed from None
    return report


def _take_turns(crew: list[Worker]) -> None:
    """Each worker works until it finds nothing to do (bounded: the
    coordinator must look again, e.g. to load more input)."""
    for w in crew:
        for _ in range(ROUNDS_PER_LOOK):
            if w.run_once().idle:
                break


def _as_spec(spec: JobSpec | dict[str, Any] | str | Path) -> JobSpec:
    if isinstance(spec, JobSpec):
        return spec
    if isinstance(spec, dict):
        return parse_spec(spec)
    return load_spec(str(spec), [])


def _fast_retries(spec: JobSpec) -> JobSpec:
    """``spec`` with failed entries retried after RETRY_AFTER_MS (unless set)."""
    if "claim_idle_ms" in spec.settings.model_fields_set:
        return spec
    fast = spec.settings.model_copy(update={"claim_idle_ms": RETRY_AFTER_MS})
    return spec.model_copy(update={"settings": fast})


def _failure(r: redis.Redis, job_id: str, spec: JobSpec, dead: int,
             result: Result) -> OperatorFailed | None:
    """OperatorFailed naming the first dead letter, unless there is none or
    the spec skips bad records."""
    if not dead or spec.settings.skip_bad_records:
        return None
    row = first_dead_letter(r, job_id)
    first = "(unreadable)" if row is None else \
        f"stage {row.stage}: {row.error} (record {row.record})"
    return OperatorFailed(job_id, dead, result, one_line(first))


def _forget(r: redis.Redis, job_id: str) -> None:
    """Remove the job's keys (best effort: a failed run may have left few)."""
    try:
        kill_job(r, job_id)
    except redis.RedisError:  # cleanup must not hide the run's own error
        pass
