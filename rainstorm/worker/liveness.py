"""A worker's registration: its heartbeat in ``rs:workers`` and its stop key.

The main thread beats between batches (with the commit latencies observed
since the last beat); the keep-alive thread beats during a long batch
(state ``busy``).  Each beat also reads ``rs:worker:<id>:stop``, the polite
stop `rainstorm kill-worker` writes.  On exit the worker removes its
heartbeat; a worker that dies leaves one that only ages.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field

import redis

from rainstorm import keys, native
from rainstorm.latency import LatencyRecorder
from rainstorm.protocol.heartbeat import BUSY, IDLE, Heartbeat, host_name
from rainstorm.replies import as_str


@dataclass
class Activity:
    """What the heartbeat reports (written by the main thread)."""

    batches: int = 0  # batches committed
    busy_s: float = 0.0  # time spent computing and committing (utilization = its rate)
    current: str = ""  # the job:stage last worked on
    batch_t0: float | None = None  # when the batch in flight began (monotonic)
    ran: bool = False  # a batch ran since the last heartbeat
    started_at: float = field(default_factory=time.time)


class Registration:
    """Writes one worker's heartbeat and reads its stop key."""

    def __init__(self, r: redis.Redis, worker_id: str, heartbeat_s: float,
                 latency: LatencyRecorder, job: str | None, stage: int | None) -> None:
        self.r = r
        self.id = worker_id
        self.heartbeat_s = heartbeat_s
        self.latency = latency
        self.job = job
        self.stage = stage
        self.activity = Activity()
        self.last_beat = 0.0

    def due(self) -> bool:
        return time.time() - self.last_beat >= self.heartbeat_s

    def beat(self, busy: bool, flush: bool = False) -> str | None:
        """Write the heartbeat; ``flush`` (main thread only) adds the latency
        observations.  Returns the stop key's reason when it is set."""
        now = time.time()
        self.last_beat = now
        a = self.activity
        t0 = a.batch_t0
        busy_s = a.busy_s + (time.monotonic() - t0 if t0 is not None else 0.0)
        info = Heartbeat(host=host_name(), pid=os.getpid(), last_seen=now,
                         started=a.started_at, current=a.current,
                         state=BUSY if busy else IDLE, batches=a.batches,
                         busy_s=round(busy_s, 3), job=self.job, stage=self.stage,
                         container=container_id(), native=native.AVAILABLE)
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(keys.WORKERS, self.id, info.to_json())
        if flush:
            self.latency.flush(pipe)
        pipe.get(keys.worker_stop(self.id))
        stop = pipe.execute()[-1]
        return None if stop is None else as_str(stop)

    def leave(self) -> None:
        """Remove the heartbeat and the stop key (best effort: a stale
        heartbeat only ages)."""
        try:
            pipe = self.r.pipeline(transaction=False)
            self.latency.flush(pipe)
            pipe.hdel(keys.WORKERS, self.id)
            pipe.delete(keys.worker_stop(self.id))
            pipe.execute()
        except redis.RedisError:
            pass

    def vanish(self) -> None:
        """Remove the heartbeat only (a worker exiting at once)."""
        try:
            self.r.hdel(keys.WORKERS, self.id)
        except redis.RedisError:
            pass  # exiting anyway


def container_id() -> str | None:
    """The container this worker runs in: $RAINSTORM_CONTAINER if set, else
    the hostname inside Docker/Podman (they set it to the short container
    id), else None."""
    if os.environ.get("RAINSTORM_CONTAINER"):
        return os.environ["RAINSTORM_CONTAINER"]
    in_container = os.path.exists("/.dockerenv") or os.path.exists("/run/.containerenv")
    return socket.gethostname() if in_container else None
