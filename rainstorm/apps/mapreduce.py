"""`rainstorm mapreduce`: Hadoop-streaming-style jobs on the engine.

Two exactly-once jobs in a row, on one shuffle that never passes through
this process:
1. map: the mapper (a program fed input lines, writing ``key<TAB>value``
   lines; or a callable ``module:fn(line)`` yielding ``(key, value)``), whose
   pairs are grouped by key with the ``group`` aggregate into N state
   partitions (crc32 of the key; N = the number of reducers), folded by the
   workers; the job's sink is ``keep``: its state stays where it is;
2. reduce: a job whose source is that state (``source.type: state``): one
   entry per partition, and a worker reads its partition straight from
   Redis, keys sorted, so a key is never split between reducer calls (a
   program gets ``key<TAB>value`` lines sorted by key; a callable is called
   ``fn(key, values)``); a partition's output lines, sorted, are committed in
   one entry into the job's output stream;
3. this process streams the output stream into ``DIR/part-00000`` …
   (part p = state partition p), in a temporary directory renamed into
   place, so a killed run never leaves a half-written output.  It holds one
   page of output at a time, never the groups.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from typing import Any, cast

import redis

from rainstorm.coordinator.outputs import check_writable
from rainstorm.coordinator.progress import JobStatus
from rainstorm.coordinator.seal import output_rows
from rainstorm.coordinator.session import RunReport
from rainstorm.errors import TOO_LARGE_FOR_ONE_CALL, IncompleteResult, UsageError, one_line
from rainstorm.job import decode_records
from rainstorm.jobstore import load_job
from rainstorm.local.run import LocalRun, RunOptions
from rainstorm.lua import LIMITS
from rainstorm.protocol.entries import data_of
from rainstorm.sources.inputs import resolve_inputs
from rainstorm.sources.remote import RemoteFile, is_http, is_url, names_something
from rainstorm.spec import JobSpec, parse_spec

Runner = Callable[[JobSpec, RunOptions], RunReport]
CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


@dataclass
class MapReduceReport:
    output: Path
    parts: int
    keys: int
    output_lines: int
    map_seconds: float
    reduce_seconds: float
    map_job: str
    reduce_job: str


# --combiner sum: the built-in partial sum (Hadoop's LongSumReducer used as
# a combiner; Spark's reduceByKey(add))
SUM_COMBINER = "sum"


def prefix_glob(text: str) -> str:
    """MapleJuice-style input prefix: 'logs/part' means 'logs/part*' when
    nothing is named 'logs/part'.  A URL is a prefix only where its scheme
    can list one (s3://, gs://, file://, ...; asked with one request): an
    http(s) URL names one file, or with a trailing '/' a page's links, as
    for `rainstorm run` (an http server lists nothing it is not asked for)."""
    if any(c in text for c in "*?["):
        return text
    if is_url(text):
        return text if is_http(text) or names_something(text) else text + "*"
    return text if Path(text).exists() else text + "*"


# Without --partitions: one reducer per this many input bytes (2/5 of what
# one call may carry), 2 to MAX_REDUCERS (settings.state_partitions' range)
INPUT_BYTES_PER_REDUCER = LIMITS.bytes * 2 // 5
MIN_REDUCERS, MAX_REDUCERS = 2, 1024


def auto_partitions(inputs: list[str]) -> int:
    """The number of reducers when none is given: one per 8 MiB of input.

    Spark gives a shuffle as many partitions as its input has splits, so a
    larger input gets more reducers by itself; here the size also keeps each
    reducer inside the one-call cap (LIMITS.bytes, 20 MiB) that both its
    folded groups and its output part must fit.  A line of distinct keys
    folds to about its own bytes, and its output line (``key<TAB>value``,
    framed) takes ~1.3x a 13-byte input line and ~1.5x an 8-byte one, so a
    reducer's 8 MiB of input leaves room.  A mapper that emits more than it
    reads can still need more ``--partitions``, and the error says so."""
    total = sum(f.size if isinstance(f, RemoteFile) else f.stat().st_size
                for f in resolve_inputs(inputs))
    return max(MIN_REDUCERS, min(MAX_REDUCERS, -(-total // INPUT_BYTES_PER_REDUCER)))


def is_callable_ref(text: str) -> bool:
    return bool(CALLABLE.match(text)) and not Path(text).exists()


def map_spec(mapper: str, inputs: list[str], partitions: int,
             combiner: str | None = None, parallelism: int = 2) -> JobSpec:
    """The map job.  ``combiner`` SUM_COMBINER: the values of a key are
    summed as they come (the ``sum`` aggregate: no value lists, no combiner
    calls), so each reducer call gets the key's total as its one value."""
    summed = combiner == SUM_COMBINER
    if is_callable_ref(mapper):
        ops: list[dict[str, Any]] = [
            {"op": "flat_map", "fn": mapper},
            {"op": "key_by", "fn": "pair_key", "value": "pair_value"}]
    else:
        ops = [{"op": "pipe", "cmd": _argv(mapper, "--mapper")},
               {"op": "key_by", "fn": "tab_key",
                "value": "tab_number" if summed else "tab_value"}]
    shuffle = {"op": "sum"} if summed else {"op": "group", "combiner": combiner}
    return parse_spec({"name": "mapreduce-map", "source": {"type": "text", "paths": inputs},
                       "pipeline": [*ops, shuffle],
                       "sink": {"type": "keep"},
                       "settings": {"parallelism": parallelism,
                                    "state_partitions": partitions}}, "--mapper")


def reduce_spec(reducer: str, map_job: str, parallelism: int = 2) -> JobSpec:
    op: dict[str, Any] = {"op": "reduce"}
    if is_callable_ref(reducer):
        op["fn"] = reducer
    else:
        op["cmd"] = _argv(reducer, "--reducer")
    return parse_spec({"name": "mapreduce-reduce", "source": {"type": "state", "job": map_job},
                       "pipeline": [op], "sink": {"type": "keep"},
                       "settings": {"parallelism": parallelism, "batch_entries": 1}},
                      "--reducer")


class PhaseIncomplete(IncompleteResult):
    """A phase's input went partly to the dead letters, so the output would
    silently miss it: the run fails instead (exit status 3), as Hadoop fails
    a job whose task keeps failing, naming the first dead letter's reason."""

    def __init__(self, phase: str, job_id: str, dead: int, first_error: str) -> None:
        super().__init__(job_id, dead)
        self.first_error = first_error
        hint = (" (a reducer's output above the cap cannot be committed: run it with more "
                "--partitions)" if phase == "reduce" and TOO_LARGE_FOR_ONE_CALL in first_error
                else "")
        self.args = (f"the {phase} job {job_id} ended with {dead} dead letter(s), so its "
                     f"output would miss them; the first: {first_error}{hint}",)


def _complete(phase: str, rep: RunReport) -> None:
    """Raise PhaseIncomplete for a phase that ended with dead letters (the
    first one's reason was read into the report while its Redis ran)."""
    dead = rep.status.dead_letters
    if not dead:
        return
    raise PhaseIncomplete(phase, rep.job_id, dead,
                          one_line(rep.first_dead) if rep.first_dead else "(not readable)")


def _argv(text: str, option: str) -> list[str]:
    try:
        argv = shlex.split(text)
    except ValueError as exc:
        raise UsageError(f"{option}: cannot parse command {text!r}: {exc}") from None
    if not argv:
        raise UsageError(f"{option}: empty command")
    if shutil.which(argv[0]) is None and not Path(argv[0]).is_file():
        raise UsageError(f"{option}: program not found: {argv[0]}")
    return argv


class PartWriter:
    """Streams a reduce job's output stream into part files (line order
    within a part as committed: sorted by its reduce task)."""

    def __init__(self, d: Path, partitions: int) -> None:
        self.d = d
        self.partitions = partitions
        self.lines = 0

    def __call__(self, report: RunReport, r: redis.Redis) -> None:
        job = load_job(r, report.job_id)
        files = [(self.d / f"part-{p:05d}").open("w", encoding="utf-8")
                 for p in range(self.partitions)]
        try:
            for _id, fields in output_rows(r, job):
                # an entry is one reduce task's output, (part, line) pairs of one part
                for part, pairs in groupby(decode_records(data_of(fields)), key=itemgetter(0)):
                    lines = list(map(itemgetter(1), pairs))
                    files[int(part)].write("\n".join(lines) + "\n")
                    self.lines += len(lines)
        finally:
            for fh in files:
                fh.close()


def run_mapreduce(
    mapper: str,
    reducer: str,
    inputs: list[str],
    output: Path,
    *,
    partitions: int | None = None,
    combiner: str | None = None,
    on_progress: Callable[[str, JobStatus], None] | None = None,
    options: RunOptions | None = None,
    runner: Runner | None = None,
    **fields: Any,
) -> MapReduceReport:
    """Map, shuffle, reduce into ``output``/part-NNNNN.  ``options`` (and
    ``fields`` replacing some of them: ``workers``, ``redis_url``,
    ``allow_exec``, ``allow_modules``, ``timeout_s`` ...) run both jobs;
    ``on_progress(phase, status)`` follows them.  ``runner(spec, options)``
    runs each job instead of one LocalRun (rainstorm.testing.run_in_process
    runs them in-process).  ``partitions`` None: :func:`auto_partitions`."""
    opts = replace(options or RunOptions(), **fields)
    allow_exec = opts.allow_exec
    if output.exists():
        raise UsageError(f"--output: {output} already exists (remove it or choose another)")
    check_writable(output, "--output")  # before the job: its result must have a place
    if combiner is not None and combiner != SUM_COMBINER and not is_callable_ref(combiner):
        raise UsageError(f"--combiner: expected module:function or {SUM_COMBINER}, "
                         f"got {combiner!r}")
    for flag, value in (("--mapper", mapper), ("--reducer", reducer)):
        if not allow_exec and not is_callable_ref(value):
            raise UsageError(f"{flag} {value!r} is a program; pass --allow-exec to run it")
    if partitions is None:
        partitions = auto_partitions(inputs)
    tmp = output.parent / f".{output.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        writer = PartWriter(tmp, partitions)
        with nullcontext(None) if runner else LocalRun(opts) as env:
            run: Runner = runner or cast(LocalRun, env).run

            def phase(name: str, on_result: Any = None) -> RunOptions:
                return replace(opts, on_progress=(lambda st: on_progress(name, st))
                               if on_progress else None, on_result=on_result, job_id=None)

            t0 = time.perf_counter()
            mrep = run(map_spec(mapper, inputs, partitions, combiner), phase("map"))
            _complete("map", mrep)
            t1 = time.perf_counter()
            rrep = run(reduce_spec(reducer, mrep.job_id), phase("reduce", writer))
            _complete("reduce", rrep)
            t2 = time.perf_counter()
        os.replace(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    groups = rrep.status.stages[0].records_in
    return MapReduceReport(output, partitions, groups, writer.lines, t1 - t0, t2 - t1,
                           mrep.job_id, rrep.job_id)
