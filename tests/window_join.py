"""The windowed stream-stream join's test kit: its graph, event records for
both sides, the same join in plain Python, and a streaming graph run in a
thread (stopped by cancelling one step)."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from rainstorm import keys
from rainstorm.coordinator.graph_run import GraphReport, prepare_graph
from rainstorm.graph import GraphSpec, parse_graph
from rainstorm.job import decode_records
from rainstorm.local.run import LocalRun, RunOptions
from rainstorm.monitor.counts import read_progress
from rainstorm.ops.tasks import kill_job
from rainstorm.protocol.entries import data_of

USERS = ("ann", "bob", "cy", "dee", "eve", "fay", "gus", "hal", "ida", "jo")
PHASE_S = 10  # event seconds per phase (see produce)
FAR_S = 10**6  # the closing records' event time: every real window closes
Rec = dict[str, str]


def join_graph(name: str, out: Path, hows: tuple[str, ...], size_s: float,
               slide_s: float | None = None, max_delay_s: float = 0,
               lateness_s: float = 0, first: tuple[dict[str, Any], ...] = (),
               **settings: Any) -> GraphSpec:
    """left + right (streams ``clicks`` and ``orders``) -> joined (windowed
    group, after the ops ``first``) -> one pairs step per ``how``, each with
    its file sink out/<how>.jsonl."""
    window = {"op": "window", "time": "side_field", "args": {"name": "ts"}, "size_s": size_s,
              "slide_s": slide_s, "max_delay_s": max_delay_s,
              "allowed_lateness_s": lateness_s}
    steps: dict[str, Any] = {
        side: {"source": {"type": "stream", "key": key, "field": None, "batch_records": 20},
               "pipeline": [{"op": "map", "fn": "join_side",
                             "args": {"side": side, "key": "user"}}]}
        for side, key in (("left", "clicks"), ("right", "orders"))}
    steps["joined"] = {"input": ["left", "right"],
                       "pipeline": [*first,
                                    {"op": "key_by", "fn": "pair_key", "value": "pair_value"},
                                    window, {"op": "group"}]}
    for how in hows:
        steps[f"pairs-{how}"] = {"input": "joined",
                      "pipeline": [{"op": "flat_map", "fn": "window_join",
                                    "args": {"how": how}}],
                      "sink": {"type": "file", "path": str(out / f"{how}.jsonl")}}
    return parse_graph({"name": name, "steps": steps,
                        "settings": {"state_partitions": 4, "batch_entries": 4, **settings}})


def events(rng: random.Random, t0_s: int, t1_s: int, per_s: int, side: str) -> list[Rec]:
    """``per_s`` records a second for event seconds [t0_s, t1_s), ms-exact,
    ascending; each names its side and its place, so every record differs."""
    out = []
    for s in range(t0_s, t1_s):
        for ms in sorted(rng.sample(range(1000), per_s)):
            out.append({"user": rng.choice(USERS), "ts": f"{s}.{ms:03d}",
                        "id": f"{side[0]}{s}.{ms}"})
    return out


def xadd(r: redis.Redis, key: str, records: list[Rec]) -> None:
    pipe = r.pipeline(transaction=False)
    for rec in records:
        pipe.xadd(key, rec)  # type: ignore[arg-type]
    pipe.execute()


def closing(side: str) -> Rec:
    """A record far ahead in event time: it closes every window before it
    (its own stays open, so it is in no result)."""
    return {"user": "~close", "ts": str(FAR_S), "id": f"{side[0]}-close"}


def reference(left: list[Rec], right: list[Rec], how: str, size_s: float,
              slide_s: float | None = None) -> Counter[str]:
    """The join in plain Python: each record into every window [s, s + size)
    holding its time (s a multiple of the slide, all in integer ms), then per
    window and user the pairs; as canonical JSON lines."""
    size, slide = round(size_s * 1000), round((slide_s or size_s) * 1000)
    groups: dict[tuple[int, str], tuple[list[Rec], list[Rec]]] = defaultdict(lambda: ([], []))
    for i, recs in enumerate((left, right)):
        for rec in recs:
            whole, _, frac = rec["ts"].partition(".")
            t = int(whole) * 1000 + int(frac.ljust(3, "0")[:3] or 0)
            s = t - t % slide
            while s > t - size:
                groups[(s, rec["user"])][i].append(rec)
                s -= slide
    out: Counter[str] = Counter()
    for (s, user), (ls, rs) in groups.items():
        start = s // 1000 if s % 1000 == 0 else s / 1000
        if how == "cogroup":
            out[canonical([user, [ls, rs], start])] += 1
            continue
        lefts: list[Rec | None] = list(ls) or ([None] if how in ("right", "full") else [])
        rights: list[Rec | None] = list(rs) or ([None] if how in ("left", "full") else [])
        out.update(canonical([user, [a, b], start]) for a in lefts for b in rights)
    return out


def canonical(pair: Any) -> str:
    if isinstance(pair[1][0], list):  # cogroup: the sides' records in any order
        pair = [pair[0], [sorted(pair[1][0], key=lambda r: r["id"]),
                          sorted(pair[1][1], key=lambda r: r["id"])], pair[2]]
    return json.dumps(pair, sort_keys=True)


def file_pairs(path: Path) -> Counter[str]:
    if not path.exists():
        return Counter()
    return Counter(canonical(json.loads(line))
                   for line in path.read_text(encoding="utf-8").splitlines())


def late_records(r: redis.Redis, job: str) -> list[Rec]:
    """What the window step sent to its late stream: the tagged records'
    originals (``[key, [side, record]]``)."""
    rows: Any = r.xrange(keys.late(job))
    return [value[1] for _, f in rows for _key, value in decode_records(data_of(f))]


def wait_for(cond: Callable[[], Any], timeout_s: float, what: str,
             failed: Callable[[], Any] = lambda: None) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if failed():
            raise AssertionError(f"the graph failed while waiting for {what}: {failed()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


class GraphThread:
    """A streaming graph run with its local workers (LocalRun), driven in a
    thread; :meth:`stop` cancels one step (so the graph) and returns the report."""

    def __init__(self, r: redis.Redis, gspec: GraphSpec, graph_id: str, opts: RunOptions
                 ) -> None:
        self.r = r
        self.graph, self.steps = prepare_graph(gspec, graph_id)
        self.opts = opts
        self.run = LocalRun(opts)
        self.out: list[GraphReport] = []
        self.failed: list[BaseException] = []
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()

    def _main(self) -> None:
        try:
            with self.run:
                self.out.append(self.run.run_graph(self.graph, self.steps, self.opts))
        except BaseException as exc:  # noqa: BLE001 - reported by stop() and waits
            self.failed.append(exc)

    def job(self, step: str) -> str:
        return f"{self.graph.id}.{step}"

    def records_in(self, step: str) -> int:
        try:
            return read_progress(self.r, self.job(step)).counts.stage(0).records_in
        except Exception:  # noqa: BLE001 - not submitted yet
            return -1

    def wait_running(self, timeout_s: float = 60) -> None:
        wait_for(lambda: all(self.r.hget(keys.meta(s.job_id), "state") == b"running"
                             for s in self.graph.steps), timeout_s, "every step running",
                 lambda: self.failed)

    def wait_records(self, step: str, n: int, timeout_s: float = 90) -> None:
        """Until step ``step``'s stage 0 has committed ``n`` records."""
        wait_for(lambda: self.records_in(step) >= n, timeout_s,
                 f"{n} records through step {step}", lambda: self.failed)

    def stop(self, timeout_s: float = 60) -> GraphReport:
        kill_job(self.r, self.job(self.graph.steps[0].name), keep=True)
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "the graph did not stop"
        assert not self.failed, self.failed
        return self.out[0]


