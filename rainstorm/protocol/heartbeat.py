"""A worker's heartbeat: the JSON value of its field in the ``rs:workers`` hash.

Workers write it every heartbeat (``Heartbeat.to_json``); the monitor reads
it (``Heartbeat.from_json``) for ``rainstorm workers``, the dashboard, the
autoscaler and the coordinator's refusal check.  A value that is not a
heartbeat (written by hand) reads as None and is skipped, never a crash.
Its ``host`` is :func:`host_name`.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass
from typing import Any

BUSY = "busy"  # running a batch (the keep-alive thread beats during it)
IDLE = "idle"  # waiting for work


def host_name() -> str:
    """The host a worker reports: $RAINSTORM_HOSTNAME (e.g. a Kubernetes node
    name) or the machine's host name.  kill-worker --force SIGKILLs only
    workers whose host is its own."""
    return os.environ.get("RAINSTORM_HOSTNAME") or socket.gethostname()


@dataclass(frozen=True)
class Heartbeat:
    host: str | None = None
    pid: int | None = None
    last_seen: float = 0.0  # time.time() of the beat
    started: float | None = None  # time.time() the worker started
    current: str = ""  # what it works on now (job/stage/stream), "" when idle
    state: str = ""  # BUSY or IDLE
    batches: int = 0  # batches committed since it started
    busy_s: float = 0.0  # seconds spent computing batches since it started
    job: str | None = None  # the job it is pinned to (--job), None: any
    stage: int | None = None  # the stage it is pinned to (--stage), None: any
    container: str | None = None  # its container id, when it runs in one
    native: bool | None = None  # its per-key loops in C (rainstorm.native); None: not said

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, blob: bytes | str) -> Heartbeat | None:
        """The heartbeat in ``blob``; None if it is not one."""
        try:
            info: Any = json.loads(blob)
            return cls(host=_opt(info.get("host"), str), pid=_opt(info.get("pid"), int),
                       last_seen=float(info.get("last_seen", 0)),
                       started=_opt(info.get("started"), float),
                       current=str(info.get("current") or ""),
                       state=str(info.get("state") or ""),
                       batches=int(info.get("batches") or 0),
                       busy_s=float(info.get("busy_s") or 0.0),
                       job=_opt(info.get("job"), str), stage=_opt(info.get("stage"), int),
                       container=_opt(info.get("container"), str),
                       native=_bool_or_none(info.get("native")))
        except (ValueError, TypeError, AttributeError):
            return None


def _opt(value: Any, kind: type[Any]) -> Any:
    return None if value is None else kind(value)


def _bool_or_none(value: Any) -> bool | None:
    """A JSON true/false as it is; anything else (missing, a string like
    "false" that bool() would call true) as not said."""
    return value if isinstance(value, bool) else None
