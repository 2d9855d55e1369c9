"""Helpers for tests: specs, worker processes, bounded waits, and the test
suite's short forms of the one submit-then-drive path
(rainstorm.coordinator.session.Session): :func:`submit` creates a job
(workers may then race for it), :func:`drive` coordinates it to its end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from rainstorm import keys, lua
from rainstorm.coordinator.progress import read_status
from rainstorm.coordinator.result import Result, materialized
from rainstorm.coordinator.session import Session, prepare
from rainstorm.job import Job, encode_records
from rainstorm.jobstore import load_job
from rainstorm.local.pool import LocalWorkers
from rainstorm.monitor import JobCounts, read_progress
from rainstorm.protocol.counters import StageCounter
from rainstorm.protocol.entries import entry_fields, stream_uid
from rainstorm.sources.direct import group_state
from rainstorm.sources.ranges import resolve_stream_transport
from rainstorm.spec import JobSpec, parse_spec

ROOT = Path(__file__).resolve().parent.parent


def wordcount_spec(fn: str = "split_words", **settings: Any) -> JobSpec:
    batch_bytes = settings.pop("batch_bytes", 4096)
    return parse_spec({
        "name": "wc",
        "source": {"type": "text", "batch_bytes": batch_bytes},
        "pipeline": [{"op": "flat_map", "fn": fn}, {"op": "count"}],
        "settings": settings,
    })


def stream_wordcount_job(r: redis.Redis, job_id: str, **settings: int) -> Job:
    """A submitted word count over a stream source copied into stage 0
    (parallelism 1): its stage-0 entries are written by :func:`add_stage0`,
    as the coordinator's loader writes them."""
    spec = parse_spec({
        "name": job_id, "source": {"type": "stream", "key": "ev", "field": None,
                                   "transport": "copy"},
        "pipeline": [{"op": "flat_map", "fn": "split_words"}, {"op": "count"}],
        "settings": {"parallelism": 1, **settings}})
    job, files = prepare(spec, None, job_id)
    submit(r, job, files)
    return job


def windowed_count_job(r: redis.Redis, job_id: str, batch_records: int,
                       **settings: Any) -> Job:
    """A submitted streaming count per user over 1 s event-time windows
    (field ``ts``), reading the stream named ``job_id`` (read as ranges),
    ``batch_records`` records to a batch, parallelism 1."""
    spec = parse_spec({
        "name": job_id,
        "source": {"type": "stream", "key": job_id, "field": None,
                   "batch_records": batch_records, "linger_ms": 0},
        "pipeline": [{"op": "key_by", "fn": "field", "args": {"name": "user"}},
                     {"op": "window", "time": "field", "args": {"name": "ts"}, "size_s": 1},
                     {"op": "count"}],
        "settings": {"parallelism": 1, **settings}})
    job, files = prepare(spec, None, job_id)
    job = resolve_stream_transport(r, job)
    submit(r, job, files)
    return job


def add_stage0(r: redis.Redis, job: Job, lines: list[str], first: int = 1) -> None:
    """One stage-0 entry per line (uids ``first``-0, ``first + 1``-0, ...)
    and the stage's emitted counter, as the loader writes them."""
    for i, line in enumerate(lines, start=first):
        r.xadd(keys.stage_stream(job.id, 0, 0),
               entry_fields(stream_uid(f"{i}-0"), encode_records([line])))
    r.hincrby(keys.counters(job.id), keys.counter_field(0, StageCounter.EMITTED), len(lines))


def start_worker(url: str, job: str, **env: str) -> subprocess.Popen[bytes]:
    e = dict(os.environ, RAINSTORM_REDIS=url, RAINSTORM_ALLOW_MODULES="tests", **env)
    return subprocess.Popen(
        [sys.executable, "-m", "rainstorm", "worker", "--job", job, "--burst"],
        cwd=ROOT, env=e, stdin=subprocess.DEVNULL,
    )


def wait_for(cond: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.01) -> Any:
    """Poll ``cond`` until truthy; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(every_s)


def pending_of(r: redis.Redis, job: str, consumer: str, streams: list[str],
               group: str = keys.group(0)) -> list[str]:
    ids: list[str] = []
    for s in streams:
        for row in r.xpending_range(s, group, "-", "+", 1000, consumername=consumer):
            ids.append(row["message_id"].decode())
    return ids


def stage0_inputs(job: Job) -> list[tuple[str, str]]:
    """(stream, group) stage 0 reads: the job's stage-0 streams, and the
    user's stream of a job that reads it directly."""
    own = [(s, keys.group(0)) for s in job.streams(0)]
    return own + ([(job.source_stream, keys.source_group(job.id))] if job.source_stream else [])


def held_by(r: redis.Redis, job: Job, pid: int, consumer: str | None = None) -> list[str]:
    """Stage-0 entry ids pending for worker process ``pid``: consumer
    ``consumer``, or any whose name holds ``-<pid>-`` (a worker's default id)."""
    held = []
    for stream, group in stage0_inputs(job):
        names = [consumer] if consumer is not None else [
            c["name"].decode() for c in r.xinfo_consumers(stream, group)
            if f"-{pid}-" in c["name"].decode()]
        held += [i for name in dict.fromkeys(names)
                 for i in pending_of(r, job.id, name, [stream], group)]
    return held


