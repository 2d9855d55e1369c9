"""A windowed streaming job runs in bounded memory: closed windows are
emitted once and evicted.

A producer process XADDs records ``{u: user, ts: event time}`` to a Redis
stream, ``--rate`` records per second of event time (evenly spaced, users
drawn from ``--users`` with a fixed seed), for ``--event-minutes`` of event
time, as fast as the engine takes them: it waits while more than two
event-seconds of records are unread by the job, and trims the source stream
up to what the job consumed, so the source stays bounded too.  The job
(stream source read as ranges, ``--transport split``, the default, or
through a consumer group, ``direct``; key_by user, 1 s tumbling windows,
count, file sink; 2 workers, a coordinator, a private embedded server)
emits every window the watermark
closes into its output stream; the file sink appends it to a JSON-lines file
and trims the stream.

Every ``--sample-s`` seconds we record the event time the job reached
(``s0:max_event_us``), the bytes of its state partitions (each folded
part's and its unfolded deltas' bytes, ``bs`` + ``lb``, and MEMORY USAGE of
each delta log), Redis ``used_memory``, the open
windows in state (window x key entries), the output stream's length and
the coordinator's and workers' RSS.  At the end the file must hold every
window closed by the final watermark exactly once, with the count the
producer computed (numpy array per event second and user), and the state
exactly the windows still open; exit status 1 otherwise.

    python experiments/window_memory.py [--quick] [--event-minutes 60] [--rate 10000]
        [--transport split|direct]

Writes experiments/results/window_memory.{csv,png}.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import ROOT, finish, parser, pyplot

from rainstorm import keys
from rainstorm.connection import connect
from rainstorm.coordinator.session import prepare
from rainstorm.job import Job, decode_records
from rainstorm.local.server import EmbeddedRedis
from rainstorm.lua import load_library
from rainstorm.protocol.counters import StageCounter
from rainstorm.protocol.entries import data_of, id_key, range_of
from rainstorm.protocol.stream_cursor import parse_pos
from rainstorm.spec import parse_spec
from rainstorm.state import agg_of, fold, parts

JOB = "winmem"
SOURCE = "events"
MAX_DELAY_S = 3  # commits land a little out of order: few records are late (checked exactly)
# a stage stream holds at most this many entries: the loader routes entries to
# the 2 stage partitions by hash, so one may run this far ahead of the other,
# i.e. BACKLOG * batch_records records of event time (keep it under MAX_DELAY_S)
BACKLOG = 16
LAG_EVENT_S = 2  # the producer waits while this many event-seconds are unread

SPEC = """name: {job}
source: {{type: stream, key: {key}, field: null, batch_records: {batch}, transport: {transport}}}
pipeline:
  - {{op: key_by, fn: field, args: {{name: u}}}}
  - {{op: window, time: field, args: {{name: ts}}, size_s: 1, max_delay_s: {delay}}}
  - {{op: count}}
sink: {{type: file, path: {path}}}
settings: {{batch_entries: 8, max_backlog: {backlog}, claim_idle_ms: 5000}}
"""


# -- the producer (a separate process: `window_memory.py --produce ...`) ------

def produce(url: str, seconds: int, rate: int, users: int, seed: int, ref_path: Path) -> None:
    """XADD ``rate`` records per event second for ``seconds`` event seconds,
    paced by the job's cursor; the counts per (second, user) go to ref_path."""
    r = connect(url)
    job = Job.build(JOB, parse_spec(json.loads(r.get(keys.spec(JOB)) or b"{}")))
    rng = random.Random(seed)
    ref = np.zeros((seconds, users), dtype=np.uint32)
    step_us = 1_000_000 // rate
    for s in range(seconds):
        _wait_for_room(r, job, LAG_EVENT_S * rate)
        pipe = r.pipeline(transaction=False)
        for i in range(rate):
            u = rng.randrange(users)
            ref[s, u] += 1
            pipe.xadd(SOURCE, {"u": f"u{u}", "ts": f"{s}.{i * step_us:06d}"})
            if len(pipe) >= 2000:
                pipe.execute()
        pipe.execute()
    np.save(ref_path, ref)
    r.close()


