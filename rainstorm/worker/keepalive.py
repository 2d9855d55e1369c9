"""The keep-alive thread: a batch in flight is never mistaken for a dead one.

While the main thread computes or commits a batch, this thread (on its own
connection from the client's pool), every ``claim_idle_ms / 3`` and at least
every ``heartbeat_s``:

* re-claims the batch's entries that are still pending for this worker to
  this worker (``XCLAIM ... JUSTID``: resets their idle time, does not count
  a delivery), so XAUTOCLAIM never steals live work;
* writes the heartbeat with state ``busy`` (the monitor and the autoscaler
  see a busy worker, not a dead one);
* watches the time-limited computation: one still running ``grace`` past
  ``operator_timeout_s`` is stuck where the timer cannot interrupt it (C
  code, or an operator that swallows the timeout); the worker exits so that
  it is replaced (the entry then runs in a child process: see
  rainstorm.worker.poison).  Code that holds the GIL while stuck stops this
  thread too; for it, faulthandler's C-level watchdog ends the process (exit
  status 1) after the timeout plus twice the grace.  (A worker
  run outside the main thread cannot be interrupted or ended: it stops
  renewing, so another worker takes the entries.)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis

from rainstorm.worker.batch import Entry
from rainstorm.worker.isolate import grace_s
from rainstorm.worker.timeout import can_interrupt, time_limit
from rainstorm.worker.watchdog import WATCHDOG

log = logging.getLogger(__name__)

# an idle arming is cancelled when it would fire within 3 looks of this
# thread plus this (a look delayed by a slow Redis call must not let it fire)
IDLE_MARGIN_S = 30.0


@dataclass
class InFlight:
    job: str
    stage: int
    group: str
    entries: list[Entry]
    every_s: float  # renewal period
    phase_started: float | None = None  # a time-limited computation is running
    phase_limit_s: float = 0.0
    interruptible: bool = True
    abandoned: bool = False  # stuck and cannot be ended: renew no more
    last_renew: float = field(default_factory=time.monotonic)


class KeepAlive:
    """One daemon thread per worker; the main thread calls begin/end/phase."""

    def __init__(self, r: redis.Redis, consumer: str, heartbeat_s: float,
                 beat: Callable[[], None], stuck: Callable[[InFlight], None]) -> None:
        self.r = r
        self.consumer = consumer
        self.heartbeat_s = heartbeat_s
        self._beat = beat
        self._stuck = stuck
        self._cur: InFlight | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._last_beat = 0.0
        self._period = heartbeat_s  # how long the thread sleeps between looks
        self._thread = threading.Thread(target=self._loop, name="rainstorm-keepalive",
                                        daemon=True)

    # -- the main thread's side ------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._thread.join(5)
        WATCHDOG.disarm()  # nothing watches an idle arming any more

    def begin(self, job: str, stage: int, group: str, entries: list[Entry],
              claim_idle_ms: int) -> None:
        every = min(claim_idle_ms / 3000, self.heartbeat_s)
        with self._lock:
            self._cur = InFlight(job, stage, group, list(entries), every)
        if every < self._period:  # rare: wake the thread to wait the shorter period
            self._period = every
            self._wake.set()

    def end(self) -> None:
        with self._lock:
            self._cur = None

    @property
    def current(self) -> InFlight | None:
        return self._cur

    @contextmanager
    def phase(self, limit_s: float) -> Iterator[None]:
        """Mark a time-limited computation (watched for being stuck)."""
        cur = self._cur
        if cur is not None:
            cur.phase_limit_s, cur.interruptible = limit_s, can_interrupt()
            cur.phase_started = time.monotonic()
        try:
            yield
        finally:
            if cur is not None:
                cur.phase_started = None

    @contextmanager
    def limit(self, seconds: float) -> Iterator[None]:
        """time_limit(seconds), watched by this thread (and, in the main
        thread, by faulthandler's watchdog, which needs no GIL)."""
        last_resort = can_interrupt()
        if last_resort:  # fires past this thread's own bound (limit + grace)
            grace = grace_s(seconds)
            WATCHDOG.cover(seconds + 2 * grace, grace / 2)
        try:
            with self.phase(seconds), time_limit(seconds):
                yield
        finally:
            if last_resort:
                WATCHDOG.done(self._idle_margin_s())

    def _idle_margin_s(self) -> float:
        """An arming of the watchdog due sooner than this is cancelled between
        phases: this thread may not look again before it fires."""
        return 3 * self._period + IDLE_MARGIN_S

    # -- the thread -------------------------------------------------------------
    def _loop(self) -> None:
        while not self._closed:
            self._wake.wait(self._period)
            self._wake.clear()
            # between phases: no arming may fire before this thread looks again
            WATCHDOG.idle(self._idle_margin_s())
            cur = self._cur
            if cur is None or self._closed:
                continue
            try:
                self._tend(cur)
            except redis.RedisError as exc:  # an outage: the main thread reports it
                log.debug("keep-alive: %s", exc)
            except Exception as exc:  # noqa: BLE001  (never let the thread die silently)
                log.error("keep-alive: unexpected %r", exc)

    def _tend(self, cur: InFlight) -> None:
        now = time.monotonic()
        if cur.phase_started is not None and not cur.abandoned and \
                now - cur.phase_started > cur.phase_limit_s + grace_s(cur.phase_limit_s):
            if cur.interruptible:
                self._stuck(cur)  # ends the process
            cur.abandoned = True
            log.error("worker %s: an operator of job %s stage %d is stuck past "
                      "operator_timeout_s and cannot be interrupted outside the main thread; "
                      "its entries are left to other workers", self.consumer, cur.job, cur.stage)
        if not cur.abandoned and now - cur.last_renew >= cur.every_s * 0.9:
            self.renew(cur)
            cur.last_renew = now
        if time.monotonic() - self._last_beat >= min(self.heartbeat_s, 1.0):
            self._last_beat = time.monotonic()
            self._beat()

    def renew(self, cur: InFlight) -> int:
        """XCLAIM ... JUSTID the entries still pending for this worker; returns
        how many.  An entry another worker took (or that was committed) is left
        alone: the owner is checked first, and the claim requires the entry to
        have been idle half a period (a steal between the two resets it)."""
        pipe = self.r.pipeline(transaction=False)
        for e in cur.entries:
            pipe.xpending_range(e.stream, cur.group, min=e.id, max=e.id, count=1,
                                consumername=self.consumer)
        owned: dict[str, list[Any]] = {}
        for e, rows in zip(cur.entries, pipe.execute(), strict=True):
            if rows:
                owned.setdefault(e.stream, []).append(e.id)
        min_idle = int(cur.every_s * 500)
        n = 0
        for stream, ids in owned.items():
            got: Any = self.r.xclaim(stream, cur.group, self.consumer, min_idle, ids,
                                     justid=True)
            n += len(got or [])
        return n