def stopped_holding(r: redis.Redis, job: Job, pid: int, consumer: str | None = None) -> bool:
    """SIGSTOP worker process ``pid``: True (and it stays stopped) if it holds
    stage-0 entries, else SIGCONT and False.  Polled with wait_for, it catches
    a worker in the middle of a batch without a race (a stopped worker cannot
    commit what it holds)."""
    os.kill(pid, signal.SIGSTOP)
    try:
        if held_by(r, job, pid, consumer):
            return True
    except BaseException:  # (its streams not made yet...): never leave it stopped
        os.kill(pid, signal.SIGCONT)
        raise
    os.kill(pid, signal.SIGCONT)
    return False


def kill_a_holder(r: redis.Redis, pool: Callable[[], LocalWorkers | None], job_id: str,
                  killed: list[tuple[int, list[str]]], stop: threading.Event,
                  poll_s: float = 0.01, within_s: float = 120) -> None:
    """Once job ``job_id`` exists, SIGSTOP the live workers of ``pool()`` one
    at a time until one holds stage-0 entries of it (so it cannot commit
    them), then SIGKILL it; ``(pid, the entries it held)`` is appended to
    ``killed``.  Only live workers: a dead worker's pid may belong to another
    process by now."""
    deadline = time.monotonic() + within_s
    while not stop.is_set() and time.monotonic() < deadline:
        workers = pool()
        if workers is not None and r.exists(keys.spec(job_id)):
            job = load_job(r, job_id)
            for pid in [p.pid for p in workers.alive if p.pid is not None]:
                try:
                    if stopped_holding(r, job, pid):
                        held = held_by(r, job, pid)
                        os.kill(pid, signal.SIGKILL)
                        killed.append((pid, held))
                        return
                except (ProcessLookupError, redis.ResponseError):
                    continue  # gone, or its streams not made yet
        stop.wait(poll_s)


def consumers_of(r: redis.Redis, stream: str, stage: int = 0) -> dict[str, int]:
    return {c["name"].decode(): c["pending"] for c in r.xinfo_consumers(stream, keys.group(stage))}


def counters(r: redis.Redis, job: str) -> JobCounts:
    """The job's counters, typed, as rainstorm.monitor (the one reader) reads them."""
    return read_progress(r, job).counts


def submit(r: redis.Redis, job: Job, files: list[Path], *, key: bytes | None = None,
           unsigned: bool = False) -> bool:
    """Create ``job``'s keys through the Session (False: it was there, resumed)."""
    return Session(r, job, files, key=key, unsigned=unsigned).submit()


def drive(r: redis.Redis, job: Job, **kw: Any) -> Result:
    """Coordinate a submitted ``job`` to its end through the Session
    (keywords: those of Session.drive); a failure marks the job failed."""
    return Session(r, job, []).drive(**kw)


