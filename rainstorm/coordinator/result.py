"""Reading a finished job's result and writing its sink.

A batch job whose input went (in part) to the dead-letter stream finishes
``done`` with an incomplete result: its meta hash holds ``dead_letters`` = N
and ``incomplete`` = 1, and `run`, `submit`, `result` and the Dataset actions
say so (exit status 3, IncompleteResult) -- unless the spec opted into
skipping bad records (``settings.skip_bad_records``): then ``incomplete`` is
0 and they warn.
"""

from __future__ import annotations

import functools
import heapq
import json
import logging
import math
import operator
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import compress, repeat
from pathlib import Path
from typing import IO, Any, cast

import orjson
import redis

from rainstorm import keys, native
from rainstorm.coordinator import json_pool, seal
from rainstorm.coordinator.outputs import atomic_file
from rainstorm.errors import IncompleteResult, RainstormError
from rainstorm.job import Job, JobState, decode_records
from rainstorm.jobstore import load_job
from rainstorm.lua import Snapshot
from rainstorm.operators.aggregates import DECODE_ERRORS, Aggregator, Columns
from rainstorm.protocol import meta
from rainstorm.protocol.entries import data_of
from rainstorm.replies import as_int, as_str
from rainstorm.state import (
    KeyRead,
    Part,
    agg_of,
    base_columns,
    combine,
    digests,
    emits_windows,
    finished_part,
    fold,
    iter_finished_parts,
    partitions,
    read_key,
)

log = logging.getLogger(__name__)

WRITE_CHUNK = 5000
TOP_KEPT = 1000


def jsonable_key(k: Any) -> str:
    return k if isinstance(k, str) else json.dumps(k, default=repr)


def keys_as_str(state: dict[Any, Any]) -> dict[str, Any]:
    """An aggregate with JSON-able keys (no copy when they already are str)."""
    if not state or set(map(type, state)) == {str}:  # (C speed: no Python loop)
        return state
    return {jsonable_key(k): v for k, v in state.items()}


class StateResult(Mapping[str, Any]):
    """A keyed aggregate's result, read from Redis one state partition at a
    time whenever it is iterated (no process holds the whole aggregate);
    random access (``result[k]``) reads it all once and keeps it."""

    def __init__(self, read: Callable[[], Iterator[dict[Any, Any] | Columns]],
                 read_one: Callable[[int], dict[Any, Any] | Columns] | None = None,
                 n_parts: int = 0) -> None:
        """``read``: every partition in order; ``read_one(i)``: partition i
        alone, of ``n_parts`` (for encoding them in parallel: json_pool)."""
        self._read = read
        self._one, self._n = read_one, n_parts
        self._all: dict[str, Any] | None = None
        self._summary: tuple[int, int, list[tuple[str, Any]]] | None = None

    def summary(self, n: int) -> tuple[int, list[tuple[str, Any]]]:
        """(number of keys, the top ``n``: see :func:`top`) in one read,
        remembered (a finished result does not change)."""
        if self._summary is None or self._summary[1] < n:
            summ = Summary(n)
            for part in self._parts():
                if isinstance(part, dict):
                    summ.add(part)
                else:
                    summ.add_columns(*part)
            self.preset(summ)
        assert self._summary is not None
        return self._summary[0], self._summary[2][:n]

    def preset(self, summ: Summary) -> None:
        """The summary, made by whoever read every partition already
        (the coordinator's end-of-job fold: one read less)."""
        self._summary = (summ.count, summ.n, summ.best())

    def _parts(self) -> Iterator[dict[str, Any] | Columns]:
        """The result, partition by partition, with JSON-able keys: a dict,
        or the columns of a columnar one (str keys; no dict built)."""
        if self._all is not None:
            yield self._all
            return
        for part in self._read():
            yield _str_keys(part)

    def partitions(self) -> Iterator[dict[str, Any]]:
        """The result, partition by partition, with JSON-able keys."""
        for part in self._parts():
            yield _as_dict(part)

    def json_bodies(self) -> Iterator[str]:
        """Each partition as the body of a JSON object (no braces; "" when
        empty), in order: by forked processes when the result is large
        (json_pool), else here one at a time."""
        procs = json_pool.usable(self._summary[0]) \
            if self._one is not None and self._summary is not None and self._all is None else 0
        if procs:
            yield from json_pool.bodies(self._json_body, self._n, procs)
            return
        for part in self._parts():
            yield _json_body(part)

    def _json_body(self, index: int) -> str:
        assert self._one is not None
        return _json_body(_str_keys(self._one(index)))

    def _whole(self) -> dict[str, Any]:
        if self._all is None:
            self._all = {k: v for part in self.partitions() for k, v in part.items()}
        return self._all

    def __iter__(self) -> Iterator[str]:
        for part in self._parts():
            yield from part if isinstance(part, dict) else part[0]

    def items(self) -> Iterator[tuple[str, Any]]:  # type: ignore[override]
        for part in self._parts():
            yield from part.items() if isinstance(part, dict) else zip(*part, strict=True)

    def __getitem__(self, key: str) -> Any:
        return self._whole()[key]

    def __len__(self) -> int:
        if self._all is not None:
            return len(self._all)
        return self.summary(TOP_KEPT)[0]

    def __repr__(self) -> str:
        return f"StateResult({self._whole()!r})"