def produce(run: GraphThread, rng: random.Random, phases: int, per_s: int,
            added: Callable[[int], None] = lambda _k: None) -> tuple[list[Rec], list[Rec]]:
    """Both sides, a phase at a time (PHASE_S event seconds: max_delay_s >=
    it, so no record of a phase is late), each committed by the window step
    before the next is added; ``added(k)`` is called once phase k is added."""
    left: list[Rec] = []
    right: list[Rec] = []
    for k in range(phases):
        lo, hi = k * PHASE_S, (k + 1) * PHASE_S
        more_l, more_r = events(rng, lo, hi, per_s, "left"), events(rng, lo, hi, per_s, "right")
        left += more_l
        right += more_r
        xadd(run.r, "clicks", more_l)
        xadd(run.r, "orders", more_r)
        added(k)
        run.wait_records("joined", len(left) + len(right))
    return left, right


def close_all(run: GraphThread, sent: int, want: dict[str, int]) -> None:
    """Add the closing records, then wait until each pairs step's file has
    its expected number of pairs (stop() then flushes everything committed)."""
    xadd(run.r, "clicks", [closing("left")])
    xadd(run.r, "orders", [closing("right")])
    run.wait_records("joined", sent + 2)
    out = Path(run.graph.step(f"pairs-{next(iter(want))}").spec.sink.path or "").parent
    wait_for(lambda: all(sum(file_pairs(out / f"{h}.jsonl").values()) >= n
                         for h, n in want.items()), 90, "every window's pairs in the files",
             lambda: run.failed)
