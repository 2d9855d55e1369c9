"""The KEYS/ARGV layout and the status replies of each library function.

Each :class:`Layout` names the fixed KEYS and ARGV positions of one function
in the order of the ``-- KEYS[i] = name`` / ``-- ARGV[i] = name`` contract
lines above it in rainstorm.lua (tests/unit/test_lua_contract.py checks
they agree); :meth:`Layout.build` is the one place a call's fixed part is
put together.  Each writing function answers a status from its own enum; a
status outside it is a :class:`ProtocolError`, never taken for another.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from rainstorm.errors import ProtocolError
from rainstorm.replies import as_str


@dataclass(frozen=True)
class Layout:
    function: str
    keys: tuple[str, ...]  # fixed KEYS, in order
    argv: tuple[str, ...]  # fixed ARGV, in order

    def build(self, keys: Mapping[str, str], argv: Mapping[str, Any],
              more_keys: Iterable[str] = (), more_args: Iterable[Any] = ()
              ) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of one call: the fixed ones (by name, checked
        against the layout) followed by the variable parts."""
        if tuple(keys) != self.keys or tuple(argv) != self.argv:
            raise ProtocolError(f"{self.function}: a call built as KEYS {tuple(keys)} ARGV "
                                f"{tuple(argv)}, not {self.keys} {self.argv}")
        return [*keys.values(), *more_keys], [*argv.values(), *more_args]


LOAD = Layout("rainstorm_load", ("counters", "cursor", "meta"),
              ("expected_pos", "new_pos", "max_backlog", "n", "nbytes"))
COMMIT = Layout("rainstorm_commit", ("counters", "dlq", "meta"),
                ("group", "stage", "n_in", "n_out", "n_dead", "max_backlog", "n_delta",
                 "emit_field", "records_in", "records_out", "bytes_in", "n_extra",
                 "keep_inputs", "fold_entries", "fold_bytes"))
DEADLETTER = Layout("rainstorm_deadletter", ("counters", "dlq", "meta", "stream"),
                    ("group", "stage", "entry_id", "uid", "error", "deliveries"))
REQUEUE = Layout("rainstorm_requeue", ("counters", "dlq", "meta", "stream"),
                 ("dead_id", "stage", "kind", "uid", "payload", "unbytes"))
COMPACT = Layout("rainstorm_compact",
                 ("base", "log", "meta", "counters", "out", "dlq", "blob", "old"),
                 ("version", "token", "bytes", "stage", "n_out", "emit_field", "n_bad"))
VERSION = Layout("rainstorm_version", (), ())
LAYOUTS = (LOAD, COMMIT, DEADLETTER, REQUEUE, COMPACT, VERSION)


class LoadStatus(enum.StrEnum):
    OK = "ok"
    CURSOR = "cursor"  # the cursor moved (another loader): detail = where it is
    BACKLOG = "backlog"  # a stage-0 stream is full: detail = which
    GONE = "gone"  # the job's meta is missing (flushed, restarted without data)
    STOPPED = "stopped"  # the job is not running: detail = its state


class CommitStatus(enum.StrEnum):
    OK = "ok"
    REJECTED = "rejected"  # some inputs were committed elsewhere (or are stale)
    BACKLOG = "backlog"  # an output stream is full (backpressure)
    CLOSED = "closed"  # a window the batch counts into closed meanwhile
    STOPPED = "stopped"  # the job is no longer running: drop the batch
    GONE = "gone"  # the job's keys are gone: drop the batch


class DeadletterStatus(enum.StrEnum):
    OK = "ok"
    REJECTED = "rejected"  # the entry is no longer pending here
    STOPPED = "stopped"
    GONE = "gone"


class RequeueStatus(enum.StrEnum):
    OK = "ok"
    ABSENT = "absent"  # the dead letter was already requeued or removed
    STOPPED = "stopped"
    GONE = "gone"


class CompactStatus(enum.StrEnum):
    OK = "ok"
    CONFLICT = "conflict"  # another folder compacted first, or a delta is missing
    STOPPED = "stopped"
    GONE = "gone"


S = TypeVar("S", bound=enum.StrEnum)


def parse_status(kind: type[S], function: str, reply: Any) -> tuple[S, list[Any]]:
    """The status of a function's reply and the rest of the reply; loud on
    anything outside ``kind``."""
    if not isinstance(reply, list) or not reply:
        raise ProtocolError(f"{function} answered {reply!r:.80} instead of a status")
    raw = as_str(reply[0], "replace")
    try:
        return kind(raw), reply[1:]
    except ValueError:
        raise ProtocolError(f"{function} answered the unknown status {raw!r:.60} (expected "
                            f"one of {', '.join(s.value for s in kind)}): is the FUNCTION "
                            "library of another version?") from None
