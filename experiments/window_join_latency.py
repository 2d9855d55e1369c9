"""latency.py --window-join: a windowed stream-stream join's end-to-end latency.

A producer process XADDs records to two Redis streams (left, right) at a
fixed rate per side, each with its append time as its event time ``ts``
(seconds, µs precision) and a key ``seq % rate``, so that each key has about
one record per side in each window.  The graph (examples/window_join.yaml's
shape: two stream steps tagging their records, a step grouping both per
1 s tumbling window, watermark = max event time - 0.1 s, and an inner
``window_join`` step) runs with `rainstorm run --workers 2`; a consumer
follows the pairs step's output stream.

Two latencies per pair, both ending when the pair is visible in the output:
* **close**: from the append of the record that closed its window: the
  first record (of either side) whose event time reached the window's end +
  max_delay_s, i.e. the moment the watermark passed the end.  This is the
  engine's part: copying that record through two steps, the commit that
  moves the watermark, the fold that emits the window, the pairs step.
* **pair**: from the append of the later of its two records: what a user
  waits for a match, which includes waiting for the window to close (up to
  its size + max_delay_s) -- the price of emitting at window close.

Correctness: after the run the source streams are read back and the same
join computed in plain Python over every window the watermark had closed
(without the records the window step sent to its late stream); the pairs
seen must be exactly those, each once.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from common import ROOT, percentile, pyplot

from rainstorm import keys
from rainstorm.connection import connect
from rainstorm.job import decode_records
from rainstorm.operators.window_keys import start_us
from rainstorm.protocol.entries import data_of

SIZE_S = 1.0
DELAY_S = 0.1

SPEC = """name: wjlat
settings: {{batch_entries: 8, max_backlog: 1000, state_partitions: 8}}
steps:
  left:
    source: {{type: stream, key: {left}, field: null, batch_records: 200}}
    pipeline: [{{op: map, fn: join_side, args: {{side: left, key: k}}}}]
  right:
    source: {{type: stream, key: {right}, field: null, batch_records: 200}}
    pipeline: [{{op: map, fn: join_side, args: {{side: right, key: k}}}}]
  joined:
    input: [left, right]
    pipeline:
      - {{op: key_by, fn: pair_key, value: pair_value}}
      - {{op: window, time: side_field, args: {{name: ts}}, size_s: {size},
         max_delay_s: {delay}}}
      - {{op: group}}
  pairs:
    input: joined
    pipeline: [{{op: flat_map, fn: window_join, args: {{how: inner}}}}]
"""

PRODUCER = r"""
import sys, time, redis
url, left, right = sys.argv[1], sys.argv[2], sys.argv[3]
rate, seconds = float(sys.argv[4]), float(sys.argv[5])
r = redis.Redis.from_url(url)
t0 = time.monotonic(); sent = 0; total = int(rate * seconds); keys = int(rate)
while sent < total:
    due = int(min((time.monotonic() - t0) * rate, total))
    if due > sent:
        pipe = r.pipeline(transaction=False)
        ts = f"{time.time():.6f}"
        for seq in range(sent, due):
            k = str(seq % keys)
            pipe.xadd(left, {"k": k, "ts": ts, "s": seq})
            pipe.xadd(right, {"k": k, "ts": ts, "s": seq})
        pipe.execute()
        sent = due
    time.sleep(0.002)
