"""The Python API: lazy, immutable, chainable Datasets (Spark-RDD style).

    from rainstorm import Dataset

    counts = (Dataset.read_text("logs/*.txt")
              .flat_map(str.split)
              .map(lambda w: (w.lower(), 1))
              .reduce_by_key(lambda a, b: a + b))
    print(counts.top(10))

A Dataset is a description: a source and a list of operators.  Every
transformation returns a new Dataset and runs nothing; an *action*
(``collect``, ``count``, ``take``, ``first``, ``reduce``, ``top``, ``save``,
``save_as_text_file``) builds the same :class:`JobSpec`
that ``rainstorm run`` runs (``spec()`` shows it, ``explain()`` its stages)
and runs it, exactly once, through :func:`rainstorm.apps.execute.execute`:
by default an embedded Redis and 2 forked local workers; with ``redis_url=``
(or env ``RAINSTORM_REDIS``) on that Redis, where ``workers=0`` means "only
remote workers" (``rainstorm worker --redis URL``).  Action keyword arguments
override the defaults set by :func:`rainstorm.apps.execute.configure`
(re-exported here).  This module is the API (sources, transformations,
actions); rainstorm.apps.functions writes its functions into the spec.

Functions: a built-in name (``"split_words"``), ``"package.module:function"``,
or any Python callable.  A module-level function of an importable module is
sent by reference (``module:function``; workers must be allowed to import it,
which local workers are); anything else (a lambda, a closure, a function of
``__main__`` / the script) is pickled with cloudpickle and signed with the
shared ``RAINSTORM_SECRET`` (see rainstorm.signing), or, for an action on an
embedded server (no ``redis_url``: every worker is a child of this process),
with a random key of this process when none is set.  A few callables map to
built-ins and need neither: ``str.split`` (split_words), ``str.lower``,
``str.upper``, ``str.strip``, ``len`` (length), and ``min``/``max`` in
``reduce_by_key``.

Records: lines (str) from ``read_text``; dicts ``{column: str}`` from
``read_csv``; ``(key, value)`` pairs after ``key_by`` (later ``map``/``filter``
see and must keep pairs, as in Spark's pair RDDs).  Records cross Redis as
msgpack, so lists come back as tuples.  ``reduce_by_key`` / ``count_by_key``
on a dataset without ``key_by`` read its records as ``(key, value)`` pairs.
An aggregate ends its job (``distinct``, ``group_by_key`` and ``sort_by`` are
aggregates here too); a transformation after it, a ``union`` and
``run_all`` (several outputs of one run) make the action a dataflow graph
of several jobs (rainstorm.apps.dataflow, rainstorm.graph).  ``sort_by`` runs
two jobs (rainstorm.apps.sorting); part files are written by
rainstorm.apps.parts.  A join (``join``, ``left_outer_join``,
``right_outer_join``, ``full_outer_join``, ``cogroup``) runs three jobs on
one Redis: each side grouped by key into the same state partitions, then a
job reading partition p of both (a ``state`` source with ``other``); see
docs/python-api.md.
"""

from __future__ import annotations

import csv
import functools
import heapq
import itertools
import json
import secrets
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from operator import itemgetter
from pathlib import Path
from typing import Any, TypeVar

import redis

from rainstorm.apps import parts, sorting
from rainstorm.apps.dataflow import Leaf, compile_graph, gives_pairs, graph_lines, needs_graph
from rainstorm.apps.execute import (
    configure,
    configured,
    execute,
    one_server,
    run_graph_report,
    run_key,
    run_report,
    run_script,
)
from rainstorm.apps.functions import Fn, encode_fn, importable_ref
from rainstorm.apps.plans import AGG_OPS, Join, Op, Plan, Sort, encode_op, op_label
from rainstorm.connection import connect
from rainstorm.coordinator.result import materialized
from rainstorm.coordinator.session import RunReport
from rainstorm.errors import IncompleteResult, RainstormError, UsageError
from rainstorm.jobstore import load_job
from rainstorm.monitor.deadletters import first_dead_letter
from rainstorm.operators import builtins, hash_lookup, lookup
from rainstorm.operators.resolve import resolve
from rainstorm.ops.tasks import kill_job
from rainstorm.spec import JobSpec, Settings, parse_spec
from rainstorm.state import iter_finished

__all__ = ["Dataset", "configure", "configured", "encode_fn", "execute", "importable_ref",
           "run_script"]

T = TypeVar("T")
# join method -> the operator over the cogroup records (builtins of the same name)
_JOINS = {"join": "flat_map", "left_outer_join": "flat_map", "right_outer_join": "flat_map",
          "full_outer_join": "flat_map", "cogroup": "map"}