def _str_keys(part: dict[Any, Any] | Columns) -> dict[str, Any] | Columns:
    """A partition with JSON-able keys (columns have str keys already)."""
    return keys_as_str(part) if isinstance(part, dict) else part


def _as_dict(part: dict[str, Any] | Columns) -> dict[str, Any]:
    return part if isinstance(part, dict) else dict(zip(*part, strict=True))


def _json_body(part: dict[str, Any] | Columns) -> str:
    """A partition as the body of a JSON object (no braces; "" when empty).
    Columns of integers are written by native code, with no dict between
    (orjson's text: tests/unit/test_native.py; 742 k keys of real text's
    word count: ~0.09 s less).  A key twice in crafted columns stays twice
    there (a dict keeps one): a folded base never holds one twice."""
    if not isinstance(part, dict):
        body = native.json_body(*part) if native.json_body is not None else None
        if body is not None:
            return body
        part = _as_dict(part)
    return dumps(part)[1:-1] if part else ""


Result = Mapping[str, Any] | list[Any]


def materialized(result: Result) -> Result:
    """A result that no longer needs its server: a StateResult read whole."""
    return dict(result) if isinstance(result, StateResult) else result


def state_result(r: redis.Redis, job: Job, allow: tuple[str, ...]) -> StateResult:
    """The job's aggregate as it is now, read partition by partition (and,
    unless it emits windows, one partition by index)."""
    if emits_windows(job):
        return StateResult(lambda: iter_finished_parts(r, job, allow))
    agg = functools.cache(lambda: agg_of(job, allow))  # at the first read, as iter_finished_parts

    def one(i: int) -> dict[Any, Any] | Columns:
        return finished_part(r, job, agg(), Part(job.id, job.plan.last.index, i))

    return StateResult(lambda: iter_finished_parts(r, job, allow), one, partitions(job))


def collect(r: redis.Redis, job: Job, digest: seal.OutputDigest | None = None, *,
            allow: tuple[str, ...]) -> Result:
    """The job's full result: a key -> value map (aggregate, read lazily
    partition by partition) or a record list; ``digest``: fed every output
    entry read (a records job); ``allow``: the modules a ``reduce_by_key``
    function may come from (the caller's policy)."""
    if job.plan.aggregate:
        return state_result(r, job, allow)
    out: list[Any] = []
    for id_, fields in seal.output_rows(r, job):
        if digest is not None:
            digest.add(id_, fields)
        try:
            out.extend(decode_records(data_of(fields)))
        except DECODE_ERRORS as exc:  # not written by a commit: never part of a result
            log.warning("job %s: skipping output entry %s, not a record batch: %s",
                        job.id, as_str(id_), exc)
    return out


