"""From a batch of stream entries to one commit request.

A batch is entries of one stage (any of its partitions).  The fused chain
runs over all of them at once; the aggregate delta or the routed outputs are
combined across the whole batch, so one FCALL carries as much as possible.
Entries that were delivered ``max_deliveries`` times run record by record:
the records that raise become dead letters, the rest is committed.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import msgpack

from rainstorm import keys
from rainstorm.job import Job, batch_uid, decode_records, encode_records, partition_of
from rainstorm.lua import CommitRequest
from rainstorm.operators import aggregates, metrics
from rainstorm.operators.chain import Chain, OperatorError, split_lines
from rainstorm.operators.resolve import resolve
from rainstorm.operators.windows import WindowBatch, Windows

log = logging.getLogger(__name__)


@dataclass
class Entry:
    stream: str
    id: str
    uid: str
    data: bytes
    deliveries: int = 1


@dataclass
class Computed:
    records_in: int = 0
    outputs: list[Any] = field(default_factory=list)
    delta: Counter[Any] = field(default_factory=Counter)
    dead: list[bytes] = field(default_factory=list)
    extra: Counter[str] = field(default_factory=Counter)  # counters committed with the batch
    window: WindowBatch | None = None  # a windowed stage: windows, late records, guard


def decode_text(data: bytes) -> tuple[str, bool]:
    """Policy for bytes that are not UTF-8: replace them with U+FFFD, count the entry."""
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return data.decode("utf-8", "replace"), True


def dead_record(job: Job, stage: int, entry: Entry, record: Any, error: str) -> bytes:
    return msgpack.packb(  # type: ignore[no-any-return]
        {"job": job.id, "stage": stage, "uid": entry.uid, "deliveries": entry.deliveries,
         "error": error, "record": record, "at": time.time()},
        use_bin_type=True, default=repr,
    )


class StageRunner:
    """Runs one stage of one job over batches of entries."""

    def __init__(self, job: Job, stage: int, allow: tuple[str, ...],
                 allow_exec: bool = False) -> None:
        self.job = job
        self.stage = job.stage(stage)
        self.chain = Chain(self.stage, allow, allow_exec)
        combiner = resolve(self.stage.combiner, {}, allow,
                           f"{self.stage.aggregate_path}.combiner") if self.stage.combiner else None
        self.agg = aggregates.aggregator(self.stage.aggregate, self.stage.top_k, combiner) \
            if self.stage.aggregate else None
        self.is_last = stage == len(job.plan.stages) - 1
        self.windows = Windows.of(self.stage.window) if self.stage.window else None
        # a windowed stage: its max event time, read by the worker before computing
        self.max_event_us: int | None = None

    def _records(self, entry: Entry, comp: Computed) -> tuple[list[Any], str | None]:
        if self.job.raw_text(self.stage.index):
            text, bad = decode_text(entry.data)
            if bad:
                comp.extra["s0:invalid_utf8_entries"] += 1
            return [], text
        return decode_records(entry.data), None

    def _absorb(self, comp: Computed, outputs: list[Any]) -> None:
        if self.agg:
            if comp.window is not None:
                outputs = comp.window.add(outputs)
            self.agg.add(comp.delta, outputs, self.stage.keyed_out)
        else:
            comp.outputs.extend(outputs)

    def compute(self, entries: list[Entry], isolate: set[str]) -> Computed:
        """Run the chain; raises OperatorError if a non-isolated entry fails
        (a Rejected record instead sends its entry record by record at once)."""
        comp = Computed()
        if self.windows:
            comp.window = self.windows.batch(self.max_event_us)
        metrics.drain()
        for e in entries:
            records, text = self._records(e, comp)
            if e.id not in isolate:
                try:
                    self._run_whole(comp, records, text)
                    continue
                except OperatorError as exc:
                    if not exc.rejected:
                        raise
                    metrics.drain()  # the record-by-record run counts again
            recs = split_lines(text) if text is not None else records
            good, bad = self.chain.run_isolated(recs)
            comp.records_in += len(recs)
            self._absorb(comp, good)
            comp.dead += [dead_record(self.job, self.stage.index, e, r, err) for r, err in bad]
        for name, n in metrics.drain().items():
            comp.extra[keys.counter_field(self.stage.index, name)] += n
        return comp

    def _run_whole(self, comp: Computed, records: list[Any], text: str | None) -> None:
        if text is not None:
            outputs = self.chain.run_text(text)
            comp.records_in += text.count("\n") + (0 if text.endswith("\n") or not text else 1)
        else:
            outputs = self.chain.run(records)
            comp.records_in += len(records)
        self._absorb(comp, outputs)

    def _window_request(self, req: CommitRequest, win: WindowBatch, entries: list[Entry]
                        ) -> None:
        """The watermark args, and late records as one entry of rs:{job}:late."""
        i = self.stage.index
        req.window = (win.max_event, win.guard)
        if win.late_windows:
            req.extra[keys.counter_field(i, "late_windows")] = win.late_windows
        if win.late:
            req.extra[keys.counter_field(i, "late_records")] = len(win.late)
            uid = f"{batch_uid([e.uid for e in entries])}.late"
            req.outputs = [(keys.late(self.job.id), uid, encode_records(win.late))]
            req.emit_field = keys.counter_field(i, "late_entries")
            req.max_backlog = 0  # a side output, read by the user: never backpressure

    def request(self, entries: list[Entry], comp: Computed, max_backlog: int) -> CommitRequest:
        job, i = self.job, self.stage.index
        req = CommitRequest(
            counters=keys.counters(job.id),
            dlq=keys.dlq(job.id),
            delta_log=keys.state_log(job.id, i),
            group=keys.group(i),
            stage=i,
            inputs=[(e.stream, e.id, e.uid) for e in entries],
            dead=comp.dead,
            max_backlog=max_backlog,
            records_in=comp.records_in,
            bytes_in=sum(len(e.data) for e in entries) if i == 0 else 0,
            extra=dict(comp.extra),
        )
        if self.agg:
            delta = self.agg.before_commit(dict(comp.delta))
            req.delta = aggregates.encode(delta, self.agg) if delta else b""
            req.records_out = len(comp.delta)
            if comp.window is not None:
                self._window_request(req, comp.window, entries)
            return req
        req.records_out = len(comp.outputs)
        if not comp.outputs:
            return req
        base = batch_uid([e.uid for e in entries])
        if self.is_last:
            req.outputs = [(keys.output(job.id), f"{base}.0", encode_records(comp.outputs))]
            req.emit_field = keys.counter_field(i, "output_entries")
            req.max_backlog = 0  # the output stream is the sink, read at the end
            return req
        nxt = job.stage(i + 1)
        buckets: list[list[Any]] = [[] for _ in range(nxt.partitions)]
        if self.stage.keyed_out:
            for rec in comp.outputs:
                buckets[partition_of(rec[0], nxt.partitions)].append(rec)
        else:
            start = int(base[:8], 16)
            for n, rec in enumerate(comp.outputs):
                buckets[(start + n) % nxt.partitions].append(rec)
        for p, recs in enumerate(buckets):
            if recs:
                req.outputs.append(
                    (keys.stage_stream(job.id, i + 1, p), f"{base}.{p}", encode_records(recs))
                )
        req.emit_field = keys.counter_field(i + 1, "emitted")
        return req
