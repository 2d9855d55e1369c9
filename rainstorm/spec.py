"""Job specs: pydantic models, loaded from YAML or JSON.

A spec is a source, a linear pipeline of operators and a sink::

    name: wordcount
    source: {type: text, paths: ["data/*.txt"]}
    pipeline:
      - {op: flat_map, fn: split_words}
      - {op: count}
    sink: {type: stdout, top: 10}

The planner (``rainstorm.plan``) cuts the pipeline into stages.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

from rainstorm.errors import UsageError

MAX_JOB_ID = 100
JOB_ID_PATTERN = rf"^[A-Za-z0-9][A-Za-z0-9_.-]{{0,{MAX_JOB_ID - 1}}}$"
_JOB_ID = re.compile(JOB_ID_PATTERN)


def is_job_id(text: str) -> bool:
    """Can ``text`` be a job id (JOB_ID_PATTERN, the whole of it: fullmatch,
    so no trailing newline either, which ``$`` alone lets through)?"""
    return _JOB_ID.fullmatch(text) is not None


def check_job_id(job_id: str, what: str = "job id") -> str:
    """``job_id``, or UsageError naming the rule.  Workers skip any other id
    they find listed, so a job under one would wait for ever."""
    if not is_job_id(job_id):
        raise UsageError(f"{what} {job_id[:120]!r}: only letters, digits, '_', '.' and '-', "
                         f"starting with a letter or digit, at most {MAX_JOB_ID} characters")
    return job_id


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextSource(_Model):
    """Lines of text files.  ``paths`` are files, directories or globs, local
    or URLs read through fsspec (``https://``, ``s3://``, ...)."""

    type: Literal["text"] = "text"
    paths: list[str] = Field(default_factory=list)
    batch_bytes: int = Field(default=1 << 20, ge=1024, le=16 << 20)
    max_rate: float | None = Field(
        default=None, gt=0,
        description="lines per second the loader may add (default: as fast as backpressure "
                    "allows); change it while the job runs with `rainstorm throttle`")
    encoding_errors: Literal["replace"] = "replace"
    transport: Literal["auto", "split", "bytes"] = Field(
        default="auto",
        description="split: stage-0 entries are byte ranges (batch_bytes each) that the "
                    "workers read from the filesystem they share with the coordinator; "
                    "bytes: the coordinator reads the files and loads their bytes into Redis "
                    "(workers on other hosts); auto: split for `rainstorm run` with local "
                    "workers and for URL inputs (every worker reaches a URL; a server that "
                    "ignores Range requests: bytes), bytes otherwise (and whenever max_rate "
                    "is set)")

    @model_validator(mode="after")
    def _split_is_not_paced(self) -> TextSource:
        if self.transport == "split" and self.max_rate:
            raise ValueError("transport: split cannot be paced by max_rate (lines per second: "
                             "only a loader that reads the lines can count them); use "
                             "transport: bytes")
        return self


class StreamSource(_Model):
    """An unbounded source: a Redis stream (on the job's Redis) that other
    programs XADD to.  Each stream entry is one record: the value of
    ``field`` (a string), or with ``field: null`` the whole entry as a
    {field: value} dict.  The job runs until cancelled."""

    type: Literal["stream"]
    key: str = Field(min_length=1, description="the stream key, e.g. events")
    field: str | None = Field(default="line", description="the field that is the record; "
                              "null: the whole entry as a dict")
    start: Literal["0", "$"] = Field(default="0", description="0: the stream's existing "
                                     "entries too; $: only entries added after submit")
    batch_records: int = Field(default=100, ge=1, le=100_000, description="records per entry "
                               "(copy, split) or per batch (direct)")
    max_rate: float | None = Field(default=None, gt=0, description="records per second")
    linger_ms: int = Field(
        default=0, ge=0, le=1000,
        description="copy, split: wait up to this long for batch_records records before "
                    "loading a smaller entry (Kafka's linger.ms): fewer, fuller entries and "
                    "less CPU per record, for at most this much more latency; 0: load what "
                    "is there")
    transport: Literal["auto", "split", "direct", "copy"] = Field(
        default="auto",
        description="split: the coordinator cuts the stream into id ranges of about "
                    "batch_records entries, counted with XINFO STREAM, and workers read their "
                    "range with XRANGE (no record passes through the coordinator; a range "
                    "trimmed or deleted before it is read is dead-lettered, never half read; "
                    "max_rate paces it by reading the ids of the entries it cuts); "
                    "direct: workers read the stream through the job's own consumer group "
                    "(rainstorm:<job>) and acknowledge its entries, never deleting them; "
                    "copy: the coordinator reads it and copies batches into the job's stage-0 "
                    "streams; auto: split (experiments/README.md)")

    @model_validator(mode="after")
    def _direct_is_not_paced(self) -> StreamSource:
        if self.transport == "direct" and self.max_rate:
            raise ValueError("transport: direct cannot be paced by max_rate (workers read the "
                             "stream themselves); use transport: copy")
        if self.transport == "direct" and self.linger_ms:
            raise ValueError("transport: direct has no linger_ms (workers read the stream "
                             "themselves, batch_records at most per read); use transport: copy")
        return self

    @property
    def direct(self) -> bool:
        """Workers read the stream directly, record by record, through a
        consumer group on it (``transport: direct``)."""
        return self.transport == "direct"

    @property
    def ranges(self) -> bool:
        """Workers read the stream in id ranges the coordinator cuts
        (``transport: split``, what ``auto`` becomes)."""
        return self.transport == "split"


class TailSource(_Model):
    """An unbounded source: a text file being appended to (``tail -f``).
    Complete lines only; the job runs until cancelled."""

    type: Literal["tail"]
    path: str = Field(min_length=1)
    batch_bytes: int = Field(default=64 << 10, ge=1024, le=16 << 20)
    max_rate: float | None = Field(default=None, gt=0, description="lines per second")


class StateSource(_Model):
    """A bounded source: the keyed state another job left in its state
    partitions (that job's sink ``keep``), one stage-0 entry per partition.
    A worker reads its partition directly from Redis and feeds its groups,
    sorted by key, as records ``[partition, key, value]`` -- the reduce
    phase of `rainstorm mapreduce`, reading the map phase's shuffle.

    With ``other``: a keyed join.  ``job`` and ``other`` both grouped their
    ``(key, value)`` records with the ``group`` aggregate into the same
    number of state partitions (so partition p of each holds the same keys:
    they are co-partitioned); an entry names partition p of both, and a
    worker feeds one record per key of either, ``[key, [values of job,
    values of other]]`` (the cogroup), keys sorted."""

    type: Literal["state"]
    job: str = Field(pattern=JOB_ID_PATTERN, description="the job whose state is read")
    other: str | None = Field(default=None, pattern=JOB_ID_PATTERN,
                              description="a join: the second job, read partition by "
                              "partition with job's (both group aggregates, kept)")


class UpstreamSource(_Model):
    """The records of other jobs of the same graph (rainstorm.graph): each
    job's output stream (records, or closed windows), or once a batch
    aggregate is done its finished state as ``[key, value]`` records.  The
    coordinator copies them into this job's stage 0 with the cursor in the
    same atomic call, as it copies a stream source.  Several jobs: their
    union."""

    type: Literal["upstream"]
    jobs: list[Annotated[str, Field(pattern=JOB_ID_PATTERN)]] = Field(min_length=1)
    unbounded: bool = Field(default=False, description="an upstream job is a streaming one: "
                            "this job runs until cancelled too")


def _source_type(value: Any) -> str:
    """A source without ``type`` is a text source (the default)."""
    if isinstance(value, dict):
        return str(value.get("type", "text"))
    return str(getattr(value, "type", "text"))


Source = Annotated[Annotated[TextSource, Tag("text")] | Annotated[StreamSource, Tag("stream")]
                   | Annotated[TailSource, Tag("tail")] | Annotated[StateSource, Tag("state")]
                   | Annotated[UpstreamSource, Tag("upstream")],
                   Discriminator(_source_type)]


class RecordOp(_Model):
    """A record-wise operator; consecutive ones are fused into one stage."""

    op: Literal["map", "filter", "flat_map", "key_by", "map_partitions"]
    fn: str = Field(description="built-in name or package.module:function")
    args: dict[str, Any] = Field(default_factory=dict)
    value: str | None = Field(
        default=None, description="key_by only: function giving the value (default: the record)"
    )

    @property
    def label(self) -> str:
        return f"{self.op}({self.fn})"

    @model_validator(mode="after")
    def _value_only_for_key_by(self) -> RecordOp:
        if self.value is not None and self.op != "key_by":
            raise ValueError("'value' is only allowed on key_by")
        return self


class PipeOp(_Model):
    """An external program, fed the batch's records on stdin, one per line;
    its stdout lines are the outputs (see rainstorm.operators.external)."""

    op: Literal["pipe"]
    cmd: list[str] = Field(min_length=1, description="argv, e.g. [grep, -i, error]")
    mode: Literal["batch", "framed"] = Field(
        default="batch", description="batch: one process per batch; framed: one long-lived "
        "process speaking the framed protocol (rainstorm.operators.framed)")
    timeout_s: float = Field(default=30.0, gt=0, le=3600)
    ok_exit_codes: list[int] | None = Field(
        default=None, description="default [0], and [0, 1] for grep-like programs")

    @property
    def label(self) -> str:
        return f"pipe({' '.join(self.cmd)})"

    def ok_codes(self) -> tuple[int, ...] | None:
        return tuple(self.ok_exit_codes) if self.ok_exit_codes is not None else None


class ReduceOp(_Model):
    """The reduce side of a MapReduce job (built by `rainstorm mapreduce`):
    records are ``[partition, key, [values]]`` groups; a program (``cmd``) gets
    ``key<TAB>value`` lines sorted by key, a callable (``fn``) is called as
    ``fn(key, values)`` and yields output lines.  Outputs are
    ``(partition, line)`` pairs."""

    op: Literal["reduce"]
    cmd: list[str] | None = None
    fn: str | None = None
    timeout_s: float = Field(default=300.0, gt=0)

    @model_validator(mode="after")
    def _one_of(self) -> ReduceOp:
        if (self.cmd is None) == (self.fn is None):
            raise ValueError("give exactly one of 'cmd' (a program) or 'fn' (a callable)")
        return self

    @property
    def label(self) -> str:
        return f"reduce({' '.join(self.cmd) if self.cmd else self.fn})"


class Repartition(_Model):
    """Ends a stage: records move to the next stage's partitions by key hash
    (keyed records) or round-robin."""

    op: Literal["repartition"]
    partitions: int | None = Field(default=None, ge=1, le=1024)


class WindowOp(_Model):
    """Event-time windows for the keyed aggregate right after it: each
    ``(key, value)`` record counts in every window ``[s, s + size_s)`` (s a
    multiple of ``slide_s``, default ``size_s``: tumbling) holding its event
    time ``time(value)`` (seconds), under the key ``"<s>|<key>"``.  A window
    closes once the stage's watermark (max event time committed - max_delay_s)
    reaches its end + allowed_lateness_s; records whose windows are all closed
    go to rs:{job}:late (see rainstorm.operators.windows)."""

    op: Literal["window"]
    time: str = Field(description="built-in or package.module:function: a record's event "
                      "time in seconds, applied to the value of each (key, value) record")
    args: dict[str, Any] = Field(default_factory=dict, description="keyword args of time")
    value: str | None = Field(default=None, description="function giving the value the "
                              "aggregate sees (default: the value itself)")
    value_args: dict[str, Any] = Field(default_factory=dict)
    size_s: float = Field(gt=0, description="window length")
    slide_s: float | None = Field(default=None, gt=0, description="distance between window "
                                  "starts (null: size_s, tumbling windows)")
    max_delay_s: float = Field(default=0, ge=0, description="how far behind the largest event "
                               "time seen the watermark stays")
    allowed_lateness_s: float = Field(default=0, ge=0, description="how long after the "
                                      "watermark passes its end a window still takes records")

    @model_validator(mode="after")
    def _sizes(self) -> WindowOp:
        if self.slide_s is not None and self.slide_s > self.size_s:
            raise ValueError(f"slide_s ({self.slide_s}) must not exceed size_s ({self.size_s})")
        if round(min(self.size_s, self.slide_s or self.size_s) * 1e6) < 1:
            raise ValueError("size_s and slide_s must be at least one microsecond")
        if self.value_args and self.value is None:
            raise ValueError("'value_args' needs 'value'")
        return self

    @property
    def label(self) -> str:
        slide = f", slide {self.slide_s:g}s" if self.slide_s not in (None, self.size_s) else ""
        return f"window({self.size_s:g}s{slide})"


class Aggregate(_Model):
    """A keyed aggregate; ends the pipeline.  ``count`` also takes unkeyed
    records (each record is its own key); the others need a key_by."""

    op: Literal["count", "sum", "min", "max", "mean", "distinct", "top_k", "group",
                "reduce_by_key"]
    k: int | None = Field(default=None, ge=1, le=10_000, description="top_k only")
    combiner: str | None = Field(default=None, description="group only: module:fn(key, values)"
                                 " -> values, applied to each batch before it is committed")
    fn: str | None = Field(default=None, description="reduce_by_key only: fn(a, b) -> value, "
                           "associative and commutative (package.module:function or a signed "
                           "pickled function)")

    @model_validator(mode="after")
    def _k_only_for_top_k(self) -> Aggregate:
        if self.k is not None and self.op != "top_k":
            raise ValueError("'k' is only allowed on top_k")
        if self.combiner is not None and self.op != "group":
            raise ValueError("'combiner' is only allowed on group")
        if (self.fn is not None) != (self.op == "reduce_by_key"):
            raise ValueError("reduce_by_key needs 'fn', and only reduce_by_key takes it")
        return self


Op = Annotated[RecordOp | PipeOp | ReduceOp | Repartition | WindowOp | Aggregate,
               Field(discriminator="op")]


class Sink(_Model):
    """Where the result goes besides stdout: a JSON ``file`` (written
    atomically), ``redis``: the whole aggregate in the hash rs:{job}:result,
    or ``keep``: the result stays where the workers committed it, unread by
    the coordinator -- an aggregate in its state partitions (for a job with
    a ``state`` source: rainstorm mapreduce's map phase), records in the
    output stream (for the caller to read: its reduce phase)."""

    type: Literal["stdout", "file", "redis", "keep"] = "stdout"
    path: str | None = None
    top: int = Field(default=10, ge=0)

    @model_validator(mode="after")
    def _file_needs_path(self) -> Sink:
        if self.type == "file" and not self.path:
            raise ValueError("a file sink needs a path")
        return self


# A streaming job's default state_partitions: its commits are small (a few
# hundred records) and each touches nearly every partition, so 64 partitions
# cost ~1 ms of commit and fold work per commit; 8 measured 25.3 -> 20.8 µs of
# engine CPU per record at 30k records/s (experiments/stream_cpu.py).
STREAM_STATE_PARTITIONS = 8


class Settings(_Model):
    parallelism: int = Field(default=2, ge=1, le=1024, description="partitions per stage")
    batch_entries: int = Field(default=8, ge=1, le=256, description="entries per commit at most "
                               "(a stage starts at 8 and adapts to keep a commit under 4 MiB)")
    max_backlog: int = Field(default=64, ge=1, description="entries per stream before backpressure")
    claim_idle_ms: int = Field(default=5000, ge=10)
    max_deliveries: int = Field(default=5, ge=1)
    operator_timeout_s: float = Field(
        default=300.0, gt=0, le=86400,
        description="seconds one batch may compute before it fails like a raise")
    compact_every: int = Field(
        default=256, ge=2, le=4096,
        description="a state partition's log is folded at this many deltas (or sooner, "
                    "once its bytes reach 4x the folded base)")
    state_partitions: int = Field(
        default=64, ge=1, le=1024,
        description="partitions of a keyed aggregate's state (key groups: folded by "
                    "workers in parallel, read one at a time); a streaming job's default "
                    f"is {STREAM_STATE_PARTITIONS}")
    compress_state: bool = Field(
        default=False,
        description="compress a keyed aggregate's deltas and folded bases (zstd): "
                    "the workers spend up to ~30 % more CPU in parallel so that the server's one "
                    "thread moves ~2.5x fewer bytes (word count); for many workers on one "
                    "server, where that thread caps the rate (like Flink's snapshot "
                    "compression, off by default)")
    max_late_entries: int = Field(
        default=10_000, ge=0,
        description="a streaming job keeps the newest this many entries of rs:{job}:late "
                    "(each holds one batch's late records); older ones are trimmed while it "
                    "runs, and every late record stays counted in s<i>:late_records. 0: keep "
                    "them all (memory then grows with the late records)")
    skip_bad_records: bool = Field(
        default=False,
        description="a batch job whose input was dead-lettered succeeds (with a warning) "
                    "instead of ending INCOMPLETE (exit status 3)")
    wait_replicas: int = Field(default=0, ge=0, description="WAIT for n replicas after commits")
    wait_aof: bool = Field(default=False, description="WAITAOF (local fsync) after commits")
    wait_timeout_ms: int = Field(default=1000, ge=0)


class JobSpec(_Model):
    name: str = Field(pattern=JOB_ID_PATTERN)
    source: Source = Field(default_factory=TextSource)
    pipeline: list[Op] = Field(min_length=1)
    sink: Sink = Field(default_factory=Sink)
    settings: Settings = Field(default_factory=Settings)

    @model_validator(mode="after")
    def _streaming_state_partitions(self) -> JobSpec:
        """A streaming job not given state_partitions gets STREAM_STATE_PARTITIONS."""
        if self.unbounded and "state_partitions" not in self.settings.model_fields_set:
            self.settings.state_partitions = STREAM_STATE_PARTITIONS
        return self

    @property
    def unbounded(self) -> bool:
        """A streaming job: its source never ends, it runs until cancelled."""
        src = self.source
        return src.type in ("stream", "tail") or (src.type == "upstream" and src.unbounded)


def _format_error(origin: str, exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"invalid spec {origin}: {loc}: {err['msg']}{more}"


def parse_spec(data: Any, origin: str = "<spec>") -> JobSpec:
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise UsageError(_format_error(origin, exc)) from None


def load_spec(path: str | Path, overrides: list[str] | None = None) -> JobSpec:
    """Read a YAML or JSON spec file, apply ``--set key=value`` overrides, and
    validate; every problem is a one-line UsageError."""
    return parse_spec(read_spec_file(path, overrides), str(path))


def parse_spec_text(text: str, origin: str = "<spec>", overrides: list[str] | None = None,
                    *, json_text: bool = False) -> JobSpec:
    """Parse spec text (YAML, or JSON with ``json_text``), apply overrides and
    validate, like :func:`load_spec`; ``origin`` names the text in errors
    (a file name, or e.g. the environment variable it came from)."""
    return parse_spec(spec_data(text, origin, overrides, json_text=json_text), origin)


def read_spec_file(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """A spec file's document (a job's or a graph's), overrides applied,
    not yet validated; one-line UsageErrors."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"spec file not found: {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read spec {p}: {exc}") from None
    return spec_data(text, str(p), overrides, json_text=p.suffix == ".json")


def spec_data(text: str, origin: str = "<spec>", overrides: list[str] | None = None,
              *, json_text: bool = False) -> dict[str, Any]:
    """Spec text parsed (YAML, or JSON with ``json_text``) into its
    document, overrides applied, not yet validated."""
    try:
        data = json.loads(text) if json_text else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"cannot parse spec {origin}: {first}") from None
    if not isinstance(data, dict):
        raise UsageError(f"invalid spec {origin}: expected a mapping at the top level")
    if overrides:
        from rainstorm.overrides import apply

        data = apply(data, overrides)
    return dict(data)


def spec_to_json(spec: JobSpec) -> str:
    return spec.model_dump_json()


def spec_from_json(text: str | bytes) -> JobSpec:
    return JobSpec.model_validate_json(text)