def store(r: redis.Redis, job: Job, result: Result,
          dead_letters: int = 0, sealed: str | None = None,
          sealed_parts: list[str] | None = None) -> None:
    """Mark the job done and leave its result where redis-cli can read it:
    the top keys in the sorted set rs:{job}:top, and with a ``redis`` sink the
    whole aggregate in the hash rs:{job}:result.  ``dead_letters``: input
    that is missing from it (see the module's doc); ``sealed``: the digest of
    its result keys (rainstorm.coordinator.seal), checked when it is read;
    ``sealed_parts``: an aggregate's digest per state partition (so that one
    key's partition can be checked alone)."""
    if isinstance(result, Mapping) and job.spec.sink.type == "redis":
        _write_hash(r, keys.result(job.id), result)
    pipe = r.pipeline(transaction=True)
    if isinstance(result, Mapping):
        pipe.delete(keys.top(job.id))
        best = top(result, TOP_KEPT)
        if best and all(isinstance(v, int | float) for _, v in best):
            pipe.zadd(keys.top(job.id), dict(best))
    incomplete = int(dead_letters > 0 and not job.spec.settings.skip_bad_records)
    done: dict[str, Any] = {meta.STATE: JobState.DONE.value, meta.FINISHED_AT: time.time(),
                            meta.DEAD_LETTERS: dead_letters, meta.INCOMPLETE: incomplete}
    if sealed is not None:  # what `result` trusts: a key the worker user may not write
        pipe.hset(keys.seal(job.id), mapping={"sha256": sealed, "dead_letters": dead_letters,
                                              "incomplete": incomplete,
                                              "parts": ",".join(sealed_parts or [])})
    pipe.hset(keys.meta(job.id), mapping=cast(Any, done))
    pipe.execute()
    if job.spec.sink.type == "file" and job.spec.sink.path:
        write_json_atomically(job.spec.sink.path, result)


def _write_hash(r: redis.Redis, key: str, result: Mapping[str, Any]) -> None:
    """The whole aggregate into the hash ``key``, written in chunks as the
    partitions are read (never all of it in one call or in memory)."""
    r.delete(key)
    chunk: dict[str, Any] = {}
    for k, v in _items(result):
        chunk[k] = v if isinstance(v, int | float) else json.dumps(v, default=repr)
        if len(chunk) >= WRITE_CHUNK:
            r.hset(key, mapping=cast(Any, chunk))
            chunk = {}
    if chunk:
        r.hset(key, mapping=cast(Any, chunk))


def _items(result: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    if isinstance(result, StateResult):
        return result.items()
    return iter(result.items())


def completeness(r: redis.Redis, job_id: str) -> tuple[int, bool]:
    """(dead letters, incomplete) of a finished job, from its seal (its meta
    hash for a job finished before seals existed)."""
    raw: Any = r.hmget(keys.seal(job_id), "dead_letters", "incomplete")
    if raw[0] is None:
        raw = r.hmget(keys.meta(job_id), meta.DEAD_LETTERS, meta.INCOMPLETE)
    return as_int(raw[0]), as_int(raw[1]) == 1


def check_complete(job_id: str, dead_letters: int, incomplete: bool,
                   result: Any = None, first: str = "") -> str | None:
    """Raise IncompleteResult for an incomplete result (``first``: the
    oldest dead letter's reason, named in it); for bad records skipped by
    choice, the warning to show (None: nothing to say)."""
    if incomplete:
        raise IncompleteResult(job_id, dead_letters, result, first)
    if dead_letters:
        return (f"warning: {dead_letters} bad records skipped (settings.skip_bad_records); "
                f"see `rainstorm dlq {job_id}`")
    return None


def to_json(result: Result) -> str:
    return "".join(json_chunks(result))


def json_chunks(result: Result) -> Iterator[str]:
    """The result as JSON text, in pieces: an aggregate one partition at a
    time (each encoded in one call of a C encoder: :func:`dumps`)."""
    if not isinstance(result, StateResult):
        yield dumps(result if isinstance(result, list | dict) else dict(result))
        return
    yield "{"
    first = True
    for text in result.json_bodies():
        if text:
            yield text if first else "," + text
            first = False
    yield "}"


def dumps(value: Any) -> str:
    """``value`` as compact JSON (UTF-8 text, not ASCII-escaped; what JSON
    cannot hold as its repr).  orjson (~20x faster than json on a big
    aggregate) unless it cannot say the same as json: an int beyond 64 bits,
    a lone surrogate (TypeError), or NaN/infinity, which orjson writes as
    null (json writes NaN)."""
    try:
        out = orjson.dumps(value, default=repr)
    except TypeError:
        return _json(value)
    if b"null" in out and not _finite(value):
        return _json(value)
    return out.decode()


_NO_FLOATS = {int, str, bool, type(None)}


def _finite(value: Any) -> bool:
    """Holds ``value`` no NaN or infinity (False: perhaps it does)?  At C
    speed for the flat maps and lists a result is."""
    values = value.values() if isinstance(value, dict) else value
    if not isinstance(values, list | tuple | type({}.values())):
        return False
    types = set(map(type, values))
    if types <= _NO_FLOATS:
        return True
    if not types <= {int, float}:
        return False
    try:
        return all(map(math.isfinite, values))
    except OverflowError:
        return False


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=repr, separators=(",", ":"))


