"""Every Redis key rainstorm uses, built in one place.

All keys of one job share the hash tag ``{job}`` so that a job lives on one
shard of a Redis Cluster.  This docstring is also the ``redis-cli`` guide.

==============================  ===========  =====================================
key                             type         written by / meaning
==============================  ===========  =====================================
``rs:jobs``                     set          submit: ids of every known job
``rs:graphs``                   set          graph runs: ids of every known graph
``rs:graph:<id>``               string       graph runs: JSON of a dataflow graph:
                                             its steps, each step's job id
                                             (``<id>.<step>``) and inputs
                                             (rainstorm.graph)
``rs:workers``                  hash         workers: id -> JSON heartbeat
``rs:worker:<id>:stop``         string       kill-worker / autoscaler: asks worker
                                             <id> to finish its batch and exit
``rs:{job}:spec``               string       submit: the validated spec (JSON)
``rs:{job}:sig``                string       submit, in the transaction that sets
                                             the spec: HMAC-SHA256 of job id + spec
                                             (rainstorm.spec_signature); workers
                                             run only specs it verifies
``rs:{job}:meta``               hash         coordinator: state, input files,
                                             created/finished times, error; a
                                             finished batch job's ``dead_letters``
                                             and ``incomplete`` (1: its result
                                             misses dead-lettered input); each
                                             field in rainstorm.protocol.meta
``rs:{job}:inputs``             string       submit: JSON list of the input files
                                             ``[path, size, mtime_ns]``: exactly
                                             what the loader loads, or what the
                                             workers read splits from (a split
                                             names a file by its index here)
``rs:{job}:seal``               hash         coordinator, when the job finishes:
                                             ``sha256`` of the keys its result is
                                             read from (rainstorm.coordinator.
                                             seal), ``dead_letters``,
                                             ``incomplete``; trusted by `result`
``rs:{job}:refusals``           hash         workers: worker id -> why it cannot
                                             run the job (bad signature, module
                                             not allowed, no --allow-exec ...)
``rs:{job}:cursor``             hash         FCALL rainstorm_load: ``pos`` =
                                             ``<file index>:<byte offset>`` of the
                                             next input byte, or ``done``
``rs:{job}:counters``           hash         per stage i, fields ``s<i>:<name>``
                                             (each name defined, with its writer
                                             and meaning, in rainstorm.protocol.
                                             counters).  FCALLs: ``emitted``,
                                             ``committed``, ``commits``, ``dead``,
                                             ``dead_records``, ``rejected``,
                                             ``requeued``, ``records_in``,
                                             ``records_out``, ``bytes_in``,
                                             ``loaded_bytes``, ``output_entries``,
                                             ``late_entries``, ``max_event_us``;
                                             workers, in the commit:
                                             ``invalid_utf8_entries``,
                                             ``malformed_rows``, ``late_records``,
                                             ``late_windows``; workers:
                                             ``claimed``, ``closed_retries``,
                                             ``wait_short``, commit latency
                                             ``lat:<le>``, ``lat:sum_us``,
                                             ``lat:count``; folders (rainstorm_
                                             compact): ``dead_deltas``;
                                             coordinator: ``missing_field``
``rs:{job}:s<i>:p<k>``          stream       stage i partition k; group ``g<i>``;
                                             fields ``u`` (uid), ``d`` (batch)
``<source.key>`` group          group        submit (XGROUP CREATE): consumer
``rainstorm:<job>``                          group of a stream source read
                                             directly (``transport: direct``):
                                             workers XREADGROUP/XAUTOCLAIM the
                                             user's stream through it and the
                                             commit XACKs (never XDELs) its
                                             entries; its last-delivered id is
                                             the job's position.  The stream is
                                             the user's (not ``{job}``-tagged);
                                             deleting the job destroys the
                                             group, never the stream
``rs:{job}:state:s<i>:p<k>``    hash         state partition k of stage i's
                                             aggregate (keys with crc32 % P = k):
                                             compaction: ``v`` version, ``t``
                                             token of the folded part's key,
                                             ``bs`` its bytes;
                                             commit/compaction: ``lb`` bytes
                                             logged and not yet folded
``rs:{job}:state:s<i>:p<k>:b:<t>``  string   the folded part (msgpack), written
                                             by the compaction that set ``t``
``rs:{job}:state:s<i>:p<k>:log``  stream     FCALL rainstorm_commit: one entry
                                             per commit touching the partition:
                                             ``t`` its delta's token, ``n`` its
                                             bytes
``rs:{job}:state:s<i>:p<k>:d:<t>``  string   that delta (msgpack), written in
                                             the commit's MULTI; deleted by the
                                             compaction that folds it
``rs:{job}:output``             stream       FCALL rainstorm_commit: record
                                             batches of a job without aggregate
``rs:{job}:late``               stream       FCALL rainstorm_commit: late records
                                             of a windowed aggregate (``d``: msgpack
                                             list of [key, value]), exactly once
``rs:{job}:sink``               hash         coordinator, streaming file sink:
                                             ``last_id`` written, file ``size``
``rs:{job}:dlq``                stream       dead letters: uid, stage, kind
                                             (entry, record; delta = an undecodable
                                             delta-log entry, moved by its folder;
                                             output = an undecodable output entry,
                                             by the coordinator's file sink), error,
                                             deliveries, data
``rs:{job}:failures``           hash         workers: ``<stream>/<entry id>`` ->
                                             failed runs of that pending entry
                                             (operator raised, timed out or
                                             crashed its isolated child); a
                                             field is removed when its entry
                                             is committed or dead-lettered
``rs:{job}:result``             hash         coordinator, ``redis`` sink only:
                                             the whole final aggregate, key -> value
``rs:{job}:top``                zset         coordinator: the 1000 largest keys
                                             of the final aggregate (score = value)
``rs:{job}:compact:s<i>:p<k>``  string       worker or coordinator: 5 s lease on
                                             folding partition k = its holder's id
                                             (rainstorm.lease), renewed while
                                             it works
==============================  ===========  =====================================
"""