def _consumed_upto(r: Any, job: Job) -> bytes | None:
    """Where the job has consumed the source up to (XTRIM MINID keeps ids >=
    it): read directly through the job's consumer group, the oldest entry its
    workers still hold, else the last one delivered to them; read as ranges,
    past the oldest range not yet committed (its descriptor is still in a
    stage-0 stream), else past the last range cut (the cursor)."""
    if not r.exists(SOURCE):
        return None
    pipe = r.pipeline(transaction=True)  # one moment: no delivery in between
    if job.stream_ranges:
        pipe.hget(keys.cursor(JOB), "pos")
        for stream in job.streams(0):
            pipe.xrange(stream)
        pos, *streams = pipe.execute()
        if not pos:
            return None
        afters = [parse_pos(pos.decode())[0]]
        for rows in streams:
            for _id, fields in rows:
                ref = range_of(data_of(fields))
                if ref is not None:
                    afters.append(ref.after)
        ms, seq = min(id_key(a) for a in afters)
        return f"{ms}-{seq + 1}".encode()
    group = keys.source_group(JOB)
    pipe.xinfo_groups(SOURCE)
    pipe.xpending(SOURCE, group)
    groups, pending = pipe.execute()
    if pending.get("min"):
        return pending["min"]  # type: ignore[no-any-return]
    info = [g for g in groups if g["name"].decode() == group]
    return info[0]["last-delivered-id"] if info else None


def _wait_for_room(r: Any, job: Job, max_unread: int) -> None:
    """Trim the source up to what the job consumed; wait while it is too far behind."""
    while True:
        pos = _consumed_upto(r, job)
        if pos:
            r.xtrim(SOURCE, minid=pos, approximate=False)
        if r.xlen(SOURCE) <= max_unread:
            return
        time.sleep(0.02)


# -- sampling -----------------------------------------------------------------

def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def state_bytes(r: Any, job: Job) -> int:
    """The folded parts' and the unfolded deltas' bytes (``bs`` and ``lb`` of
    each partition) and the memory of the logs naming the deltas."""
    pipe = r.pipeline(transaction=False)
    for part in parts(job, 0):
        pipe.hmget(part.base, "bs", "lb")
        pipe.execute_command("MEMORY", "USAGE", part.log, "SAMPLES", "0")
    got = pipe.execute()
    return sum(int(x or 0) for sizes in got[0::2] for x in sizes) + sum(
        int(x or 0) for x in got[1::2])


def open_state(r: Any, job: Job) -> dict[str, int]:
    """Every window x key still in state, folded (one partition at a time)."""
    agg = agg_of(job, ("*",))
    out: dict[str, int] = {}
    for part in parts(job, 0):
        out.update(agg.finish(fold(part.snapshot(r), agg)))
    return out


def max_event_us(r: Any) -> int | None:
    raw = r.hget(keys.counters(JOB), keys.counter_field(0, StageCounter.MAX_EVENT_US))
    return None if raw is None else int(raw)