def write_json(fh: IO[str], result: Result) -> None:
    for chunk in json_chunks(result):
        fh.write(chunk)


def write_json_atomically(path: str | Path, result: Result) -> None:
    """The result as JSON in ``path``, streamed, replaced atomically."""
    with atomic_file(path) as fh:
        write_json(fh, result)


def load_stored(r: redis.Redis, job: Job, *, allow: tuple[str, ...]) -> Result:
    """A job's result, read again (the folded state or the output stream); a
    finished one only if its keys still match the seal written when it
    finished (JobFailed otherwise).  ``allow``: see :func:`collect`."""
    raw: Any = r.hget(keys.seal(job.id), "sha256")
    if raw is None:  # not finished (a streaming job), or finished before seals existed
        return collect(r, job, allow=allow)
    sealed = raw.decode("ascii", "replace")
    if job.plan.aggregate:  # checked first, then read again as it is shown
        seal.check(job, sealed, combine(digests(r, job)))
        return state_result(r, job, allow)
    digest = seal.OutputDigest()
    result = collect(r, job, digest, allow=allow)
    seal.check(job, sealed, digest.hexdigest())
    return result


def top(result: Mapping[str, Any], n: int) -> list[tuple[str, Any]]:
    """The n largest values, ties broken by key (deterministic), in O(len);
    for non-numeric values (top_k lists) the first n keys.  A StateResult
    is read one partition at a time."""
    if isinstance(result, StateResult):
        return result.summary(max(n, TOP_KEPT))[1][:n]
    if n <= 0 or not result:
        return []
    if not _numeric(result):
        return sorted(result.items())[:n]  # lists (top_k): by key
    return _ranked(_candidates(result, n), n)


_NUMBERS = {int, float, bool}


def _numeric(part: Mapping[str, Any]) -> bool:
    return set(map(type, part.values())) <= _NUMBERS


class Summary:
    """The number of keys and the top ``n`` of an aggregate, fed one
    partition at a time (as a dict, or as the key and value columns of an
    additive aggregate's columnar blob: no dict built).  Once ``n``
    candidates are in, their smallest value is a cut no later key below it
    can pass: a partition's columns are filtered against it at C speed, so
    only the first partitions pay for a heap (64 x 11 k keys: 150 -> ~20 ms)."""

    def __init__(self, n: int) -> None:
        self.n, self.count, self.numeric = n, 0, True
        self.picked: list[tuple[str, Any]] = []
        self.cut: Any = None  # every key of the top n is >= this (numeric only)

    def add(self, part: Mapping[str, Any]) -> None:
        self.count += len(part)
        if self.numeric and not _numeric(part):
            self.numeric = False
        self.picked += _candidates(part, self.n) if self.numeric \
            else sorted(part.items())[:self.n]
        self._prune()

    def add_columns(self, names: list[str], values: Sequence[Any]) -> None:
        self.count += len(names)
        n = self.n
        if n <= 0 or not names:
            return
        if len(names) <= n and self.cut is None:
            self.picked += zip(names, values, strict=True)
        else:
            cut = heapq.nlargest(n, values)[-1] if self.cut is None else self.cut
            keep = list(map(operator.ge, values, repeat(cut)))  # C speed: no Python loop
            self.picked += zip(compress(names, keep), compress(values, keep), strict=True)
        self._prune()

    def _prune(self) -> None:
        """Keep only what may still be in the top n (ties at the cut kept),
        once twice that many candidates are in, and remember the cut."""
        if not self.numeric or self.n <= 0 or len(self.picked) < 2 * self.n:
            return
        cut = heapq.nlargest(self.n, (v for _, v in self.picked))[-1]
        self.picked = [kv for kv in self.picked if kv[1] >= cut]
        self.cut = cut

    def best(self) -> list[tuple[str, Any]]:
        return _ranked(self.picked, self.n) if self.numeric else sorted(self.picked)[:self.n]


