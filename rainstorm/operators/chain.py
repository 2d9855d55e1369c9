"""A stage's fused operator chain: list of records in, list of records out.

map / filter / flat_map / key_by / map_partitions (the whole batch in, a
list out) are each a thin list transform; the chain
applies them in order with no Redis hop in between.  Errors name the stage,
the operator and the user's function.  Operators that count (a ``counts``
attribute, see rainstorm.operators.metrics) are gathered: ``take_counts()``
returns what they counted since it was last called.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from rainstorm import native
from rainstorm.errors import UsageError
from rainstorm.operators import builtins
from rainstorm.operators.chain_errors import OperatorError, OperatorTimeout, Rejected
from rainstorm.operators.external import as_line, make_pipe, make_reduce
from rainstorm.operators.framed import FramedProcess
from rainstorm.operators.metrics import Counts
from rainstorm.operators.resolve import resolve
from rainstorm.operators.windows import stamper
from rainstorm.plan import StagePlan, label
from rainstorm.protocol.counters import StageCounter
from rainstorm.spec import PipeOp, ReduceOp

Transform = Callable[[list[Any]], list[Any]]


def _transform(kind: str, fn: Callable[..., Any], value: Callable[..., Any] | None = None
               ) -> Transform:
    if kind == "map":
        return lambda recs: [fn(r) for r in recs]
    if kind == "filter":
        return lambda recs: [r for r in recs if fn(r)]
    if kind == "flat_map":
        return lambda recs: [o for r in recs for o in fn(r)]
    if kind == "map_partitions":  # a batch in, a batch out
        return lambda recs: list(fn(recs))
    if kind == "key_by":
        if fn is builtins.pair_key and value is builtins.pair_value:
            return _pairs
        if value is not None:
            return lambda recs: [(fn(r), value(r)) for r in recs]
        return lambda recs: [(fn(r), r) for r in recs]
    raise ValueError(f"unknown record operator {kind!r}")


def _pairs(recs: list[Any]) -> list[Any]:
    """``key_by(pair_key, pair_value)``: records that are (key, value)
    tuples already pass as they are (checked at C speed, the usual output
    of a mapper); lists of two as tuples; anything else is a TypeError."""
    if native.all_pairs is not None:
        if native.all_pairs(recs):
            return recs
    elif set(map(type, recs)) <= {tuple} and set(map(len, recs)) <= {2}:
        return recs
    return [tuple(builtins.as_pair(r)) for r in recs]


@dataclass
class _Step:
    label: str
    run: Transform


def split_lines(text: str) -> list[str]:
    """Lines split on '\\n' with a trailing '\\r' removed (like text-mode files)."""
    if not text:
        return []
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


__all__ = ["Chain", "OperatorError", "split_lines"]


class Chain:
    def __init__(self, stage: StagePlan, allow: tuple[str, ...] = (),
                 allow_exec: bool = False) -> None:
        self.stage = stage
        self.steps: list[_Step] = []
        self.block_first: Callable[[str], Iterable[Any]] | None = None
        self._counting: list[Counts] = []  # the counters of operators that count
        for i, (op, where) in enumerate(zip(stage.ops, stage.op_paths, strict=True)):
            if isinstance(op, PipeOp | ReduceOp) and op.cmd and not allow_exec:
                raise UsageError(
                    f"{where}: runs the executable {op.cmd[0]!r}; workers run executables "
                    "only when started with --allow-exec (env RAINSTORM_ALLOW_EXEC=1)"
                )
            if isinstance(op, PipeOp) and op.mode == "framed":
                self.steps.append(_Step(op.label, FramedProcess(op.cmd, op.timeout_s, as_line)))
                continue
            if isinstance(op, PipeOp):
                self.steps.append(_Step(op.label, make_pipe(op.cmd, op.timeout_s,
                                                            op.ok_codes())))
                continue
            if isinstance(op, ReduceOp):
                reducer = resolve(op.fn, {}, allow, f"{where}.fn") if op.fn else None
                self.steps.append(_Step(label(op), make_reduce(op.cmd, reducer, op.timeout_s)))
                continue
            fn = resolve(op.fn, op.args, allow, f"{where}.fn")
            counts = getattr(fn, "counts", None)
            if isinstance(counts, Counts):
                self._counting.append(counts)
            value = resolve(op.value, {}, allow, f"{where}.value") if op.value else None
            if i == 0 and op.op == "flat_map" and not op.args and op.fn in builtins.BLOCK:
                self.block_first = builtins.BLOCK[op.fn]
            self.steps.append(_Step(label(op), _transform(op.op, fn, value)))
        if stage.window is not None:  # stamps event times; windows are assigned per batch
            self.steps.append(_Step(stage.window.label,
                                    stamper(stage.window, allow, stage.window_path)))

    @property
    def words_only(self) -> bool:
        """The chain is ``flat_map: split_words`` alone: its outputs are the
        words of text.split() (what rainstorm.native.WordCounts counts)."""
        return self.block_first is builtins.split_words_block and len(self.steps) == 1

    def close(self) -> None:
        """Stop the long-lived programs of ``framed`` steps (idempotent)."""
        for step in self.steps:
            if isinstance(step.run, FramedProcess):
                step.run.close()

    def take_counts(self) -> Counter[StageCounter]:
        """What the operators counted since the last call (``malformed_rows`` ...)."""
        out: Counter[StageCounter] = Counter()
        for counts in self._counting:
            out.update(counts.take())
        return out

    def _fail(self, step: _Step, exc: Exception) -> OperatorError:
        where = f"operator {step.label} in stage {self.stage.index}"
        if isinstance(exc, OperatorTimeout):  # the worker's time limit fired inside it
            return OperatorTimeout(f"{where} {exc}")
        return OperatorError(f"{where} raised {exc!r}", rejected=isinstance(exc, Rejected))

    def run(self, records: list[Any]) -> list[Any]:
        for step in self.steps:
            try:
                records = step.run(records)
            except Exception as exc:  # user code: any exception is the operator's failure
                raise self._fail(step, exc) from exc
        return records

    def run_text(self, text: str) -> list[Any]:
        """Stage 0: a decoded text batch (many lines)."""
        if self.block_first is None:
            return self.run(split_lines(text))
        first = self.block_first(text)
        records = first if type(first) is list else list(first)  # (no copy of a big list)
        for step in self.steps[1:]:
            try:
                records = step.run(records)
            except Exception as exc:
                raise self._fail(step, exc) from exc
        return records

    def run_isolated(
        self, records: list[Any],
        limit: Callable[[], AbstractContextManager[object]] = nullcontext,
        check: Callable[[list[Any]], None] | None = None,
    ) -> tuple[list[Any], list[tuple[Any, str]]]:
        """Record by record: (outputs of good records, [(bad record, error)]).
        Each record runs under its own ``limit()``; ``check`` may refuse a
        record's outputs (e.g. values that cannot be encoded) by raising
        OperatorError."""
        good: list[Any] = []
        bad: list[tuple[Any, str]] = []
        for rec in records:
            try:
                with limit():
                    out = self.run([rec])
                if check is not None:
                    check(out)
                good.extend(out)
            except OperatorError as exc:
                bad.append((rec, str(exc)))
        return good, bad
