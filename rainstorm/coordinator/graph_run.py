"""Running a dataflow graph (rainstorm.graph): every step's job submitted,
then all of them driven at once by this one coordinator.

    graph, steps = prepare_graph(gspec)             # user errors, before Redis
    report = GraphSession(r, graph, steps, key=key).run(hooks)

Each step is an ordinary job, driven by its own :class:`Driver`; the drivers
are polled in turn, so the steps load, run and finish together (a step that
reads another copies its records as they come: rainstorm.sources.upstream).
Between rounds the records every reader has copied are trimmed from the
output stream they came from, so an intermediate step's output stays
bounded by how far its slowest reader lags, not by its size.

A step that fails fails the graph: every step still running is marked
failed, naming it.  Ctrl-C stops a streaming graph: every step is cancelled
and its last result returned.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import redis

from rainstorm import keys
from rainstorm.coordinator.driver import WATCH_EVERY_S, Driver, fail
from rainstorm.coordinator.result import Result, materialized
from rainstorm.coordinator.session import Hooks, RunReport, Session, prepare
from rainstorm.coordinator.submit import new_id
from rainstorm.errors import JobFailed, UsageError
from rainstorm.graph import Graph, GraphSpec, build
from rainstorm.graphstore import save_graph
from rainstorm.job import Job, JobState
from rainstorm.monitor.deadletters import first_reason
from rainstorm.procs import INTERRUPTED
from rainstorm.sources.inputs import Input
from rainstorm.sources.loader import DONE
from rainstorm.sources.upstream import END

log = logging.getLogger(__name__)

TRIM_EVERY_S = 0.5

Prepared = dict[str, tuple[Job, list[Input]]]


def prepare_graph(gspec: GraphSpec, graph_id: str | None = None, allow_exec: bool = True, *,
                  shared_fs: bool = False, origin: str = "<spec>") -> tuple[Graph, Prepared]:
    """The graph and each step's job and input files: every user error,
    before any Redis is touched (see rainstorm.coordinator.session.prepare)."""
    graph = build(gspec, graph_id or new_id(gspec.name), origin)
    steps: Prepared = {}
    for s in graph.steps:
        try:
            steps[s.name] = prepare(s.spec, None, s.job_id, allow_exec, shared_fs=shared_fs)
        except UsageError as exc:
            raise UsageError(f"step {s.name}: {exc}") from None
    return graph, steps


@dataclass
class GraphReport:
    """What a graph run gives back: each leaf step's result, every step's
    report (counters, time), and the time from submit to the last result."""

    graph: Graph
    results: dict[str, Result]  # leaf steps only
    reports: dict[str, RunReport] = field(default_factory=dict)  # every step
    seconds: float = 0.0
    server: str = ""

    def materialize(self) -> None:
        """Read every leaf's result whole (before its server stops)."""
        for name, result in self.results.items():
            self.results[name] = self.reports[name].result = materialized(result)

    @property
    def graph_id(self) -> str:
        return self.graph.id

    @property
    def total_bytes(self) -> int:
        return sum(r.total_bytes for r in self.reports.values())

    @property
    def dead_letters(self) -> int:
        return sum(r.status.dead_letters for r in self.reports.values())


