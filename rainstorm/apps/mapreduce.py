"""`rainstorm mapreduce`: Hadoop-streaming-style jobs on the engine.

Two exactly-once jobs in a row:
1. map: the mapper (a program fed input lines, writing ``key<TAB>value``
   lines; or a callable ``module:fn(line)`` yielding ``(key, value)``), whose
   pairs are grouped by key with the ``group`` aggregate;
2. after the map phase has finished, the coordinator writes the groups,
   hash-partitioned by key (crc32) into N partitions and sorted by key, as
   shuffle files (one JSON line ``[partition, key, [values]]`` per key, so a
   key is never split between reducer calls); the reduce job runs the reducer
   over them (a program gets ``key<TAB>value`` lines sorted by key; a callable
   is called ``fn(key, values)``);
3. the outputs land in ``DIR/part-00000`` … (lines sorted within each part),
   written to a temporary directory and renamed into place, so a killed run
   never leaves a half-written output.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

from rainstorm.coordinator.outputs import check_writable
from rainstorm.coordinator.progress import JobStatus
from rainstorm.coordinator.session import RunReport
from rainstorm.errors import UsageError
from rainstorm.local.run import LocalRun, RunOptions
from rainstorm.protocol.entries import partition_of
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


def prefix_glob(text: str) -> str:
    """MapleJuice-style input prefix: 'logs/part' means 'logs/part*'."""
    if any(c in text for c in "*?[") or Path(text).exists():
        return text
    return text + "*"


def is_callable_ref(text: str) -> bool:
    return bool(CALLABLE.match(text)) and not Path(text).exists()


def map_spec(mapper: str, inputs: list[str], partitions: int,
             combiner: str | None = None) -> JobSpec:
    if is_callable_ref(mapper):
        ops: list[dict[str, Any]] = [
            {"op": "flat_map", "fn": mapper},
            {"op": "key_by", "fn": "pair_key", "value": "pair_value"}]
    else:
        ops = [{"op": "pipe", "cmd": _argv(mapper, "--mapper")},
               {"op": "key_by", "fn": "tab_key", "value": "tab_value"}]
    return parse_spec({"name": "mapreduce-map", "source": {"type": "text", "paths": inputs},
                       "pipeline": [*ops, {"op": "group", "combiner": combiner}],
                       "settings": {"parallelism": partitions}}, "--mapper")


def reduce_spec(reducer: str, shuffle: list[Path], partitions: int) -> JobSpec:
    op: dict[str, Any] = {"op": "reduce"}
    if is_callable_ref(reducer):
        op["fn"] = reducer
    else:
        op["cmd"] = _argv(reducer, "--reducer")
    return parse_spec({"name": "mapreduce-reduce",
                       "source": {"type": "text", "paths": [str(p) for p in shuffle],
                                  "batch_bytes": 1 << 18},
                       "pipeline": [op], "settings": {"parallelism": partitions}}, "--reducer")


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


def write_shuffle(groups: dict[str, list[Any]], partitions: int, d: Path) -> list[Path]:
    d.mkdir(parents=True)
    by_part: list[list[str]] = [[] for _ in range(partitions)]
    for key in groups:
        by_part[partition_of(key, partitions)].append(key)
    paths = []
    for p, keys_ in enumerate(by_part):
        path = d / f"shuffle-{p:05d}.jsonl"
        with path.open("w", encoding="utf-8") as fh:
            for key in sorted(keys_):
                fh.write(json.dumps([p, key, groups[key]], ensure_ascii=False) + "\n")
        paths.append(path)
    return paths


def run_mapreduce(
    mapper: str,
    reducer: str,
    inputs: list[str],
    output: Path,
    *,
    partitions: int = 2,
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
    runs them in-process)."""
    opts = replace(options or RunOptions(), **fields)
    allow_exec = opts.allow_exec
    if output.exists():
        raise UsageError(f"--output: {output} already exists (remove it or choose another)")
    check_writable(output, "--output")  # before the job: its result must have a place
    if combiner is not None and not is_callable_ref(combiner):
        raise UsageError(f"--combiner: expected module:function, got {combiner!r}")
    for flag, value in (("--mapper", mapper), ("--reducer", reducer)):
        if not allow_exec and not is_callable_ref(value):
            raise UsageError(f"{flag} {value!r} is a program; pass --allow-exec to run it")
    mspec = map_spec(mapper, inputs, partitions, combiner)
    tmp = output.parent / f".{output.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with nullcontext(None) if runner else LocalRun(opts) as env:
            run: Runner = runner or cast(LocalRun, env).run

            def phase(name: str) -> RunOptions:
                return replace(opts, on_progress=(lambda st: on_progress(name, st))
                               if on_progress else None)

            t0 = time.perf_counter()
            mrep = run(mspec, phase("map"))
            t1 = time.perf_counter()
            groups = mrep.result
            assert isinstance(groups, dict)
            shuffle = write_shuffle(groups, partitions, tmp / "_shuffle")
            rrep = run(reduce_spec(reducer, shuffle, partitions), phase("reduce"))
            t2 = time.perf_counter()
        assert isinstance(rrep.result, list)
        parts: list[list[str]] = [[] for _ in range(partitions)]
        for part, line in rrep.result:
            parts[int(part)].append(line)
        for p, lines in enumerate(parts):
            lines.sort()
            (tmp / f"part-{p:05d}").write_text("".join(ln + "\n" for ln in lines),
                                                encoding="utf-8")
        shutil.rmtree(tmp / "_shuffle")
        os.replace(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return MapReduceReport(output, partitions, len(groups), len(rrep.result), t1 - t0,
                           t2 - t1, mrep.job_id, rrep.job_id)