class Sampler:
    def __init__(self, r: Any, job: Job, pids: dict[str, list[int]], sink: Path) -> None:
        self.r, self.job, self.pids, self.sink = r, job, pids, sink
        self.t0 = time.monotonic()
        self.rows: list[dict[str, Any]] = []

    def sample(self) -> dict[str, Any]:
        me = max_event_us(self.r)
        opened = open_state(self.r, self.job)
        info = self.r.info("memory")
        row = {
            "wall_s": round(time.monotonic() - self.t0, 1),
            "event_s": round(me / 1e6, 3) if me is not None else 0.0,
            "state_bytes": state_bytes(self.r, self.job),
            "open_entries": len(opened),
            "open_windows": len({k.split("|", 1)[0] for k in opened}),
            "used_memory_mb": round(info["used_memory"] / 2**20, 2),
            "late_records": int(self.r.hget(keys.counters(JOB), keys.counter_field(
                0, StageCounter.LATE_RECORDS)) or 0),
            "late_stream_bytes": int(self.r.memory_usage(keys.late(JOB), samples=0) or 0),
            "source_len": self.r.xlen(SOURCE),
            "output_len": self.r.xlen(keys.output(JOB)),
            "file_mb": round(self.sink.stat().st_size / 2**20, 2) if self.sink.exists() else 0,
            "coordinator_rss_mb": round(sum(rss_mb(p) for p in self.pids["coordinator"]), 1),
            "workers_rss_mb": round(sum(rss_mb(p) for p in self.pids["workers"]), 1),
        }
        self.rows.append(row)
        return row


# -- checking -----------------------------------------------------------------

def late_records(r: Any, ref_path: Path) -> np.ndarray:
    """The records the job routed to its late stream, per (second, user);
    they count in no window (tumbling windows: a late record missed its one
    window), so the expected counts are the produced ones minus these."""
    ref = np.load(ref_path)
    late = np.zeros(ref.shape, dtype=ref.dtype)
    counted = int(r.hget(keys.counters(JOB), keys.counter_field(0, StageCounter.LATE_RECORDS))
                  or 0)
    n = 0
    for _id, fields in r.xrange(keys.late(JOB)):
        for _key, rec in decode_records(data_of(fields)):
            late[int(rec["ts"].split(".")[0]), int(rec["u"][1:])] += 1
            n += 1
    if n != counted:
        raise SystemExit(f"{counted} records counted late, {n} in the late stream")
    return late


def check(ref: np.ndarray, sink: Path, opened: dict[str, int], final_us: int
          ) -> tuple[bool, str, int]:
    """(correct, why not, windows x keys in the file)."""
    seconds, _users = ref.shape
    seen = np.zeros(ref.shape, dtype=bool)
    emitted = 0
    for line in sink.read_text(encoding="utf-8").splitlines():
        wkey, value = json.loads(line)
        start, user = wkey.split("|", 1)
        s, u = int(start), int(user[1:])
        if seen[s, u]:
            return False, f"window {wkey} is in the file twice", emitted
        if (s + 1 + MAX_DELAY_S) * 1_000_000 > final_us:
            return False, f"window {wkey} is in the file but still open", emitted
        if value != int(ref[s, u]):
            return False, f"window {wkey}: file {value}, produced {ref[s, u]}", emitted
        seen[s, u] = True
        emitted += 1
    for wkey, value in opened.items():
        start, user = wkey.split("|", 1)
        s, u = int(start), int(user[1:])
        if (s + 1 + MAX_DELAY_S) * 1_000_000 <= final_us:
            return False, f"closed window {wkey} is still in state (not evicted)", emitted
        if seen[s, u] or value != int(ref[s, u]):
            return False, f"open window {wkey}: state {value}, produced {ref[s, u]}", emitted
        seen[s, u] = True
    missing = np.argwhere((ref > 0) & ~seen)
    if len(missing):
        s, u = missing[0]
        return False, f"{len(missing)} windows x keys missing, e.g. {s}|u{u}", emitted
    return True, "", emitted


# -- the run ------------------------------------------------------------------

def wait(cond: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.05)


def settled(r: Any, job: Job) -> bool:
    """Every record produced was delivered to the job's group (or cut into a
    range) and committed."""
    last = r.xrevrange(SOURCE, count=1)
    if not last:
        return False
    if job.stream_ranges:
        pos = (r.hget(keys.cursor(JOB), "pos") or b"").decode()
        return parse_pos(pos)[0] == last[0][0].decode() \
            and not any(r.xlen(s) for s in job.streams(0))
    info = [g for g in r.xinfo_groups(SOURCE) if g["name"].decode() == keys.source_group(JOB)]
    return bool(info) and info[0]["last-delivered-id"] == last[0][0] \
        and info[0]["pending"] == 0