class Dataset:
    """A lazy, immutable description of a computation; see the module doc."""

    __slots__ = ("_p",)

    def __init__(self, plan: Plan) -> None:
        self._p = plan

    # -- sources -----------------------------------------------------------
    @classmethod
    def read_text(cls, paths: str | Path | Iterable[str | Path], *,
                  batch_bytes: int | None = None) -> Dataset:
        """Lines (str, without the newline) of files, directories or globs."""
        src: dict[str, Any] = {"type": "text", "paths": _paths(paths)}
        if batch_bytes is not None:
            src["batch_bytes"] = batch_bytes
        return cls(Plan(src))

    @classmethod
    def read_csv(cls, paths: str | Path | Iterable[str | Path], *,
                 columns: Iterable[str] | None = None, header: bool = True,
                 malformed: str = "skip", delimiter: str = ",",
                 batch_bytes: int | None = None) -> Dataset:
        """Rows of CSV files as dicts ``{column: str}`` (values stay strings),
        parsed by the built-in ``parse_csv``.  ``columns`` default to the first
        line of the first file (``header=True``); lines equal to the header
        are skipped in every file.  Malformed rows (bad quoting, wrong field
        count) are skipped and counted, or with ``malformed="dead_letter"``
        sent to the dead-letter stream.  One record per line: quoted fields
        may hold commas, not newlines."""
        names = list(columns) if columns is not None else None
        if names is None:
            if not header:
                raise UsageError("read_csv: give columns=[...] for files without a header")
            names = _csv_header(_paths(paths), delimiter)
        ds = cls.read_text(paths, batch_bytes=batch_bytes)
        return ds._then(Op("flat_map", "parse_csv", {"columns": names,
                                                      "malformed": malformed,
                                                      "delimiter": delimiter}))

    @classmethod
    def read_json(cls, paths: str | Path | Iterable[str | Path], *,
                  batch_bytes: int | None = None) -> Dataset:
        """JSON lines: one JSON value per line (objects as dicts, arrays as
        tuples once they cross Redis), parsed by the built-in ``parse_json``;
        blank lines are skipped, and a line that is not JSON goes to the
        dead-letter stream with the reason (the action then raises
        IncompleteResult, unless ``with_settings(skip_bad_records=True)``)."""
        return cls.read_text(paths, batch_bytes=batch_bytes)._then(Op("flat_map", "parse_json"))

    @classmethod
    def from_stream(cls, key: str, field: str | None = "line", *, start: str = "0",
                    batch_records: int | None = None) -> Dataset:
        """The entries of a Redis stream (on the job's Redis): the value of
        ``field`` per entry, or with ``field=None`` the whole entry as a dict.
        Unbounded: only ``explain()``, ``spec()`` and (soon) ``start()`` apply."""
        src: dict[str, Any] = {"type": "stream", "key": key, "field": field, "start": start}
        if batch_records is not None:
            src["batch_records"] = batch_records
        return cls(Plan(src))

    # -- transformations ----------------------------------------------------
    def map(self, fn: Fn, *, args: dict[str, Any] | None = None) -> Dataset:
        """One output per record."""
        return self._then(Op("map", fn, dict(args or {})))

    def filter(self, fn: Fn, *, args: dict[str, Any] | None = None) -> Dataset:
        """The records for which ``fn`` is truthy."""
        return self._then(Op("filter", fn, dict(args or {})))

    def flat_map(self, fn: Fn, *, args: dict[str, Any] | None = None) -> Dataset:
        """Any number of outputs per record (``fn`` returns an iterable)."""
        return self._then(Op("flat_map", fn, dict(args or {})))

    def map_partitions(self, fn: Fn, *, args: dict[str, Any] | None = None) -> Dataset:
        """``fn(list_of_records) -> iterable``, once per batch (a batch is what
        a worker commits at once, not a fixed partition)."""
        return self._then(Op("map_partitions", fn, dict(args or {})))

    def sample(self, fraction: float | bool, seed: Any = None, *args: Any) -> Dataset:
        """Each record with probability ``fraction`` (Bernoulli sampling,
        without replacement), decided from ``seed`` and the record itself
        (the built-in ``sample``), so the same seed gives the same sample and
        a batch run twice (a worker died) keeps the same records.  No seed:
        one drawn now, kept by this Dataset.  PySpark's
        ``sample(False, fraction, seed)`` is accepted too."""
        if isinstance(fraction, bool):  # PySpark: sample(withReplacement, fraction, seed)
            if fraction:
                raise UsageError("sample: sampling with replacement is not supported; "
                                 "use sample(fraction, seed)")
            if len(args) > 1:
                raise UsageError("sample: expected sample(False, fraction, seed)")
            fraction, seed = seed, (args[0] if args else None)
        elif args:
            raise UsageError("sample: expected sample(fraction, seed=None)")
        try:
            fraction = builtins.check_fraction(fraction)
            seed = secrets.randbits(63) if seed is None else builtins.check_seed(seed)
        except ValueError as exc:
            raise UsageError(f"sample: {exc}") from None
        return self._then(Op("map_partitions", "sample", {"fraction": fraction, "seed": seed}))

    def lookup(self, table: str | Path, *, key: str, on: str | None = None,
               how: str = "inner", format: str | None = None,  # noqa: A002
               delimiter: str = ",") -> Dataset:
        """A stream-table (enrichment) join: ``(record, row)`` for each row
        of the table file whose column ``key`` equals the record's key (its
        field ``on``, or the first element of a pair), compared as text;
        ``how="left"`` keeps records without a row as ``(record, None)``.
        The table (CSV with a header, or JSON lines: ``format="jsonl"``) is
        read whole by every worker, up to 256 MiB; it must not change while
        the job runs (workers refuse a changed file).  Works on streams
        too (Flink's lookup join).  See rainstorm.operators.lookup."""
        args: dict[str, Any] = {"path": str(table), "key": key, "how": how,
                                "delimiter": delimiter}
        if on is not None:
            args["field"] = on
        if format is not None:
            args["format"] = format
        try:
            lookup.make_lookup(**lookup.stamp(args))  # one-line errors now, not on a worker
        except ValueError as exc:
            raise UsageError(f"lookup: {exc}") from None
        return self._then(Op("flat_map", "lookup", args), keyed=False)

    def lookup_hash(self, hash: str, *, on: str | None = None,  # noqa: A002
                    how: str = "inner", cache_s: float = 1.0) -> Dataset:
        """A stream-table join against a table kept in the Redis hash
        ``hash`` on the job's Redis (field: a key, value: its row as JSON):
        ``(record, row)`` for a record whose key (its field ``on``, or a
        pair's first element) is in the hash; ``how="left"`` keeps the others
        as ``(record, None)``.  Rows may change while the job runs: a worker
        sees a change within ``cache_s`` seconds (processing-time lookups, as
        Flink's lookup join; see rainstorm.operators.hash_lookup)."""
        args: dict[str, Any] = {"hash": hash, "how": how, "cache_s": cache_s}
        if on is not None:
            args["field"] = on
        try:
            hash_lookup.make_lookup_hash(**args)  # one-line errors now, not on a worker
        except ValueError as exc:
            raise UsageError(f"lookup_hash: {exc}") from None
        return self._then(Op("flat_map", "lookup_hash", args), keyed=False)

    def key_by(self, fn: Fn, value: Fn | None = None) -> Dataset:
        """``(fn(r), value(r))`` pairs (``value`` default: the record itself)."""
        return self._then(Op("key_by", fn, {}, value), keyed=True)

    def window(self, size_s: float, *, time: Fn, slide_s: float | None = None,
               max_delay_s: float = 0, allowed_lateness_s: float = 0,
               args: dict[str, Any] | None = None) -> Dataset:
        """Event-time windows for the aggregate that follows (after a
        ``key_by``): each ``(key, value)`` counts in the windows of length
        ``size_s`` (every ``slide_s``; default tumbling) holding ``time(value)``
        (seconds), under the key ``"<window start>|<key>"``; the watermark is
        the largest event time seen minus ``max_delay_s``, and records whose
        windows all closed (watermark past end + ``allowed_lateness_s``) go
        to the side output rs:{job}:late (see docs/windows.md)."""
        if not self._p.keyed:
            raise UsageError("window(): key the records first (key_by), windows are per key")
        spec = {"size_s": size_s, "slide_s": slide_s, "max_delay_s": max_delay_s,
                "allowed_lateness_s": allowed_lateness_s}
        return self._then(Op("window", time, args or {}, window=spec), keyed=True)

    def repartition(self, n: int) -> Dataset:
        """End the stage here: records move to ``n`` partitions of the next
        stage (by crc32 of the key when keyed, round-robin otherwise)."""
        if not isinstance(n, int) or n < 1:
            raise UsageError(f"repartition: expected a positive number of partitions, got {n!r}")
        return self._then(Op("repartition", partitions=n))

    def coalesce(self, n: int) -> Dataset:
        """Same as :meth:`repartition` here (a stage boundary with ``n``
        partitions): there is no cheaper narrow coalesce on Redis streams."""
        return self.repartition(n)

    def reduce_by_key(self, op: Fn) -> Dataset:
        """Per key, combine the values: ``"sum"``/``"min"``/``"max"`` (the
        built-in aggregates), or a binary function ``f(a, b)`` that is
        associative and commutative, returning msgpack-encodable values
        (the ``reduce_by_key`` aggregate).  Ends the pipeline."""
        if op in (min, max):
            op = op.__name__
        if isinstance(op, str) and op in AGG_OPS:
            return self._pairs()._then(Op(op), aggregate=True)
        if isinstance(op, str) and ":" not in op:
            raise UsageError(f"reduce_by_key: expected 'sum', 'min', 'max', a function or "
                             f"package.module:function, got {op!r}")
        if not (isinstance(op, str) or callable(op)):
            raise UsageError(f"reduce_by_key: expected a function, got {op!r}")
        return self._pairs()._then(Op("reduce_by_key", op), aggregate=True)

    def count_by_key(self) -> Dataset:
        """The number of records per key.  Ends the pipeline."""
        return self._pairs()._then(Op("count"), aggregate=True)

    def count_by_value(self) -> Dataset:
        """The number of times each distinct record occurs.  Ends the pipeline."""
        if self._p.keyed:
            raise UsageError("count_by_value: the records are keyed pairs; use count_by_key")
        return self._then(Op("count"), aggregate=True)

    def distinct(self, num_partitions: int | None = None) -> Dataset:
        """The distinct records: computed by the workers as the ``count``
        aggregate keyed by the record itself; the records are its keys.
        Lists are keyed (and come back) as tuples; dicts cannot be keys
        (their records fail, as in PySpark).  ``num_partitions``: its state
        partitions (``settings.state_partitions``).  Ends the pipeline."""
        ds = self._partitions("distinct", num_partitions)
        ds = ds._then(Op("key_by", "tuplify", {}, "one"), keyed=True)
        out = ds._then(Op("count"), aggregate=True)
        return Dataset(replace(out._p, ends="distinct", keys_only=True))

    def group_by_key(self, num_partitions: int | None = None) -> Dataset:
        """``(key, [values])`` pairs, the values of a key in no particular
        order, grouped by the workers (the ``group`` aggregate, as
        `rainstorm mapreduce`'s shuffle).  Records without a ``key_by`` are
        read as ``(key, value)`` pairs.  Ends the pipeline."""
        ds = self._partitions("group_by_key", num_partitions)._pairs()
        return Dataset(replace(ds._then(Op("group"), aggregate=True)._p, ends="group_by_key"))

    def sort_by(self, keyfunc: Fn, ascending: bool = True,
                num_partitions: int | None = None) -> Dataset:
        """The records sorted by ``keyfunc(record)`` (numbers, strings or
        tuples of them), by range partitioning as Spark does: a first job
        samples the keys to cut them into ``num_partitions`` ranges (default
        ``settings.state_partitions``), a second one groups every record
        under its range, each batch sorted by the workers; the ranges are
        then read and merged one at a time, in order (rainstorm.apps.sorting).
        After an aggregate (whose result is read whole anyway), its collected
        result is sorted in this process.  Equal keys in no particular
        order.  Ends the pipeline."""
        if not (isinstance(keyfunc, str) or callable(keyfunc)):
            raise UsageError(f"sort_by: expected a key function, got {keyfunc!r}")
        if not isinstance(ascending, bool):
            raise UsageError(f"sort_by: ascending must be True or False, got {ascending!r}")
        _check_partitions("sort_by", num_partitions)
        srt = Sort(keyfunc, ascending, num_partitions, self._p)
        return Dataset(replace(self._p, aggregate=True, ends="sort_by", sort=srt))

    # -- joins ----------------------------------------------------------------
    def join(self, other: Dataset, num_partitions: int | None = None) -> Dataset:
        """PySpark's ``join`` of two ``(key, value)`` datasets (the inner
        join): ``(key, (va, vb))`` for every pair of values with equal keys,
        so a key present n times here and m times there gives n * m records.
        Three jobs run on one Redis: each side grouped by key (``group``)
        into ``num_partitions`` state partitions (default: the sides'
        ``state_partitions``), then a job reading partition p of both sides
        at once; the sides' jobs are deleted after it.  A transformation, not
        an action: map, filter, aggregate or collect the result.  Limits:
        docs/python-api.md."""
        return self._join(other, "join", num_partitions)

    def left_outer_join(self, other: Dataset, num_partitions: int | None = None) -> Dataset:
        """:meth:`join`, plus ``(key, (va, None))`` for each value of a key
        that ``other`` does not have."""
        return self._join(other, "left_outer_join", num_partitions)

    def right_outer_join(self, other: Dataset, num_partitions: int | None = None) -> Dataset:
        """:meth:`join`, plus ``(key, (None, vb))`` for each value of a key
        that this dataset does not have."""
        return self._join(other, "right_outer_join", num_partitions)

    def full_outer_join(self, other: Dataset, num_partitions: int | None = None) -> Dataset:
        """Both outer joins: a key on one side only pairs with None."""
        return self._join(other, "full_outer_join", num_partitions)

    def cogroup(self, other: Dataset, num_partitions: int | None = None) -> Dataset:
        """PySpark's ``cogroup``: ``(key, (values here, values there))`` for
        every key of either side (values in no particular order; collected,
        lists come back as tuples)."""
        return self._join(other, "cogroup", num_partitions)

    def union(self, *others: Dataset) -> Dataset:
        """The records of this dataset and of ``others``, duplicates kept (as
        PySpark's union).  Runs as a dataflow graph: each dataset a step, read
        by one step (rainstorm.graph).  Keyed pairs stay keyed when every
        side is keyed."""
        for o in others:
            if not isinstance(o, Dataset):
                raise UsageError(f"union: expected Datasets, got {type(o).__name__}")
        if not others:
            return self
        plans = (self._p, *(o._p for o in others))
        for p in plans:
            if p.sort is not None or p.join is not None:
                raise UsageError("union: a side is a sort_by or a join, which runs several jobs "
                                 "of its own; collect() it, or union before it")
        return Dataset(Plan({"type": "upstream"}, inputs=plans,
                            keyed=all(gives_pairs(p) for p in plans), name=self._p.name,
                            settings=self._p.settings))

    @staticmethod
    def run_all(collect: Mapping[str, Dataset] | None = None, *,
                save: Mapping[str, tuple[Dataset, str | Path]] | None = None,
                **run: Any) -> dict[str, list[Any]]:
        """Several outputs in one run, as one dataflow graph (Flink's several
        sinks of one job): what the datasets share (the same Dataset
        transformed two ways, a branch) is computed once.  ``collect``:
        name -> Dataset, each returned like its ``collect()``; ``save``: name
        -> (Dataset, path), written like its ``save(path)``.  Names are step
        names (letters, digits, ``_``, ``-``).  Returns name -> records."""
        leaves: list[Leaf] = []
        targets: dict[str, Dataset] = {}
        for name, ds in (collect or {}).items():
            leaves.append(ds._leaf("run_all", name, None))
            targets[name] = ds
        for name, (ds, path) in (save or {}).items():
            sink = {"type": "file", "path": str(Path(path).resolve())}
            leaves.append(ds._leaf("run_all", name, sink))
            targets[name] = ds
        if not leaves:
            raise UsageError("run_all: give at least one dataset to collect or save")
        report = run_graph_report(compile_graph(leaves, run_key(run)), raw_keys=True, **run)
        out: dict[str, list[Any]] = {}
        for name, ds in targets.items():
            result = report.results[name]
            if isinstance(result, list):
                out[name] = result
            else:
                out[name] = list(result) if ds._p.keys_only else list(dict(result).items())
        return out

    def window_join(self, other: Dataset, size_s: float, *, time: Fn | str,
                    how: str = "inner", slide_s: float | None = None,
                    max_delay_s: float = 0, allowed_lateness_s: float = 0) -> Dataset:
        """A windowed join of two keyed datasets (Flink's window join): for
        each key and each event-time window (``size_s``, sliding every
        ``slide_s``; default tumbling) holding records of both sides,
        ``(key, (left value, right value), window start)`` for every pair;
        ``how="left"``/``"right"``/``"full"`` also pair a side's values that
        found no partner in that window with None; ``"cogroup"`` gives
        ``(key, ([lefts], [rights]), start)``.  ``time``: a value's event time
        in seconds (a function of the value, or the name of its field).  On
        streams a window's pairs are emitted once, when the shared watermark
        (largest event time - ``max_delay_s``) passes its end +
        ``allowed_lateness_s``; later records go to the window step's late
        stream (docs/windows.md).  Records without ``key_by`` are read as
        ``(key, value)`` pairs.  A graph of four steps.  Files are read in no
        event-time order, so on a bounded dataset give ``max_delay_s`` at
        least the input's span of event times, or records go late."""
        if not isinstance(other, Dataset):
            raise UsageError(f"window_join: expected a Dataset to join with, got "
                             f"{type(other).__name__}")
        if how not in ("inner", "left", "right", "full", "cogroup"):
            raise UsageError(f"window_join: how must be inner, left, right, full or cogroup, "
                             f"not {how!r}")
        if isinstance(time, str):
            at: Fn = "side_field"
            targs: dict[str, Any] = {"name": time}
        elif callable(time):
            fn = time
            at, targs = (lambda v: fn(v[1])), {}
        else:
            raise UsageError(f"window_join: time must be a function or a field name, got "
                             f"{time!r}")
        sides = [ds._pairs().map("join_side", args={"side": side})
                 for ds, side in ((self, "left"), (other, "right"))]
        grouped = sides[0].union(sides[1]).window(
            size_s, time=at, args=targs, slide_s=slide_s, max_delay_s=max_delay_s,
            allowed_lateness_s=allowed_lateness_s).group_by_key()
        return grouped.flat_map("window_join", args={"how": how})

    def _leaf(self, action: str, name: str, sink: dict[str, Any] | None) -> Leaf:
        if not isinstance(self, Dataset):
            raise UsageError(f"{action}: expected Datasets, got {type(self).__name__}")
        self._bounded(action)
        if self._p.sort is not None or self._p.join is not None:
            raise UsageError(f"{action}: {name!r} is a sort_by or a join, which runs several "
                             "jobs of its own; run it alone")
        if sink is not None and not self._p.aggregate:
            raise UsageError(f"{action}: save only an aggregate here ({name!r} holds records: "
                             "collect it, or save() it alone)")
        return Leaf(name, self._p, self._p.ops, sink)

    def _join(self, other: Any, how: str, n: int | None) -> Dataset:
        if not isinstance(other, Dataset):
            raise UsageError(f"{how}: expected a Dataset to join with, got "
                             f"{type(other).__name__}")
        _check_partitions(how, n)
        for side, ds in (("this dataset", self), ("the other dataset", other)):
            ds._joinable(how, side)
        given = {int(ds._setting("state_partitions")) for ds in (self, other)
                 if "state_partitions" in ds._p.settings}
        if n is None and len(given) > 1:
            raise UsageError(f"{how}: the two sides have different state_partitions "
                             f"({self._p.settings.get('state_partitions')} and "
                             f"{other._p.settings.get('state_partitions')}); give "
                             "num_partitions=N for both")
        parts = n or (given.pop() if given else Settings().state_partitions)
        source = {"type": "state", "job": "join-left", "other": "join-right"}  # until they run
        return Dataset(Plan(source, (Op(_JOINS[how], how),), name=self._p.name,
                             settings={"batch_entries": 1},
                             join=Join(how, self._p, other._p, parts)))

    def _joinable(self, how: str, side: str) -> None:
        """UsageError unless this dataset can be a side of a join."""
        if not self.bounded:
            raise UsageError(f"{how}: {side} reads the {self._p.source.get('type')} "
                             f"{self._p.source.get('key')!r}, which never ends; only bounded "
                             "datasets join")
        if self._p.aggregate:
            ends = self._p.ends or "an aggregate (reduce_by_key/count_by_key)"
            raise UsageError(f"{how}: {side} ends in {ends}; a join reads (key, value) "
                             "records: collect() it and join in Python, or join before it")
        if not self._p.ops and self._p.source.get("type") == "text":
            raise UsageError(f"{how}: {side} holds lines of text, not (key, value) pairs; "
                             "key_by() or map() them to pairs first")

    def _side_job(self, how: str, n: int, run: dict[str, Any], key: bytes | None) -> str:
        """Run this side of a join: its pairs grouped by key into ``n`` state
        partitions, kept in Redis; the job's id.  A record that is not a
        pair fails it with one line naming it."""
        ds = self if self._p.keyed else self._then(Op("map", "check_pair"))
        grouped = ds.group_by_key(n)
        try:
            report = grouped._launch(how, run, grouped._p.ops, key=key, raw_keys=False,
                                     on_result=_ignore, sink={"type": "keep"})
        except IncompleteResult as exc:
            raise UsageError(f"{how}: a side failed: {_first_error(exc, run)}") from None
        return report.job_id

    def named(self, name: str) -> Dataset:
        """The job's name (job ids are ``<name>-<time>``)."""
        return Dataset(replace(self._p, name=name))

    def with_settings(self, **settings: Any) -> Dataset:
        """Spec settings: ``parallelism``, ``batch_entries``, ``max_backlog``,
        ``claim_idle_ms``, ``max_deliveries``, ``compact_every``…"""
        return Dataset(replace(self._p, settings={**self._p.settings, **settings}))

    # -- the spec -------------------------------------------------------------
    @property
    def bounded(self) -> bool:
        if self._p.inputs:
            return all(Dataset(p).bounded for p in self._p.inputs)
        return self._p.source.get("type") in ("text", "state")

    def spec(self) -> JobSpec:
        """The JobSpec an action runs (callables encoded; see the module doc)."""
        if needs_graph(self._p):
            raise UsageError("spec(): this dataset runs as a dataflow graph of several jobs "
                             "(a union, or a step after an aggregate); explain() shows it")
        if self._p.join is not None:
            raise UsageError(f"spec(): a {self._p.join.how} runs three jobs (one per side, "
                             "then the join); explain() shows what runs")
        if self._p.sort is not None:
            raise UsageError("spec(): a sort_by runs two jobs (a sample of the keys, then the "
                             "range shuffle), or sorts an aggregate's result here; explain() "
                             "shows what runs")
        return self._spec(self._p.ops)

    def explain(self, file: Any = None) -> str:
        """The stages, as ``rainstorm explain`` prints them; printed (to
        ``file``, default stdout) and returned."""
        print(text := "\n".join(self._explained()), file=file or sys.stdout)
        return text

    def _explained(self) -> list[str]:
        from rainstorm.plan import explain

        srt = self._p.sort
        jn = self._p.join
        if srt is None and jn is None and needs_graph(self._p):
            return graph_lines([Leaf("result", self._p, self._p.ops)])
        if srt is None and jn is not None:
            lines = [f"{jn.how}: 3 jobs on one Redis: each side grouped by key into "
                     f"{jn.partitions} state partitions, then partition p of both read at once"]
            for name, side in (("left", jn.left), ("right", jn.right)):
                lines += [f"{name} side (sink keep):",
                          *Dataset(side).group_by_key(jn.partitions)._explained()]
            return [*lines, "the join:", *explain(self._spec(self._p.ops))]
        if srt is None:
            return explain(self.spec())
        base = self._unsorted()
        if srt.here:
            return ["sort_by: in this process, over the collected result of:",
                    *base._explained()]
        return ["sort_by: 2 jobs, then the ranges are read in order",
                *explain(base._spec((*base._p.ops, *_sample_ops(srt)))),
                *explain(base._spec((*base._p.ops, *_shuffle_ops(srt, [], [0]))))]

    # -- actions ------------------------------------------------------------
    def collect(self, **run: Any) -> list[Any]:
        """Every record (in no particular order, but sorted after
        ``sort_by``); for an aggregate the ``(key, value)`` pairs (after
        ``distinct``: the distinct records)."""
        if self._p.sort is not None:
            return self._sorted(run, lambda ranges: [r for rng in ranges for r in rng])
        result = self._run("collect", run)
        if isinstance(result, dict):
            return list(result) if self._p.keys_only else list(result.items())
        return result

    def count(self, **run: Any) -> int:
        """The number of records (of keys, for an aggregate), counted by the workers."""
        if self._p.sort is not None:
            return self._unsorted().count(**run)
        if self._p.aggregate:
            return len(self.collect(**run))
        ops = (*self._p.ops, Op("key_by", "const", {"value": "n"}, "one"), Op("count"))
        result = self._run("count", run, ops)
        assert isinstance(result, dict)
        return int(sum(result.values()))

    def take(self, n: int, **run: Any) -> list[Any]:
        """``n`` records (fewer if there are not as many): the first ``n``
        after ``sort_by`` (reading the sorted ranges stops there), else any
        ``n`` (not necessarily the first lines of the input).  The job runs
        to its end: it does not stop early once ``n`` records exist."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise UsageError(f"take: expected a number of records >= 0, got {n!r}")
        self._bounded("take")
        if n == 0:
            return []
        if self._p.sort is not None:
            return self._sorted(run, lambda ranges: list(
                itertools.islice(itertools.chain.from_iterable(ranges), n)))
        return self.collect(**run)[:n]

    def first(self, **run: Any) -> Any:
        """One record (the first after ``sort_by``); ValueError when there
        is none, as in PySpark."""
        got = self.take(1, **run)
        if not got:
            raise ValueError("Dataset is empty")
        return got[0]

    def reduce(self, fn: Fn, **run: Any) -> Any:
        """All records folded with ``fn(a, b)``, associative and commutative
        (as in Spark: records are folded in no particular order), by the
        workers: the ``reduce_by_key`` aggregate under one constant key.
        After an aggregate (or ``sort_by``), over its collected records, in
        this process.  ValueError for an empty dataset, as in PySpark."""
        if (isinstance(fn, str) and ":" not in fn) or not (isinstance(fn, str) or callable(fn)):
            raise UsageError(f"reduce: expected a function f(a, b) or package.module:function, "
                             f"got {fn!r}")
        if self._p.aggregate:
            if not callable(fn):
                raise UsageError("reduce: after an aggregate it runs here: give a function")
            records = self.collect(**run)
            if not records:
                raise ValueError("Can not reduce() empty Dataset")
            return functools.reduce(fn, records)
        ops = (*self._p.ops, Op("key_by", "const", {"value": 0}, "identity"),
               Op("reduce_by_key", fn))
        result = self._run("reduce", run, ops)
        assert isinstance(result, dict)
        if not result:
            raise ValueError("Can not reduce() empty Dataset")
        return next(iter(result.values()))

    def top(self, k: int, *, key: Callable[[Any], Any] | None = None,
            **run: Any) -> list[Any]:
        """The ``k`` largest records, largest first (``key`` as in ``sorted``;
        records are compared here, after the job); for an aggregate the ``k``
        ``(key, value)`` pairs with the largest values (``key`` applies to the
        value; ties in no particular order)."""
        if self._p.sort is not None:
            return self._unsorted().top(k, key=key, **run)
        if self._p.aggregate and not self._p.keys_only:
            items = self.collect(**run)
            return heapq.nlargest(k, items, key=(lambda kv: kv[1]) if key is None
                                  else (lambda kv: key(kv[1])))
        return heapq.nlargest(k, self.collect(**run), key=key)

    def save(self, path: str | Path, *, parts: bool = False, **run: Any) -> None:
        """Write the result atomically.  ``parts=False``: one file (temp file +
        rename): an aggregate as one JSON object (``{key: value}``, keys as
        text, by the coordinator's file sink), records as JSON lines.
        ``parts=True``: ``path`` is a directory of part files (see
        :meth:`save_as_text_file`), each line a record as JSON (an
        aggregate's ``[key, value]``), which ``read_json`` reads back."""
        if parts:
            self._save_parts(path, _json_line, run)
            return
        from rainstorm.coordinator.outputs import atomic_file

        target = str(Path(path).resolve())
        if self._p.sort is not None:
            with atomic_file(target) as fh:
                self._sorted(run, lambda ranges: fh.writelines(
                    _json_line(rec) + "\n" for rng in ranges for rec in rng))
            return
        if self._p.aggregate and not self._p.keys_only:
            self._run("save", run, sink={"type": "file", "path": target})
            return
        with atomic_file(target) as fh:
            fh.writelines(_json_line(rec) + "\n" for rec in self.collect(**run))

    def save_as_text_file(self, path: str | Path, **run: Any) -> None:
        """Spark's saveAsTextFile: the directory ``path`` of part files
        ``part-00000`` … and ``_SUCCESS``, each line ``str(record)``, written
        atomically (complete, or not at all).  One part per partition: of the
        last stage for records (a contiguous slice of the records each, so
        the parts of a ``sort_by`` are in order), of the state for an
        aggregate (``settings.state_partitions``, or ``num_partitions=``),
        read and written one partition at a time.  An existing ``path`` is
        refused unless it is an earlier such output, which is replaced."""
        self._save_parts(path, str, run)

    def start(self, sink: str | Path | None = None, **run: Any) -> dict[Any, Any] | list[Any]:
        """Run an unbounded dataset (``from_stream``) until it is cancelled
        (`rainstorm kill-job JOB [--keep]`, Ctrl-C or SIGTERM); returns its
        last result.  ``sink``: a file that receives every output record
        exactly once (JSON lines), or an aggregate rewritten atomically every
        2 s.  Without it, follow the job with `rainstorm tail JOB`."""
        if self.bounded:
            raise UsageError("Dataset.start(): this dataset ends; use collect(), count(), "
                             "top() or save()")
        target = {"type": "file", "path": str(Path(sink).resolve())} if sink is not None \
            else None
        if needs_graph(self._p):  # (its steps stop together: cancel any one of them)
            doc = compile_graph([Leaf("result", self._p, self._p.ops, target)], run_key(run))
            last = run_graph_report(doc, raw_keys=False, **run).results["result"]
            return last if isinstance(last, list) else dict(last)
        spec = self._spec(self._p.ops, run_key(run))
        if target is not None:
            spec = spec.model_copy(update={"sink": spec.sink.model_copy(update=target)})
        return execute(spec, raw_keys=False, **run)

    def __repr__(self) -> str:
        src = self._p.source
        what = src.get("paths") if src.get("type") == "text" else src.get("key")
        ops = " -> ".join(op_label(o) for o in self._p.ops) or "(source only)"
        if self._p.sort is not None:
            ops += f" -> sort_by({op_label(Op('', self._p.sort.keyfunc)).strip('()')})"
        return f"<Dataset {src.get('type')} {what!r}: {ops}>"

    # -- internals ------------------------------------------------------------
    def _then(self, op: Op, *, keyed: bool | None = None, aggregate: bool = False) -> Dataset:
        base = self._open(op.op)
        return Dataset(replace(base._p, ops=(*base._p.ops, op),
                               keyed=base._p.keyed if keyed is None else keyed,
                               aggregate=aggregate, ends=""))

    def _open(self, what: str) -> Dataset:
        """Where an operator goes: this dataset, or after an aggregate a new
        step reading its ``(key, value)`` pairs (its keys after ``distinct``:
        rainstorm.apps.dataflow).  UsageError after ``sort_by``."""
        if self._p.sort is not None:
            raise UsageError(f"{what}: the dataset ends in sort_by; collect() it and go on in "
                             "Python, or transform before sort_by")
        if not self._p.aggregate:
            return self
        p = self._p
        return Dataset(Plan({"type": "upstream"}, inputs=(p,), keyed=gives_pairs(p),
                            name=p.name, settings=p.settings))

    def _partitions(self, what: str, n: int | None) -> Dataset:
        """This dataset with ``n`` state partitions (None: as it is)."""
        _check_partitions(what, n)
        base = self._open(what)
        return base if n is None else base.with_settings(state_partitions=n)

    def _setting(self, name: str) -> int:
        """A numeric setting of the spec: as set, else its default."""
        return int(self._p.settings.get(name, getattr(Settings(), name)))

    def _unsorted(self) -> Dataset:
        """What ``sort_by`` sorts."""
        assert self._p.sort is not None
        return Dataset(self._p.sort.base)

    def _sorted(self, run: dict[str, Any], consume: Callable[[Iterator[list[Any]]], T]) -> T:
        """Run ``sort_by``'s two jobs; ``consume(ranges)`` gets the sorted
        ranges, in order, while the second job's Redis still holds them."""
        srt = self._p.sort
        assert srt is not None
        base = self._unsorted()
        if srt.here:
            return consume(base._sorted_here(srt, run))
        sample = base._run("sort_by", run, (*base._p.ops, *_sample_ops(srt)))
        assert isinstance(sample, list)
        n = srt.ranges or base._setting("state_partitions")
        cuts = sorting.boundaries(sample, n)
        shuffle = Dataset(replace(base._p, settings={**base._p.settings, "state_partitions": n}))
        ops = (*base._p.ops, *_shuffle_ops(srt, cuts, sorting.range_keys(n)[:len(cuts) + 1]))
        out: list[T] = []

        def on_result(report: RunReport, r: redis.Redis) -> None:
            out.append(consume(sorting.ranges(report, r, not srt.ascending)))

        try:
            shuffle._report("sort_by", run, ops, on_result=on_result)
        except IncompleteResult as exc:
            exc.result = out[0] if out else None
            raise
        return out[0]

    def _sorted_here(self, srt: Sort, run: dict[str, Any]) -> Iterator[list[Any]]:
        """This dataset's collected records sorted here, cut into the ranges
        of :meth:`_sorted` (``srt.ranges`` contiguous slices)."""
        fn = srt.keyfunc if callable(srt.keyfunc) else \
            resolve(srt.keyfunc, {}, ("*",), "sort_by")
        keyed = [(builtins.tuplify(fn(rec)), rec) for rec in self.collect(**run)]
        try:
            keyed.sort(key=itemgetter(0), reverse=not srt.ascending)
        except TypeError as exc:
            raise UsageError(f"sort_by: the sort keys do not compare with each other: {exc}"
                             ) from None
        records = [rec for _, rec in keyed]
        n = srt.ranges or self._setting("state_partitions")
        return (records[i * len(records) // n:(i + 1) * len(records) // n] for i in range(n))

    def _save_parts(self, path: str | Path, line: Callable[[Any], str],
                    run: dict[str, Any]) -> None:
        self._bounded("save")
        target = parts.check_target(path, "save")
        if self._p.sort is not None:
            n = self._p.sort.ranges or self._setting("state_partitions")
            with parts.part_directory(target, n) as files:
                self._sorted(run, lambda ranges: files.write_all(map(line, rng)
                                                                 for rng in ranges))
            return
        if self._p.aggregate:
            keys_only = self._p.keys_only

            def on_result(report: RunReport, r: redis.Redis) -> None:
                job = load_job(r, report.job_id)
                files.write_all(map(line, part.keys() if keys_only else part.items())
                                for part in iter_finished(r, job, ("*",)))

            with parts.part_directory(target, self._setting("state_partitions")) as files:
                self._report("save", run, self._p.ops, on_result=on_result)
            return
        records = self._run("save", run)
        assert isinstance(records, list)
        n = next((op.partitions for op in reversed(self._p.ops) if op.op == "repartition"
                  and op.partitions), None) or self._setting("parallelism")
        with parts.part_directory(target, n) as files:
            for i in range(n):
                files.write(i, map(line, records[i * len(records) // n:
                                                 (i + 1) * len(records) // n]))

    def _pairs(self) -> Dataset:
        """Keyed records: as they are after a key_by, else read as (key, value) pairs."""
        if self._p.keyed:
            return self
        return self._then(Op("key_by", "pair_key", {}, "pair_value"), keyed=True)

    def _spec(self, ops: tuple[Op, ...], key: bytes | None = None,
              source: dict[str, Any] | None = None,
              sink: dict[str, Any] | None = None) -> JobSpec:
        if not ops:
            ops = (Op("map", "identity"),)  # a spec needs one operator
        pipeline = [encode_op(op, n, key) for n, op in enumerate(ops)]
        data = {"name": self._p.name, "source": source or self._p.source,
                "pipeline": pipeline, "settings": self._p.settings}
        if sink:
            data["sink"] = sink
        return parse_spec(data, origin="built by Dataset")

    def _bounded(self, action: str) -> None:
        if not self.bounded:
            raise UsageError(f"Dataset.{action}(): this dataset reads the "
                             f"{self._p.source.get('type')} {self._p.source.get('key')!r}, "
                             "which never ends; only explain(), spec() and start() apply")

    def _run(self, action: str, run: dict[str, Any], ops: tuple[Op, ...] | None = None,
             sink: dict[str, Any] | None = None) -> dict[Any, Any] | list[Any]:
        ops = self._p.ops if ops is None else ops
        if needs_graph(self._p):
            self._bounded(action)
            graph = run_graph_report(compile_graph([Leaf("result", self._p, ops, sink)],
                                                   run_key(run)), raw_keys=sink is None, **run)
            result = graph.results["result"]
            return result if isinstance(result, list) else dict(result)
        if self._p.join is None:
            self._bounded(action)
            spec = self._spec(ops, run_key(run), sink=sink)
            return execute(spec, raw_keys=sink is None, **run)
        report = self._launch(action, run, ops, raw_keys=sink is None, sink=sink)
        # (as execute does) the user's program asked for the whole result
        return report.result if isinstance(report.result, list) else dict(report.result)

    def _report(self, action: str, run: dict[str, Any], ops: tuple[Op, ...],
                on_result: Callable[[RunReport, redis.Redis], None]) -> RunReport:
        """Run ``ops``, reading the result with ``on_result`` (keys not re-read)."""
        return self._launch(action, run, ops, raw_keys=False, on_result=on_result)

    def _launch(self, action: str, run: dict[str, Any], ops: tuple[Op, ...], *,
                raw_keys: bool, key: bytes | None = None,
                on_result: Callable[[RunReport, redis.Redis], None] | None = None,
                sink: dict[str, Any] | None = None) -> RunReport:
        """Run ``ops`` over this dataset's source; a join's on one Redis
        after its two sides ran (:meth:`_side_job`), whose jobs are deleted
        once it is done (or failed).  ``key``: what inline functions are
        signed with (default: :func:`run_key` of ``run``)."""
        self._bounded(action)
        jn = self._p.join
        if needs_graph(self._p):
            doc = compile_graph([Leaf("result", self._p, ops, sink)],
                                run_key(run) if key is None else key)
            return run_graph_report(doc, raw_keys=raw_keys, on_result=on_result,
                                    **run).reports["result"]
        if jn is None:
            spec = self._spec(ops, run_key(run) if key is None else key, sink=sink)
            return run_report(spec, raw_keys=raw_keys, on_result=on_result, **run)
        with one_server(run) as run:
            key = run_key(run) if key is None else key
            sides: list[str] = []
            try:
                for side in (jn.left, jn.right):
                    sides.append(Dataset(side)._side_job(jn.how, jn.partitions, run, key))
                source = {"type": "state", "job": sides[0], "other": sides[1]}

                def finish(report: RunReport, r: redis.Redis) -> None:
                    if on_result is not None:
                        on_result(report, r)
                    else:  # before its server (or the sides' state) may go
                        report.result = materialized(report.result)
                    _drop_jobs(r, sides)
                    sides.clear()

                return run_report(self._spec(ops, key, source, sink), raw_keys=raw_keys,
                                  on_result=finish, **run)
            finally:
                if sides and run.get("redis_url"):  # the join failed: drop what it left
                    with _client(run["redis_url"]) as r:
                        _drop_jobs(r, sides)


def _ignore(_report: RunReport, _r: redis.Redis) -> None:
    """An ``on_result`` that reads nothing (a join's side keeps its state)."""


def _drop_jobs(r: redis.Redis, job_ids: list[str]) -> None:
    """Delete jobs a join no longer needs (best effort: cleanup must not
    hide the join's own error)."""
    for job_id in job_ids:
        try:
            kill_job(r, job_id)
        except (redis.RedisError, RainstormError):
            pass


@contextmanager
def _client(url: str) -> Iterator[redis.Redis]:
    r = connect(url)
    try:
        yield r
    finally:
        r.close()


def _first_error(exc: IncompleteResult, run: dict[str, Any]) -> str:
    """What failed a join's side: its first dead letter's error."""
    first = getattr(exc, "first_error", None)  # rainstorm.testing's OperatorFailed
    if isinstance(first, str):
        return first
    url = run.get("redis_url")
    if url:
        with _client(url) as r:
            row = first_dead_letter(r, exc.job_id)
        if row is not None:
            return f"{row.error} (record {str(row.record)[:80]})"
    return str(exc)


# -- encoding functions ------------------------------------------------------------

def _sample_ops(srt: Sort) -> tuple[Op, ...]:
    """sort_by's first job: a weighted sample of the sort keys."""
    return (Op("map", srt.keyfunc),
            Op("map_partitions", "range_sample", {"m": sorting.SAMPLE_PER_BATCH}))


def _shuffle_ops(srt: Sort, cuts: list[Any], keys: list[int]) -> tuple[Op, ...]:
    """sort_by's second job: every record grouped under its range's key."""
    return (Op("key_by", srt.keyfunc),
            Op("map", "range_key", {"bounds": cuts, "keys": keys,
                                     "descending": not srt.ascending}),
            Op("group", "sort_group"))


def _check_partitions(what: str, n: int | None) -> None:
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1024):
        raise UsageError(f"{what}: num_partitions must be a number from 1 to 1024, got {n!r}")


def _json_line(record: Any) -> str:
    return json.dumps(record, ensure_ascii=False, default=repr)


def _paths(paths: str | Path | Iterable[str | Path]) -> list[str]:
    if isinstance(paths, str | Path):
        return [str(paths)]
    out = [str(p) for p in paths]
    if not out:
        raise UsageError("no input paths given")
    return out


def _csv_header(paths: list[str], delimiter: str) -> list[str]:
    from rainstorm.sources.inputs import resolve_inputs

    files = resolve_inputs(paths)
    if not files:
        raise UsageError(f"read_csv: no file to read a header from in {paths}")
    with files[0].open(encoding="utf-8", errors="replace", newline="") as fh:
        line = fh.readline()
    try:
        names = next(csv.reader([line.rstrip("\r\n")], delimiter=delimiter, strict=True), [])
    except csv.Error as exc:
        raise UsageError(f"read_csv: cannot parse the header of {files[0]}: {exc}") from None
    if not names:
        raise UsageError(f"read_csv: {files[0]} has no header line; give columns=[...]")
    return names
