"""From a batch of stream entries to one commit request.

A batch is entries of one stage (any of its partitions).  The fused chain
runs over all of them at once; the aggregate delta or the routed outputs are
combined across the whole batch, so one FCALL carries as much as possible.
Entries whose runs failed ``max_deliveries`` times run record by record:
the records that raise (or time out, or return what msgpack cannot encode)
become dead letters, the rest is committed.  Entries that cannot be decoded
at all are found before anything runs (:meth:`StageRunner.undecodable`).

Nothing here reads Redis or module state: :meth:`StageRunner.compute` takes
the entries and the stage's watermark (windowed stages) and returns what
they computed, operator counters included; :meth:`StageRunner.request`
turns that into the :class:`~rainstorm.lua.CommitRequest` (output uids and
routing by rainstorm.protocol.entries).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgpack

from rainstorm import keys, native
from rainstorm.job import Job, decode_records
from rainstorm.lua import CommitRequest
from rainstorm.operators import aggregates
from rainstorm.operators.chain import Chain, OperatorError, split_lines
from rainstorm.operators.chain_errors import Unencodable
from rainstorm.operators.resolve import resolve
from rainstorm.operators.windows import WindowBatch, Windows
from rainstorm.protocol.counters import StageCounter
from rainstorm.protocol.deadletter import dead_record_blob
from rainstorm.protocol.entries import (
    DATA,
    DATA_FIELD,
    UID,
    UID_FIELD,
    RangeRef,
    batch_uid,
    output_uid,
    range_of,
    route,
    split_of,
)
from rainstorm.sources.ranges import RangeChanged
from rainstorm.sources.splits import SplitChanged, read_split
from rainstorm.state import fold_rule, split_delta

if TYPE_CHECKING:
    from rainstorm.native._words import WordCounts

log = logging.getLogger(__name__)


Limit = Callable[[], AbstractContextManager[object]]  # a time limit (see worker.timeout)
# a stream range's records, and how many of its entries had no source.field
ReadRange = Callable[[RangeRef], tuple[list[Any], int]]


@dataclass(eq=False)
class Entry:
    stream: str
    id: str
    uid: str
    data: bytes
    deliveries: int = 1
    failures: int = 0  # failed runs so far (rs:{job}:failures)
    problem: str = ""  # why the entry cannot be read at all (dead-lettered at once)
    raw_uid: bytes | None = None  # the uid field as read, when it is not UTF-8
    records: list[Any] | None = None  # decoded records (cached by undecodable())
    text: bytes | None = None  # a split's bytes, read from its file (cached by undecodable())
    # entries of the user's stream without source.field: this one (read
    # directly), or those of its range (read as ranges)
    missing: int = 0


def entry_of(stream: str, id_: str, fields: dict[bytes, bytes], deliveries: int = 1) -> Entry:
    """An Entry from a stream entry's fields, whatever they hold: a missing
    ``u``/``d`` field or a uid that is not UTF-8 is recorded as its problem."""
    uid_raw, data = fields.get(UID_FIELD), fields.get(DATA_FIELD)
    problems = [f"no {name!r} field" for name, v in ((UID, uid_raw), (DATA, data)) if v is None]
    e = Entry(stream, id_, "", data or b"", deliveries)
    if uid_raw is not None:
        try:
            e.uid = uid_raw.decode("utf-8")
        except UnicodeDecodeError:
            e.uid, e.raw_uid = uid_raw.decode("utf-8", "replace"), uid_raw
            problems.append("its uid is not UTF-8")
    if problems:
        e.problem = "undecodable entry: " + ", ".join(problems)
    return e


def _pack_default(obj: Any) -> Any:
    """Values msgpack cannot encode: an int beyond 64 bits is an error (never
    silently a string); other objects are written as their repr."""
    if isinstance(obj, int):
        raise OverflowError(f"integer {obj} does not fit in 64 bits")
    return repr(obj)


def encode_outputs(records: list[Any]) -> bytes:
    """Operator outputs as one msgpack batch; Unencodable if they cannot be."""
    try:
        return msgpack.packb(records, use_bin_type=True,  # type: ignore[no-any-return]
                             default=_pack_default)
    except (ValueError, TypeError, OverflowError) as exc:
        raise Unencodable(f"operator output cannot be encoded: {exc}") from None


@dataclass
class Computed:
    records_in: int = 0
    outputs: list[Any] = field(default_factory=list)
    # a stage that counts the words of text (split_words, count) counts them
    # natively where it can (rainstorm.native.WordCounts), else in a Counter
    delta: Counter[Any] | WordCounts = field(default_factory=Counter)
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
    return dead_record_blob(job.id, stage, entry.uid, entry.deliveries, error, record)


class StageRunner:
    """Runs one stage of one job over batches of entries.  ``inputs``: the
    job's input files as listed at submit (``rs:{job}:inputs``: path, size,
    mtime_ns), where the splits of stage 0 are read from."""

    def __init__(self, job: Job, stage: int, allow: tuple[str, ...],
                 allow_exec: bool = False, inputs: list[Any] | None = None,
                 read_part: Callable[[Any], list[Any]] | None = None,
                 read_range: ReadRange | None = None) -> None:
        """``read_part``: a state source's reader (stage 0 of a job whose
        source is another job's state): a record naming a state partition ->
        that partition's ``[partition, key, value]`` records.  ``read_range``:
        a stream range's reader (stage 0 of a stream source read as ranges:
        rainstorm.sources.ranges): its records, and how many entries had no
        ``source.field``."""
        self.job = job
        self.inputs = inputs or []
        self.read_part = read_part if stage == 0 and job.spec.source.type == "state" else None
        self.read_range = read_range if stage == 0 and job.stream_ranges else None
        self.stage = job.stage(stage)
        self.chain = Chain(self.stage, allow, allow_exec)
        combiner = resolve(self.stage.combiner, {}, allow,
                           f"{self.stage.aggregate_path}.combiner") if self.stage.combiner else None
        self.agg = aggregates.aggregator(self.stage.aggregate, self.stage.top_k, combiner) \
            if self.stage.aggregate else None
        self.is_last = stage == len(job.plan.stages) - 1
        self.windows = Windows.of(self.stage.window) if self.stage.window else None
        self.current: Entry | None = None  # the entry compute() is running
        # word count: text split into words and counted, natively
        self.count_words = native.WordCounts is not None and self.chain.words_only \
            and job.raw_text(stage) and isinstance(self.agg, aggregates.Additive) \
            and self.agg.name == "count" and not self.stage.keyed_out and not self.windows
        self._words: WordCounts | None = None  # its table, reused batch after batch

    def close(self) -> None:
        """Stop the stage's external programs (a job this worker leaves)."""
        self.chain.close()

    def _split_text(self, e: Entry) -> bytes:
        """The text of a raw-text entry: its payload, or for a split the
        bytes read from its file (cached); SplitChanged or ValueError when
        it cannot be read."""
        if e.text is not None:
            return e.text
        split = split_of(e.data) if self.job.splits else None
        if split is None:
            return e.data  # bytes loaded through Redis (or a requeued text record)
        if split.file_index >= len(self.inputs):
            raise ValueError(f"undecodable entry: split {split.uid} names no input file "
                             f"(the job has {len(self.inputs)})")
        path, size, mtime = self.inputs[split.file_index][:3]
        if (size, mtime) != (split.size, split.mtime_ns):
            raise ValueError(f"undecodable entry: split {split.uid} does not match input "
                             f"{path} as listed at submit")
        e.text = read_split(path, split)
        return e.text

    def _raw_text(self, entry: Entry) -> bytes:
        try:
            return self._split_text(entry)
        except (SplitChanged, ValueError) as exc:
            raise OperatorError(str(exc)) from None

    def _records(self, entry: Entry, comp: Computed) -> tuple[list[Any], str | None]:
        if self.job.raw_text(self.stage.index):
            text, bad = decode_text(self._raw_text(entry))
            if bad:
                comp.extra[keys.counter_field(0, StageCounter.INVALID_UTF8_ENTRIES)] += 1
            return [], text
        if entry.missing:  # (the user's stream) counted, never silently
            comp.extra[keys.counter_field(0, StageCounter.MISSING_FIELD)] += entry.missing
        if entry.records is None:
            entry.records = decode_records(entry.data)
        if self.read_part is not None:  # records name state partitions: read them
            try:
                return [g for ref in entry.records for g in self.read_part(ref)], None
            except ValueError as exc:
                raise OperatorError(f"undecodable entry: {exc}") from None
        return list(entry.records), None  # a copy: map_partitions may change its list

    def undecodable(self, entries: list[Entry]) -> list[tuple[Entry, str]]:
        """The entries that can never run, with the reason: a missing field,
        not msgpack, or not a list of records.  Decodes (and caches) the rest."""
        bad = []
        for e in entries:
            if e.problem:
                bad.append((e, e.problem))
            elif self.job.raw_text(self.stage.index):
                try:
                    self._split_text(e)
                except (SplitChanged, ValueError) as exc:
                    bad.append((e, str(exc)))
            elif e.records is None:  # (records of the user's stream come decoded)
                why = self._read_range(e) if self.read_range else ""
                why = why or ("" if e.records is not None else self._decode(e))
                if why:
                    bad.append((e, why))
        return bad

    def _read_range(self, e: Entry) -> str:
        """Read the records of a stream range into ``e``; why it cannot be
        (a requeued dead letter is a batch of records, not a range)."""
        assert self.read_range is not None
        try:
            ref = range_of(e.data)
            if ref is not None:
                e.records, e.missing = self.read_range(ref)
        except (RangeChanged, ValueError) as exc:
            return f"undecodable entry: {exc}" if isinstance(exc, ValueError) else str(exc)
        return ""

    @staticmethod
    def _decode(e: Entry) -> str:
        try:
            value = msgpack.unpackb(e.data, raw=False, use_list=False, strict_map_key=False)
        except Exception as exc:  # noqa: BLE001  (any bytes: ExtraData, FormatError, ...)
            return f"undecodable entry: not msgpack ({type(exc).__name__}: {exc})"
        if not isinstance(value, tuple):
            return f"undecodable entry: a {type(value).__name__}, not a list of records"
        e.records = list(value)
        return ""

    def _absorb(self, comp: Computed, outputs: list[Any]) -> None:
        if not isinstance(comp.delta, Counter):  # records, not text: counted by Python
            comp.delta = Counter(comp.delta.to_dict())
        delta = comp.delta
        try:
            if self.agg:
                if comp.window is not None:
                    outputs = comp.window.add(outputs)
                self.agg.add(delta, outputs, self.stage.keyed_out)
            else:
                comp.outputs.extend(outputs)
        except OperatorError:
            raise
        except Exception as exc:  # noqa: BLE001  (e.g. an unhashable key: the operator's fault)
            raise OperatorError(f"stage {self.stage.index}: cannot aggregate the operators' "
                                f"output: {exc!r}") from None

    def _check_output(self, outputs: list[Any]) -> None:
        """Record by record: can one record's outputs be absorbed and encoded?"""
        if not self.agg:
            encode_outputs(outputs)
            return
        if self.windows:
            return  # windowed values are checked with the whole batch
        scratch: dict[Any, Any] = {}
        try:
            self.agg.add(scratch, outputs, self.stage.keyed_out)
            aggregates.encode(self.agg.before_commit(scratch), self.agg)
        except Exception as exc:  # noqa: BLE001  (user values: any failure is the operator's)
            raise Unencodable(f"operator output cannot be aggregated or encoded: {exc!r}"
                              ) from None

    def compute(self, entries: list[Entry], isolate: set[str], *,
                watermark_us: int | None = None, limit: Limit = nullcontext) -> Computed:
        """Run the chain; raises OperatorError if a non-isolated entry fails
        (a Rejected record instead sends its entry record by record at once).
        ``watermark_us``: a windowed stage's max event time so far (the
        counters' ``s<i>:max_event_us``), which decides the windows still open.
        ``limit()`` bounds the run of the whole entries together, and of each
        record of an isolated entry alone; ``self.current`` names the entry
        running (the culprit when a limit fires).  What the operators counted
        is in the result's ``extra``, per stage."""
        comp = self._computed(watermark_us)
        self.chain.take_counts()  # left by a run that raised: never committed
        slow: list[Entry] = []
        with limit():
            if self._together(comp, entries, isolate):
                slow = [e for e in entries if e.id in isolate]
            else:
                comp = self._computed(watermark_us)
                for e in entries:
                    self.current = e
                    if e.id in isolate or not self._whole(comp, e):
                        slow.append(e)
        for e in slow:
            self.current = e
            records, text = self._records(e, comp)
            recs = split_lines(text) if text is not None else records
            good, bad = self.chain.run_isolated(recs, limit, self._check_output)
            comp.records_in += len(recs)
            self._absorb(comp, good)
            comp.dead += [dead_record(self.job, self.stage.index, e, r, err) for r, err in bad]
            self._add_counts(comp)
        self.current = None
        return comp

    def _computed(self, watermark_us: int | None) -> Computed:
        comp = Computed()
        if self.count_words and native.WordCounts is not None:
            # one table for every batch, cleared: fresh memory for each batch's
            # table cost its page faults (a batch's request holds only its bytes)
            if self._words is None:
                self._words = native.WordCounts()
            else:
                self._words.clear()
            comp.delta = self._words
        if self.windows:
            comp.window = self.windows.batch(watermark_us)
        return comp

    def _together(self, comp: Computed, entries: list[Entry], isolate: set[str]) -> bool:
        """Entries of the user's stream (stage 0 read directly: one record
        each, decoded when read) run as one list, as a copied batch would.
        False (``comp`` to be thrown away) when they are not such entries, or
        when a Rejected record sends them one by one."""
        if self.stage.index != 0 or not self.job.direct:
            return False
        self.current = None  # a limit that fires names no entry: each is then run alone
        records = [r for e in entries if e.id not in isolate for r in self._records(e, comp)[0]]
        return self._run_counted(comp, records, None)

    def _add_counts(self, comp: Computed) -> None:
        for name, n in self.chain.take_counts().items():
            comp.extra[keys.counter_field(self.stage.index, name)] += n

    def _whole(self, comp: Computed, e: Entry) -> bool:
        """Run one entry as a whole; False when a Rejected record sends it
        record by record (what its partial run counted is dropped: the
        record-by-record run counts again)."""
        if native.is_word_counts(comp.delta):  # (count_words: a raw-text stage)
            # the words of UTF-8 bytes, counted without decoding them (else: below)
            counted = comp.delta.add_utf8(self._raw_text(e))
            if counted is not None:
                comp.records_in += counted[1]
                return True
        records, text = self._records(e, comp)
        return self._run_counted(comp, records, text)

    def _run_counted(self, comp: Computed, records: list[Any], text: str | None) -> bool:
        """Run records (or text) as a whole, keeping what the operators
        counted; False when a Rejected record means running them one by one."""
        try:
            self._run_whole(comp, records, text)
        except OperatorError as exc:
            if not exc.rejected:
                raise
            self.chain.take_counts()
            return False
        self._add_counts(comp)
        return True

    def build(self, entries: list[Entry], isolate: set[str], max_backlog: int, *,
              watermark_us: int | None = None, limit: Limit = nullcontext) -> CommitRequest:
        """compute() and request() in one: what to commit for ``entries``;
        OperatorError (Unencodable, OperatorTimeout ...) when it cannot be."""
        comp = self.compute(entries, isolate, watermark_us=watermark_us, limit=limit)
        return self.request(entries, comp, max_backlog)

    def _run_whole(self, comp: Computed, records: list[Any], text: str | None) -> None:
        if text is not None:
            comp.records_in += text.count("\n") + (0 if text.endswith("\n") or not text else 1)
            if native.is_word_counts(comp.delta):
                comp.delta.add_text(text)
                return
            outputs = self.chain.run_text(text)
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
            req.extra[keys.counter_field(i, StageCounter.LATE_WINDOWS)] = win.late_windows
        if win.late:
            req.extra[keys.counter_field(i, StageCounter.LATE_RECORDS)] = len(win.late)
            uid = output_uid(batch_uid([e.uid for e in entries]), "late")
            req.outputs = [(keys.late(self.job.id), uid, encode_outputs(win.late))]
            req.emit_field = keys.counter_field(i, StageCounter.LATE_ENTRIES)
            req.max_backlog = 0  # a side output, read by the user: never backpressure

    def request(self, entries: list[Entry], comp: Computed, max_backlog: int) -> CommitRequest:
        """The commit request; Unencodable if the outputs cannot be encoded."""
        try:
            return self._request(entries, comp, max_backlog)
        except OperatorError:
            raise
        except (ValueError, TypeError, OverflowError, IndexError) as exc:
            raise Unencodable(f"stage {self.stage.index}: operator output cannot be "
                              f"encoded: {exc}") from None

    def _request(self, entries: list[Entry], comp: Computed, max_backlog: int
                 ) -> CommitRequest:
        job, i = self.job, self.stage.index
        group = job.group_of(i, entries[0].stream)
        keep = group != keys.group(i)  # the user's stream: acknowledged, kept, no uid field
        req = CommitRequest(
            counters=keys.counters(job.id),
            dlq=keys.dlq(job.id),
            meta=keys.meta(job.id),
            group=group,
            stage=i,
            inputs=[(e.stream, e.id, "" if keep else e.uid) for e in entries],
            keep_inputs=keep,
            dead=comp.dead,
            max_backlog=max_backlog,
            records_in=comp.records_in,
            bytes_in=sum(len(e.data if e.text is None else e.text) for e in entries)
            if i == 0 else 0,
            extra=dict(comp.extra),
        )
        if self.agg:
            delta = self.agg.before_commit(dict(comp.delta)) \
                if isinstance(comp.delta, Counter) else comp.delta
            req.deltas = split_delta(job, i, delta, self.agg) if len(delta) else []
            req.fold = fold_rule(job)
            req.records_out = len(comp.delta)
            if comp.window is not None:
                self._window_request(req, comp.window, entries)
            return req
        req.records_out = len(comp.outputs)
        if not comp.outputs:
            return req
        base = batch_uid([e.uid for e in entries])
        if self.is_last:
            req.outputs = [(keys.output(job.id), output_uid(base, 0),
                            encode_outputs(comp.outputs))]
            req.emit_field = keys.counter_field(i, StageCounter.OUTPUT_ENTRIES)
            req.max_backlog = 0  # the output stream is the sink, read at the end
            return req
        nxt = job.stage(i + 1)
        buckets: list[list[Any]] = [[] for _ in range(nxt.partitions)]
        for n, rec in enumerate(comp.outputs):
            buckets[route(rec, self.stage.keyed_out, base, n, nxt.partitions)].append(rec)
        for p, recs in enumerate(buckets):
            if recs:
                req.outputs.append(
                    (keys.stage_stream(job.id, i + 1, p), output_uid(base, p),
                     encode_outputs(recs))
                )
        req.emit_field = keys.counter_field(i + 1, StageCounter.EMITTED)
        return req
