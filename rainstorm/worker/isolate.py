"""Run one suspect entry in a forked child process.

A suspect (rainstorm.worker.poison) may crash or hang its process.  The
worker forks; the child computes the commit request (under the operator
time limit, which the caller's function applies) and pipes it back
(pickled: parent and child are the same program); the child never touches
Redis and dies with its parent.  The child calls ``tick()`` as each
time-limited step (the batch, or one record of an isolated entry) begins;
the parent gives each step ``bound_s``.  The parent, alive
and watching, turns a child that crashed or outlived the limit into an
OperatorError, which counts as one failure of the entry.  An external
SIGKILL of the whole worker kills the child too and counts nothing.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import time
from collections.abc import Callable
from typing import Any, TypeVar

from rainstorm.operators.chain_errors import OperatorError, OperatorTimeout
from rainstorm.procs import die_with_parent

T = TypeVar("T")
TICK = b"P"  # a step began (the reply itself starts with pickle's 0x80)


def grace_s(timeout_s: float) -> float:
    """How long past the limit a stuck computation is given before it is killed."""
    return max(1.0, min(timeout_s * 0.5, 10.0))


def run_forked(fn: Callable[[Callable[[], None]], T], bound_s: float) -> T:
    """``fn(tick)`` in a child process; raises OperatorError (OperatorTimeout)
    when it raised, crashed, or ran one step (from a tick) past ``bound_s``."""
    parent = os.getpid()
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(rfd)
        _child(fn, wfd, parent)
    os.close(wfd)
    try:
        data, finished = _read_all(rfd, bound_s)
    finally:
        os.close(rfd)
    if not finished:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if not finished:
        raise OperatorTimeout(f"still running after {bound_s:g} s (operator_timeout_s and "
                              "grace) in an isolated process, which was killed")
    value: T = _outcome(data, status)
    return value


def _child(fn: Callable[[Callable[[], None]], object], wfd: int, parent: int) -> None:
    code = 0
    try:
        die_with_parent(parent, signal.SIGKILL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        try:
            value = fn(lambda: _write(wfd, TICK))
            payload = pickle.dumps(("ok", value))
        except OperatorError as exc:
            payload = pickle.dumps(("timeout" if isinstance(exc, OperatorTimeout) else "error",
                                    str(exc)))
        _write(wfd, payload)
    except BaseException:  # noqa: BLE001  (the parent reports an exit without a result)
        code = 1
    os._exit(code)


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_all(fd: int, bound_s: float) -> tuple[bytes, bool]:
    """The child's reply, read until it closes the pipe; (b"", False) if a
    step ran past ``bound_s`` (each tick starts a step's clock again)."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + bound_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return b"", False
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks), True
        if not chunks:
            rest = chunk.lstrip(TICK)
            if len(rest) < len(chunk):
                deadline = time.monotonic() + bound_s
            chunk = rest
        if chunk:
            chunks.append(chunk)


def _crash(status: int) -> OperatorError:
    if os.WIFSIGNALED(status):
        try:
            how = f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
        except ValueError:
            how = f"killed by signal {os.WTERMSIG(status)}"
    else:
        how = f"exit status {os.waitstatus_to_exitcode(status)}"
    return OperatorError(f"the operator crashed its (isolated) process: {how}")


def _outcome(data: bytes, status: int) -> Any:
    try:
        kind, value = pickle.loads(data)  # noqa: S301  (our own child's reply)
    except Exception:  # noqa: BLE001  (nothing, or cut short: the child died)
        raise _crash(status) from None
    if kind == "ok":
        return value
    if kind == "timeout":
        raise OperatorTimeout(str(value))
    raise OperatorError(str(value))