print(sent)
"""

Sent = list[tuple[float, str, str]]  # (event time, key, seq) of one side


def _read_side(r: Any, key: str) -> Sent:
    out: Sent = []
    last = "-"
    while True:
        rows = r.xrange(key, min=last, count=10000)
        if last != "-":
            rows = rows[1:]
        if not rows:
            return out
        for _id, f in rows:
            out.append((float(f[b"ts"]), f[b"k"].decode(), f[b"s"].decode()))
        last = rows[-1][0]


def _start(t: float) -> float:
    us = round(t * 1e6)
    size = round(SIZE_S * 1e6)
    return (us - us % size) / 1e6


def _reference(left: Sent, right: Sent, late: set[tuple[str, str]], upto: float
               ) -> Counter[tuple[str, str, float]]:
    """The inner join of every window closed at max event time ``upto``,
    in plain Python: (left seq, right seq, window start) per pair."""
    groups: dict[tuple[float, str], tuple[list[str], list[str]]] = defaultdict(
        lambda: ([], []))
    for i, (side, recs) in enumerate((("left", left), ("right", right))):
        for t, k, s in recs:
            if (side, s) not in late:
                groups[(_start(t), k)][i].append(s)
    out: Counter[tuple[str, str, float]] = Counter()
    for (start, _k), (ls, rs) in groups.items():
        if start + SIZE_S + DELAY_S <= upto + 1e-9:
            out.update((a, b, start) for a in ls for b in rs)
    return out


def _closers(times: list[float], starts: set[float]) -> dict[float, float]:
    """Per window start: the append time of the first record whose event
    time reached its end + max_delay_s (what closed it)."""
    import bisect
    out = {}
    for s in starts:
        i = bisect.bisect_left(times, s + SIZE_S + DELAY_S - 1e-7)
        if i < len(times):
            out[s] = times[i]
    return out


def measure(url: str, rate: int, seconds: float, tmp: Path) -> dict[str, Any]:
    gid = f"wjl{rate}"
    left, right = f"left{rate}", f"right{rate}"
    spec = tmp / f"{gid}.yaml"
    spec.write_text(SPEC.format(left=left, right=right, size=SIZE_S, delay=DELAY_S))
    env = dict(os.environ, RAINSTORM_REDIS=url)
    env.setdefault("RAINSTORM_SECRET", secrets.token_hex(32))
    r = connect(url)
    run = subprocess.Popen([sys.executable, "-m", "rainstorm", "run", str(spec), "--redis", url,
                            "--workers", "2", "--job", gid], env=env, cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    steps = [f"{gid}.{s}" for s in ("left", "right", "joined", "pairs")]
    deadline = time.monotonic() + 60
    while any(r.hget(keys.meta(j), "state") != b"running" for j in steps) \
            or r.hlen(keys.WORKERS) < 2:
        if time.monotonic() > deadline or run.poll() is not None:
            raise SystemExit("the graph or its workers did not start")
        time.sleep(0.05)
    producer = subprocess.Popen([sys.executable, "-c", PRODUCER, url, left, right, str(rate),
                                 str(seconds)], stdout=subprocess.PIPE, text=True)
    seen: list[tuple[float, dict[str, Any], dict[str, Any], float]] = []
    emitted: dict[float, float] = {}  # window start -> when the window step emitted it
    out_key, win_key = keys.output(f"{gid}.pairs"), keys.output(f"{gid}.joined")
    last: dict[str, Any] = {out_key: "0-0", win_key: "0-0"}
    # the last window closes ~ SIZE_S + DELAY_S after its start: wait that, and 3 s more
    end_by = time.monotonic() + seconds + SIZE_S + DELAY_S + 3.0
    while time.monotonic() < end_by:
        reply: Any = r.xread(last, count=1000, block=100)
        now = time.time()
        for stream, rows in reply or []:
            name = stream.decode()
            for id_, fields in rows:
                last[name] = id_
                if name == win_key:  # closed windows, before the pairs step copies them
                    for wkey, _group in decode_records(fields[b"d"]):
                        emitted.setdefault(start_us(wkey) / 1e6, now)
                    continue
                for _key, (a, b), start in decode_records(fields[b"d"]):
                    seen.append((now, a, b, float(start)))
    producer.wait(30)
    subprocess.run([sys.executable, "-m", "rainstorm", "kill-job", steps[0], "--keep"],
                   env=env, cwd=ROOT, capture_output=True, timeout=30)
    try:
        run.wait(60)
    except subprocess.TimeoutExpired:
        run.kill()
        run.wait(10)
    sent_l, sent_r = _read_side(r, left), _read_side(r, right)
    late = {(v[0], v[1]["s"]) for _, f in r.xrange(keys.late(steps[2]))
            for _k, v in decode_records(data_of(f))}
    upto = max(t for t, _, _ in sent_l + sent_r)
    for k in (left, right):
        r.delete(k)
    r.close()
    want = _reference(sent_l, sent_r, late, upto)
    got = Counter((a["s"], b["s"], start) for _now, a, b, start in seen)
    times = sorted(t for t, _, _ in sent_l + sent_r)
    closer = _closers(times, {start for *_x, start in seen})
    t_first = times[0] if times else 0.0
    warm = [(now, a, b, start) for now, a, b, start in seen if start >= t_first + 1.0]
    close_ms = sorted((now - closer[start]) * 1e3 for now, _a, _b, start in warm)
    pair_ms = sorted((now - max(float(a["ts"]), float(b["ts"]))) * 1e3
                     for now, a, b, _s in warm)
    emit_ms = sorted((emitted[s] - closer[s]) * 1e3 for s in closer
                     if s in emitted and s >= t_first + 1.0)
    complete = got == want
    return {"rate_per_side": rate, "seconds": seconds, "records": len(sent_l) + len(sent_r),
            "late": len(late), "pairs_expected": sum(want.values()), "pairs_seen": len(seen),
            "close_p50_ms": round(percentile(close_ms, 0.50), 1),
            "close_p95_ms": round(percentile(close_ms, 0.95), 1),
            "close_p99_ms": round(percentile(close_ms, 0.99), 1),
            "close_max_ms": round(close_ms[-1] if close_ms else 0, 1),
            # per window: the record that closed it -> the window step emitted it
            "emit_median_ms": round(percentile(emit_ms, 0.5), 1),
            "emit_max_ms": round(emit_ms[-1] if emit_ms else 0, 1),
            "pair_p50_ms": round(percentile(pair_ms, 0.50), 1),
            "pair_p95_ms": round(percentile(pair_ms, 0.95), 1),
            "pair_p99_ms": round(percentile(pair_ms, 0.99), 1),
            "sustainable": complete,
            # exactly once: no pair twice, none that the same join in plain
            # Python does not give (a rate not sustained delivers fewer in time)
            "correct": all(n == 1 for n in got.values()) and not (set(got) - set(want))}


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rates = [r["rate_per_side"] for r in rows]
    for q, style in (("p50", "o-"), ("p95", "s-"), ("p99", "^-")):
        ax.plot(rates, [r[f"close_{q}_ms"] for r in rows], style, label=f"close {q}")
        ax.plot(rates, [r[f"pair_{q}_ms"] for r in rows], style[0] + "--", alpha=0.4,
                label=f"pair {q}")
    for r in rows:
        if not r["sustainable"]:
            ax.annotate("not sustained", (r["rate_per_side"], r["close_p99_ms"]), fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("input rate per side (records/s)")
    ax.set_ylabel("ms until the pair is in the output")
    ax.set_title(f"windowed join ({SIZE_S:g} s tumbling, max_delay {DELAY_S:g} s), 2 workers")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