def summarize_final(summ: Summary, job: Job, agg: Aggregator, index: int, snap: Snapshot
                    ) -> None:
    """One partition of a finished batch job into ``summ``, from the
    snapshot the end-of-job fold left (no log: the base is the result; an
    additive aggregate's columnar base is read as columns)."""
    where = f"job {job.id} partition {index}"
    cols = base_columns(snap, agg, where)
    if cols is not None:
        summ.add_columns(*cols)
    else:
        summ.add(keys_as_str(agg.finish(fold(snap, agg, where=where))))


def _candidates(part: Mapping[str, Any], n: int) -> list[tuple[str, Any]]:
    """Every item that may be among the n largest (ties at the cut kept)."""
    if n <= 0 or not part:
        return []
    if len(part) <= n:
        return list(part.items())
    cut = sorted(part.values())[-n]
    return [(k, v) for k, v in part.items() if v >= cut]


def _ranked(items: list[tuple[str, Any]], n: int) -> list[tuple[str, Any]]:
    """The n largest of ``items`` by value, ties by key."""
    if len(items) > n:
        cut = heapq.nlargest(n, (v for _, v in items))[-1]
        items = [kv for kv in items if kv[1] >= cut]
    return sorted(items, key=lambda kv: (-kv[1], kv[0]))[:n]


@dataclass(frozen=True)
class StoredResult:
    """A job's result as `rainstorm result` shows it."""

    result: Result
    state: str  # the job's state
    live: bool  # a streaming job still running (or stopped): its result so far
    dead_letters: int
    incomplete: bool


def stored_result(r: redis.Redis, job_id: str, *, allow: tuple[str, ...]) -> StoredResult:
    """The result of a finished job, or of a streaming one so far
    (RainstormError when neither: the job is not done); ``allow``: see
    :func:`collect`."""
    job = load_job(r, job_id)
    state = meta.job_state(r, job_id) or "unknown"
    live = job.spec.unbounded and state in (JobState.RUNNING.value, JobState.CANCELLED.value)
    if state != JobState.DONE.value and not live:
        raise RainstormError(f"job {job_id} is {state}, not done")
    result = load_stored(r, job, allow=allow)
    return StoredResult(result, state, live, *completeness(r, job_id))


def stored_key(r: redis.Redis, job_id: str, key_text: str, *, allow: tuple[str, ...]
               ) -> tuple[KeyRead, Any]:
    """One key of an aggregate's result (finished, or so far for a running
    job), reading only its state partition; (what was read, the key as found).
    ``key_text`` is tried as text, then as JSON (``42``, ``["a", 1]``) for
    non-text keys.  A finished job's partition is checked against its seal."""
    job = load_job(r, job_id)
    if not job.plan.aggregate:
        raise RainstormError(f"job {job_id} has no keyed aggregate: --key reads one key of "
                             "an aggregate's state")
    check = _part_check(r, job)
    found = read_key(r, job, allow, key_text, check)
    key: Any = key_text
    if not found.found:
        try:
            alt = json.loads(key_text)
        except ValueError:
            alt = None
        if isinstance(alt, list):
            alt = tuple(alt)
        if alt is not None and not isinstance(alt, str):
            other = read_key(r, job, allow, alt, check)
            if other.found:
                found, key = other, alt
    return found, key


def _part_check(r: redis.Redis, job: Job) -> Callable[[int, str], None] | None:
    """Checks one state partition's digest against a finished job's seal."""
    raw: Any = r.hmget(keys.seal(job.id), "sha256", "parts")
    if raw[0] is None or not raw[1]:
        return None  # not finished (a streaming job), or sealed before partitions
    parts = raw[1].decode("ascii", "replace").split(",")
    whole = combine(parts) == raw[0].decode("ascii", "replace")

    def check(p: int, digest: str) -> None:
        sealed = parts[p] if whole and p < len(parts) else ""
        seal.check(job, sealed, digest)

    return check