from __future__ import annotations

from rainstorm.protocol import counters as counters_schema
from rainstorm.protocol.counters import StageCounter

PREFIX = "rs"
JOBS = f"{PREFIX}:jobs"
GRAPHS = f"{PREFIX}:graphs"
WORKERS = f"{PREFIX}:workers"


def graph(graph_id: str) -> str:
    """String: a dataflow graph's record (rainstorm.graph.Graph.to_json)."""
    return f"{PREFIX}:graph:{graph_id}"


def worker_stop(worker_id: str) -> str:
    return f"{PREFIX}:worker:{worker_id}:stop"


def _job(job: str) -> str:
    return f"{PREFIX}:{{{job}}}"


def spec(job: str) -> str:
    return f"{_job(job)}:spec"


def spec_signature(job: str) -> str:
    return f"{_job(job)}:sig"


def meta(job: str) -> str:
    return f"{_job(job)}:meta"


def cursor(job: str) -> str:
    return f"{_job(job)}:cursor"


def counters(job: str) -> str:
    return f"{_job(job)}:counters"


def stage_stream(job: str, stage: int, part: int) -> str:
    return f"{_job(job)}:s{stage}:p{part}"


def group(stage: int) -> str:
    return f"g{stage}"


def source_group(job: str) -> str:
    """The consumer group a job reads its stream source through (direct mode)."""
    return f"rainstorm:{job}"


def state(job: str, stage: int, part: int) -> str:
    """Hash: state partition ``part`` of stage ``stage``'s aggregate."""
    return f"{_job(job)}:state:s{stage}:p{part}"


def state_log(job: str, stage: int, part: int) -> str:
    """Stream: the deltas of state partition ``part`` not yet folded."""
    return f"{_job(job)}:state:s{stage}:p{part}:log"


def state_delta(state_key: str, token: str) -> str:
    """String: the delta a log entry of partition ``state_key`` names by
    ``token`` (``state_key``: :func:`state`)."""
    return f"{state_key}:d:{token}"


def state_blob(state_key: str, token: str) -> str:
    """String: the folded part of partition ``state_key`` its hash names by
    ``token`` (``state_key``: :func:`state`)."""
    return f"{state_key}:b:{token}"


def compact_lease(job: str, stage: int, part: int) -> str:
    return f"{_job(job)}:compact:s{stage}:p{part}"


def output(job: str) -> str:
    return f"{_job(job)}:output"


def late(job: str) -> str:
    return f"{_job(job)}:late"


def sink(job: str) -> str:
    return f"{_job(job)}:sink"


def dlq(job: str) -> str:
    return f"{_job(job)}:dlq"


def failures(job: str) -> str:
    return f"{_job(job)}:failures"


def failure_field(stream: str, entry_id: str) -> str:
    return f"{stream}/{entry_id}"


def result(job: str) -> str:
    return f"{_job(job)}:result"


def top(job: str) -> str:
    return f"{_job(job)}:top"


def job_pattern(job: str) -> str:
    """Glob matching every key of one job (for SCAN-based cleanup)."""
    return f"{_job(job)}:*"


def inputs(job: str) -> str:
    """String: the input files of a text source as listed at submit."""
    return f"{_job(job)}:inputs"


def seal(job: str) -> str:
    """Hash: a finished job's result digest and completeness (rainstorm.coordinator.seal)."""
    return f"{_job(job)}:seal"


def refusals(job: str) -> str:
    """Hash: worker id -> why that worker cannot run the job (written by
    workers, which may not write the meta hash)."""
    return f"{_job(job)}:refusals"


def counter_field(stage: int, counter: StageCounter) -> str:
    """A field of the counters hash; the names are rainstorm.protocol.counters'."""
    return counters_schema.field(stage, counter)