def run(a: Any, tmp: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    seconds = int(a.event_minutes * 60)
    sink = tmp / "windows.jsonl"
    spec_path = tmp / "spec.yaml"
    spec_text = SPEC.format(job=JOB, key=SOURCE, batch=a.batch_records, delay=MAX_DELAY_S,
                            path=sink, backlog=BACKLOG,
                            transport=a.transport)
    spec_path.write_text(spec_text)
    import yaml

    job, _files = prepare(parse_spec(yaml.safe_load(spec_text)), None, JOB)
    ref_path = tmp / "ref.npy"
    with EmbeddedRedis() as srv:
        r = connect(srv.url)
        load_library(r)
        env = dict(os.environ, RAINSTORM_REDIS=srv.url)
        env.setdefault("RAINSTORM_SECRET", secrets.token_hex(32))
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        coord = subprocess.Popen([sys.executable, "-m", "rainstorm", "submit", str(spec_path),
                                  "--job", JOB], env=env, cwd=ROOT, **quiet)
        workers = [subprocess.Popen([sys.executable, "-m", "rainstorm", "worker", "--job", JOB],
                                    env=env, cwd=ROOT, **quiet) for _ in range(2)]
        procs = [coord, *workers]
        try:
            wait(lambda: r.hget(keys.meta(JOB), "state") == b"running"
                 and r.hlen(keys.WORKERS) >= 2, 60, "the job and its workers")
            producer = subprocess.Popen(
                [sys.executable, __file__, "--produce", srv.url, str(seconds), str(a.rate),
                 str(a.users), str(a.seed), str(ref_path)], env=env, cwd=ROOT)
            procs.append(producer)
            sampler = Sampler(r, job, {"coordinator": [coord.pid],
                                       "workers": [w.pid for w in workers]}, sink)
            next_at = time.monotonic()
            while producer.poll() is None:
                if any(p.poll() is not None for p in (coord, *workers)):
                    raise SystemExit("the coordinator or a worker exited")
                if time.monotonic() >= next_at:
                    print(sampler.sample(), flush=True)
                    next_at += a.sample_s
                time.sleep(0.1)
            if producer.returncode != 0:
                raise SystemExit("the producer failed")
            wall = time.monotonic() - sampler.t0
            wait(lambda: settled(r, job), 300, "every record committed")
            final = sampler.sample()
            print(final, flush=True)
            final_us = max_event_us(r) or 0
            opened = open_state(r, job)
            res = subprocess.run([sys.executable, "-m", "rainstorm", "kill-job", JOB, "--keep"],
                                 env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
            if res.returncode != 0:
                raise SystemExit(f"kill-job failed: {res.stderr.strip()}")
            coord.wait(60)
            late = late_records(r, ref_path)
            output_left = r.xlen(keys.output(JOB))
        finally:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            for p in procs:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        r.close()
    ref = np.load(ref_path)
    ok, why, emitted = check(ref - late, sink, opened, final_us)
    summary = {"records": int(ref.sum()), "event_s": seconds, "wall_s": round(wall, 1),
               "rate_sustained": round(int(ref.sum()) / wall), "windows_x_keys_emitted": emitted,
               "open_at_end": len(opened), "late": int(late.sum()),
               "late_in_s": _span(late), "output_left": output_left,
               "correct": ok, "why": why}
    for row in sampler.rows:
        row["correct"] = ok
    return sampler.rows, summary


def _span(late: np.ndarray) -> str:
    secs = np.argwhere(late.sum(axis=1) > 0)
    return f"{secs.min()}..{secs.max()}" if len(secs) else ""


def slope_per_hour(rows: list[dict[str, Any]], col: str) -> float:
    """Least-squares slope of ``col`` vs event time over the last 80 % of
    the run, per event-hour."""
    end = rows[-1]["event_s"]
    pts = [(r["event_s"], r[col]) for r in rows if r["event_s"] >= 0.2 * end]
    if len(pts) < 3:
        return float("nan")
    x = np.array([p[0] for p in pts]) / 3600
    y = np.array([p[1] for p in pts], dtype=float)
    return float(np.polyfit(x, y, 1)[0])


def plot(rows: list[dict[str, Any]], summary: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    x = [r["event_s"] / 60 for r in rows]
    ax1.plot(x, [r["used_memory_mb"] for r in rows], label="Redis used_memory")
    ax1.plot(x, [r["state_bytes"] / 2**20 for r in rows], label="state partitions (bases + logs)")
    ax1.plot(x, [r["late_stream_bytes"] / 2**20 for r in rows], label="late stream")
    ax1.set_ylabel("MB")
    ax1.set_ylim(bottom=0)
    ax1.legend(fontsize=8, loc="upper left")
    ax1.set_title(f"1 s windows, {summary['rate']} records per event-second, "
                  f"{summary['users']} users, 2 workers: {summary['records']:,} records")
    ax2.plot(x, [r["coordinator_rss_mb"] for r in rows], label="coordinator RSS")
    ax2.plot(x, [r["workers_rss_mb"] / 2 for r in rows], label="worker RSS (mean of 2)")
    ax2.set_ylabel("MB")
    ax2.set_ylim(bottom=0)
    ax2.legend(fontsize=8, loc="lower right")
    ax3.plot(x, [r["open_entries"] for r in rows], label="open windows x keys in state")
    ax3.plot(x, [r["output_len"] for r in rows], label="output stream length")
    ax3.set_ylabel("entries")
    ax3.set_ylim(bottom=0)
    ax3.set_xlabel("event time reached (minutes)")
    ax3.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--produce":
        url, seconds, rate, users, seed, ref = sys.argv[2:8]
        produce(url, int(seconds), int(rate), int(users), int(seed), Path(ref))
        return 0
    ap = parser(__doc__)
    ap.add_argument("--event-minutes", type=float, default=60.0)
    ap.add_argument("--rate", type=int, default=10_000, help="records per event-second")
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--batch-records", type=int, default=0,
                    help="records per stage entry (default: rate / 20)")
    ap.add_argument("--sample-s", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--transport", choices=("split", "direct"), default="split",
                    help="how the workers read the source stream (source.transport)")
    a = ap.parse_args()
    if a.quick:
        a.event_minutes, a.rate, a.users, a.sample_s = 1.0, 2000, 200, 1.0
    a.batch_records = a.batch_records or max(10, a.rate // 20)
    if not 1 <= a.rate <= 1_000_000 or a.event_minutes * 60 < 1 or a.users < 1:
        ap.error("--rate must be 1..1000000, --event-minutes at least 1/60, --users >= 1")
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"rainstorm-winmem-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    rows, summary = run(a, tmp)
    summary.update(rate=a.rate, users=a.users)
    print(json.dumps(summary))
    for col, unit in (("used_memory_mb", "MB"), ("state_bytes", "bytes"),
                      ("open_entries", "entries"), ("coordinator_rss_mb", "MB"),
                      ("workers_rss_mb", "MB")):
        print(f"slope of {col} over the last 80% of the run: "
              f"{slope_per_hour(rows, col):+.2f} {unit} per event-hour "
              f"(max {max(r[col] for r in rows)}, last {rows[-1][col]})")
    if not summary["correct"]:
        print(f"WRONG: {summary['why']}", file=sys.stderr)
    return finish("window_memory", rows, a.out, lambda p: plot(rows, summary, p))


if __name__ == "__main__":
    sys.exit(main())
