"""A short lease held by one process: ``rs:{job}:compact:s<i>:p<k>`` = its holder.

The holder is ``<kind>:<host>:<pid>:<nonce>`` (kind ``coordinator`` or
``worker``).  The lease lives ``LEASE_MS``, its holder renews it while it
works and deletes it when done.  A holder that dies stops renewing, so the
lease is gone within ``LEASE_MS``; sooner when the others can tell it is gone:

* a lease without expiry, or one longer than any holder sets (set by hand, or
  an older version's 30 s lease);
* a holder on this host whose process has exited;
* a worker holder with no live heartbeat in ``rs:workers``.

A lease only saves duplicate work: what it guards (``rainstorm_compact``)
checks versions itself, so a race between two holders changes nothing.  Its
commands are plain GET/SET/DEL (the ``worker`` ACL user has them).
"""

from __future__ import annotations

import logging
import os
import time
import uuid

import redis

from rainstorm import monitor
from rainstorm.protocol.heartbeat import host_name
from rainstorm.replies import as_str

log = logging.getLogger(__name__)

LEASE_MS = 5_000
SLACK_MS = 1_000  # a TTL above LEASE_MS + SLACK_MS was not set by a live holder


def holder_id(kind: str) -> str:
    return f"{kind}:{host_name()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Lease:
    def __init__(self, r: redis.Redis, key: str, holder: str) -> None:
        self.r = r
        self.key = key
        self.holder = holder

    def acquire(self) -> bool:
        """Take the lease if it is free or its holder is gone."""
        if self.r.set(self.key, self.holder, nx=True, px=LEASE_MS):
            return True
        pipe = self.r.pipeline(transaction=False)
        pipe.get(self.key)
        pipe.pttl(self.key)
        raw, ttl = pipe.execute()
        if raw is None:
            return False  # expired just now: the next try takes it
        current = as_str(raw)
        if current != self.holder and not self._abandoned(current, int(ttl)):
            return False
        if current != self.holder:
            log.warning("%s: taking over the lease of %s (gone)", self.key, current)
        self.r.set(self.key, self.holder, px=LEASE_MS)
        return True

    def acquire_within(self, timeout_s: float, every_s: float = 0.01) -> bool:
        """Take the lease, waiting up to ``timeout_s`` while another holds
        it (a fold takes milliseconds); False if it stayed held."""
        deadline = time.monotonic() + timeout_s
        while not self.acquire():
            if time.monotonic() >= deadline:
                return False
            time.sleep(every_s)
        return True

    def renew(self) -> bool:
        """Extend the lease while working; False if it was lost meanwhile."""
        if as_str(self.r.get(self.key) or b"") != self.holder:
            return False
        return bool(self.r.set(self.key, self.holder, xx=True, px=LEASE_MS))

    def release(self) -> None:
        if as_str(self.r.get(self.key) or b"") == self.holder:
            self.r.delete(self.key)

    def _abandoned(self, holder: str, ttl_ms: int) -> bool:
        if ttl_ms == -1 or ttl_ms > LEASE_MS + SLACK_MS:
            return True
        kind, _, rest = holder.partition(":")
        host, _, rest = rest.partition(":")
        pid_text = rest.partition(":")[0]
        if not pid_text.isdigit():
            return False  # not ours to judge: wait for its expiry
        pid = int(pid_text)
        if host == host_name():
            return not _pid_alive(pid)
        if kind == "worker":
            return not any(w.host == host and w.pid == pid and w.alive
                           for w in monitor.workers(self.r))
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True