def streaming_banner(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """(Redis URL, job id) from the first stderr line of `rainstorm run` of a
    streaming job ("streaming job <id> on <url>: runs until cancelled ...")."""
    assert proc.stderr is not None
    first = proc.stderr.readline()
    assert "streaming job" in first, first + proc.stderr.read()[-2000:]
    where = first.split(" on ", 1)[1].split(": runs until", 1)[0]
    return where, first.split()[2]


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`rainstorm ARGS --redis URL`, as a user types it."""
    return subprocess.run([sys.executable, "-m", "rainstorm", *args, "--redis", url], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, RAINSTORM_ALLOW_MODULES="tests"))


def worker(url: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
    """`rainstorm worker ARGS` (any options, unlike start_worker's --job --burst)."""
    e = dict(os.environ, RAINSTORM_REDIS=url, RAINSTORM_ALLOW_MODULES="tests", **env)
    return subprocess.Popen([sys.executable, "-m", "rainstorm", "worker", *args], cwd=ROOT,
                            env=e, stdin=subprocess.DEVNULL)


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(10)


class Driven:
    """The coordinator of ``job`` in a thread; ``result()`` waits for it."""

    def __init__(self, r: redis.Redis, job: Job, timeout_s: float | None = 90) -> None:
        self.out: dict[str, Any] = {}
        self.thread = threading.Thread(target=self._run, args=(r, job, timeout_s), daemon=True)
        self.thread.start()

    def _run(self, r: redis.Redis, job: Job, timeout_s: float | None) -> None:
        try:
            # read now: the job's keys may be gone when the test looks
            self.out["result"] = materialized(drive(r, job, timeout_s=timeout_s))
        except Exception as exc:  # reported by result()
            self.out["error"] = exc

    def result(self, timeout_s: float = 100) -> Any:
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "coordinator did not finish"
        if "error" in self.out:
            raise self.out["error"]
        return self.out["result"]


class Streaming(Driven):
    """An unbounded job, submitted, with its coordinator in a thread;
    ``stopped()`` waits for it to stop (after kill-job) and returns its result."""

    def __init__(self, r: redis.Redis, spec_data: dict[str, Any], job_id: str) -> None:
        self.job, files = prepare(parse_spec(spec_data), None, job_id)
        submit(r, self.job, files)
        super().__init__(r, self.job, timeout_s=None)

    def stopped(self, timeout_s: float = 30) -> Any:
        return self.result(timeout_s)


def settled(r: redis.Redis, job: str, source_key: str) -> bool:
    """Every record XADDed to ``source_key`` so far is loaded (or cut into
    ranges, or read directly, delivered) and every entry committed."""
    the_job = load_job(r, job)
    if the_job.direct:  # every entry delivered to the job's group (lag 0), none pending
        info = group_state(r, the_job)
        return (info is not None and info["lag"] == 0 and info["pending"] == 0
                and info["entries-read"] > 0
                and all(s.settled for s in read_status(r, the_job).stages))
    last = r.xrevrange(source_key, count=1)
    pos = r.hget(keys.cursor(job), "pos")
    if pos is not None and the_job.stream_ranges:  # <last id>/<entries-added there>
        pos = pos.split(b"/")[0]
    s0 = counters(r, job).stage(0)
    return bool(last) and pos == last[0][0] and s0.emitted > 0 and s0.settled


AWK_MAP = "awk '{for (i = 1; i <= NF; i++) print $i \"\\t\" 1}'"
AWK_REDUCE = "awk -F'\\t' '{c[$1] += $2} END {for (k in c) print k \"\\t\" c[k]}'"


def read_parts(out: Path, partitions: int) -> Counter[str]:
    """A MapReduce output directory's part files, checked: each key in the
    part its crc32 routes it to, and in one reducer call only."""
    got: Counter[str] = Counter()
    for p in range(partitions):
        for line in (out / f"part-{p:05d}").read_text(encoding="utf-8").splitlines():
            word, n = line.rsplit("\t", 1)
            assert zlib.crc32(word.encode()) % partitions == p  # each key in its partition
            assert word not in got  # and in one reducer call only
            got[word] = int(n)
    return got


def external_spec(pipe: dict[str, object], **settings: object) -> Any:
    """A word count whose first step is the external program ``pipe``."""
    return parse_spec({
        "name": "ext", "source": {"batch_bytes": 2048},
        "pipeline": [{"op": "pipe", **pipe}, {"op": "flat_map", "fn": "split_words"},
                     {"op": "count"}],
        "settings": settings})


def lines_of(paths: list[Path]) -> list[str]:
    return [ln for p in paths for ln in p.read_text(encoding="utf-8").splitlines()]


def children(pid: int) -> list[int]:
    """Pids of the live (or zombie) children of ``pid``, read from /proc."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def cmdline(pid: int) -> str:
    """A process's command line ('' once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def produce_lines(r: redis.Redis, key: str, lines: list[str], every: int = 0) -> int:
    """XADD the lines (field ``line``); with ``every``, each every-th entry
    has only a field ``other`` (no record).  Returns how many lack it."""
    pipe = r.pipeline(transaction=False)
    missing = 0
    for i, line in enumerate(lines):
        if every and i % every == every - 1:
            pipe.xadd(key, {"other": line})
            missing += 1
        else:
            pipe.xadd(key, {"line": line})
    pipe.execute()
    return missing


# -- a state partition's keys, read and written raw (as an attacker or a
#    test's setup would): the layout rainstorm.lua documents ----------------

def base_blob(r: redis.Redis, base: str) -> bytes:
    """The folded part partition ``base`` names (b'' while it has none)."""
    token = r.hget(base, "t")
    if not token:
        return b""
    blob = r.get(keys.state_blob(base, token.decode()))
    assert blob is not None, f"{base} names a folded part that is missing"
    return bytes(blob)


def forge_base(r: redis.Redis, base: str, blob: bytes) -> None:
    """Replace partition ``base``'s folded part by ``blob`` behind rainstorm's
    back (its version left as it is)."""
    token = lua.new_token()
    r.set(keys.state_blob(base, token), blob)
    r.hset(base, mapping={"t": token, "bs": len(blob)})


def logged(r: redis.Redis, base: str, log: str) -> list[tuple[str, bytes]]:
    """(log id, delta) of each entry of partition ``base``'s delta log."""
    out = []
    for id_, fields in r.xrange(log):
        blob = r.get(keys.state_delta(base, fields[b"t"].decode()))
        assert blob is not None, f"{log} entry {id_!r} names a missing delta"
        assert int(fields[b"n"]) == len(blob)
        out.append((id_.decode(), bytes(blob)))
    return out


def append_delta(r: redis.Redis, base: str, log: str, blob: bytes) -> str:
    """Log ``blob`` into partition ``base`` as a commit would (without its
    'lb'); the new entry's id."""
    token = lua.new_token()
    r.set(keys.state_delta(base, token), blob)
    return str(r.xadd(log, {"t": token, "n": len(blob)}).decode())


def state_keys(r: redis.Redis, job: str) -> set[str]:
    """The keys of ``job``'s state partitions: bases, logs, folded parts and
    deltas."""
    return {k.decode() for k in r.scan_iter(match=f"{keys.job_pattern(job)[:-1]}state:*")}