class GraphSession:
    """One prepared graph on one Redis: every step submitted, then driven."""

    def __init__(self, r: redis.Redis, graph: Graph, steps: Prepared, *,
                 key: bytes | None = None, unsigned: bool = False) -> None:
        self.r = r
        self.graph = graph
        self.sessions = {s.name: Session(r, *steps[s.name], key=key, unsigned=unsigned)
                         for s in graph.steps}
        self._t0 = time.perf_counter()
        self.cancelled = False  # a step was cancelled, so every step is being stopped

    def submit(self, wait_s: float | None = None) -> bool:
        """Submit every step (inputs first) and store the graph's record;
        False when the graph was already there (it is resumed)."""
        self._t0 = time.perf_counter()
        fresh = [self.sessions[s.name].submit(wait_s) for s in self.graph.steps]
        save_graph(self.r, self.graph)
        return all(fresh)

    def run(self, hooks: Hooks | None = None, *, wait_s: float | None = None,
            timeout_s: float | None = None, raw_keys: bool = False,
            stop_on_interrupt: bool = False, server: str = "") -> GraphReport:
        """``submit``, then drive every step to its end (see Session.run)."""
        hooks = hooks or Hooks()
        fresh = self.submit(wait_s)
        if hooks.on_submit:
            hooks.on_submit(fresh)
        results = self.drive(timeout_s=timeout_s, hooks=hooks,
                             stop_on_interrupt=stop_on_interrupt)
        seconds = time.perf_counter() - self._t0
        report = GraphReport(self.graph, {}, seconds=seconds, server=server)
        for s in self.graph.steps:
            sess = self.sessions[s.name]
            result = results[s.name]
            if s.leaf and raw_keys and not isinstance(result, list):  # (only leaves are read)
                result = sess.raw_state()
            status = sess.status()
            report.reports[s.name] = RunReport(
                s.job_id, result, seconds, status.total_bytes, status, server, sess.outages,
                first_reason(sess.r, s.job_id, status.dead_letters))
            if s.leaf:
                report.results[s.name] = result
        return report

    def drive(self, *, timeout_s: float | None = None, hooks: Hooks | None = None,
              stop_on_interrupt: bool = False) -> dict[str, Result]:
        """Poll every step's driver until each has its result."""
        hooks = hooks or Hooks()
        drivers = {name: Driver(self.r, sess.job, on_step=hooks.on_step, timeout_s=timeout_s)
                   for name, sess in self.sessions.items()}
        for d in drivers.values():
            d.nap = False
        results: dict[str, Result] = {}
        trimmed = 0.0
        try:
            while len(results) < len(drivers):
                self._round(drivers, results)
                if hooks.check and not self.cancelled:  # (stopping: workers may leave)
                    hooks.check()
                trimmed = self._trim(trimmed)
                if all(d.loaded for name, d in drivers.items() if name not in results):
                    time.sleep(0.01 if hooks.on_step else WATCH_EVERY_S)
            trim_copied(self.r, self.graph)  # what the last readers copied
        except KeyboardInterrupt:
            INTERRUPTED.clear()  # handled here
            if not (stop_on_interrupt and self.graph.unbounded):
                raise
            self._cancel()
            for name, d in drivers.items():
                results.setdefault(name, d.stop_streaming())
        except JobFailed as exc:
            self._fail_rest(results, str(exc))
            raise
        finally:
            for name, d in drivers.items():
                self.sessions[name].outages = d.outages
        return results

    def _round(self, drivers: dict[str, Driver], results: dict[str, Result]) -> None:
        """Poll each step still running once."""
        for name, d in drivers.items():
            if name not in results and (res := d.poll()) is not None:
                results[name] = res
                if self.graph.unbounded:  # a step was cancelled: so is the graph
                    self._cancel()

    def _trim(self, last: float) -> float:
        """:func:`trim_copied` every TRIM_EVERY_S; when it last ran."""
        now = time.monotonic()
        if now - last < TRIM_EVERY_S:
            return last
        trim_copied(self.r, self.graph)
        return now

    def _cancel(self) -> None:
        self.cancelled = True
        for s in self.graph.steps:
            self.r.hset(keys.meta(s.job_id), "state", JobState.CANCELLED.value)

    def _fail_rest(self, results: dict[str, Result], why: str) -> None:
        """A step failed: so does every step still running, naming why."""
        for s in self.graph.steps:
            if s.name not in results:
                fail(self.r, self.sessions[s.name].job, f"graph {self.graph.id}: {why}")


def trim_copied(r: redis.Redis, graph: Graph) -> int:
    """Trim from each step's output stream what every step reading it has
    copied (their cursors moved past it in the same call that loaded it);
    the number of entries removed.  Best effort: a failed trim is retried
    next time."""
    removed = 0
    for s in graph.steps:
        if s.leaf:
            continue
        upto = _copied_by_all(r, graph, s.name, s.job_id)
        if upto is None:
            continue
        try:
            if upto == END:
                removed += int(r.xtrim(keys.output(s.job_id), maxlen=0, approximate=False))
            else:
                removed += int(r.xtrim(keys.output(s.job_id), minid=upto, approximate=False))
        except redis.RedisError as exc:
            log.debug("graph %s: trimming %s: %s", graph.id, s.job_id, exc)
    return removed


def _copied_by_all(r: redis.Redis, graph: Graph, name: str, job_id: str) -> str | None:
    """The stream id below which every reader of step ``name`` has copied
    its output (END: all of it; None: nothing to trim)."""
    ids: list[tuple[int, int]] = []
    for reader in graph.steps:
        if name not in reader.inputs:
            continue
        src = reader.spec.source
        assert src.type == "upstream"
        pos: bytes | None = r.hget(keys.cursor(reader.job_id), "pos")  # type: ignore[assignment]
        if pos is None:
            return None
        text = pos.decode()
        if text == DONE:
            continue
        at = text.split("|")
        if len(at) != len(src.jobs):
            return None
        for mine in (p for p, up in zip(at, src.jobs, strict=True) if up == job_id):
            if mine == END:
                continue
            ms, _, seq = mine.partition("-")
            try:
                ids.append((int(ms), int(seq or 0)))
            except ValueError:
                return None  # a partition position: an aggregate's, nothing in its stream
    if not ids:
        return END
    low = min(ids)
    return None if low == (0, 0) else f"{low[0]}-{low[1]}"
