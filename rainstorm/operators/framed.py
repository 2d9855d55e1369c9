"""The framed protocol: one long-lived program serves many batches.

For each batch the worker writes a header line and the records, one per line:

    #RAINSTORM-BATCH <n>
    <record 1>
    ...
    <record n>

and the program answers with a header line and its outputs, then waits for
the next batch (it must flush its stdout after each answer):

    #RAINSTORM-OUT <m>
    <output 1>
    ...
    <output m>

End of input (stdin closed) means: exit.  A program that exits mid-batch, or
does not answer within ``timeout_s``, fails the batch (its stderr goes into
the error); it is started again for the next batch.  Records are encoded as
for plain pipes (strings as they are, pairs as key<TAB>value, else JSON).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from rainstorm.operators.chain_errors import ExternalError
from rainstorm.operators.external import stderr_tail

BATCH = "#RAINSTORM-BATCH"
OUT = "#RAINSTORM-OUT"


class FramedProcess:
    def __init__(self, cmd: list[str], timeout_s: float, line: Callable[[Any], str]) -> None:
        self.cmd = cmd
        self.timeout_s = timeout_s
        self.line = line
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr: IO[bytes] | None = None  # opened with each process
        self.buf = b""

    def _start(self) -> subprocess.Popen[bytes]:
        if self.stderr:
            self.stderr.close()
        self.stderr = tempfile.TemporaryFile()
        self.buf = b""
        try:
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=self.stderr)
        except OSError as exc:
            raise ExternalError(f"cannot run {self.cmd[0]!r}: {exc.strerror}") from None
        os.set_blocking(self.proc.stdout.fileno(), False)  # type: ignore[union-attr]
        return self.proc

    def _stderr_tail(self) -> str:
        if self.stderr is None:
            return ""
        self.stderr.seek(0)
        return stderr_tail(self.stderr.read())

    def _fail(self, why: str) -> ExternalError:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        err = ExternalError(f"{self.cmd[0]} {why}; stderr: {self._stderr_tail()!r}")
        self.proc = None
        return err

    def _readline(self, deadline: float) -> str:
        assert self.proc and self.proc.stdout
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            while b"\n" not in self.buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._fail(f"ran past its timeout of {self.timeout_s} s")
                if not sel.select(left):
                    continue
                chunk = self.proc.stdout.read(65536)
                if not chunk:
                    code = self.proc.wait(5)
                    raise self._fail(f"exited with status {code} in the middle of a batch")
                self.buf += chunk
        finally:
            sel.close()
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode("utf-8", "replace")

    def __call__(self, records: list[Any]) -> list[str]:
        proc = self.proc if self.proc and self.proc.poll() is None else self._start()
        data = f"{BATCH} {len(records)}\n" + "".join(self.line(r) + "\n" for r in records)
        failed: list[BaseException] = []

        def feed() -> None:
            try:
                assert proc.stdin
                proc.stdin.write(data.encode("utf-8", "surrogateescape"))
                proc.stdin.flush()
            except OSError as exc:  # the program died: the reader reports it
                failed.append(exc)

        writer = threading.Thread(target=feed, daemon=True)
        writer.start()
        deadline = time.monotonic() + self.timeout_s
        try:
            out = self._answer(deadline)
        except ExternalError:  # the program is gone (killed): release its pipes
            writer.join(5)
            for pipe in (proc.stdin, proc.stdout):
                with contextlib.suppress(OSError):
                    if pipe:
                        pipe.close()
            raise
        writer.join(max(0.0, deadline - time.monotonic()))
        return out

    def _answer(self, deadline: float) -> list[str]:
        header = self._readline(deadline)
        if not header.startswith(OUT + " "):
            raise self._fail(f"answered {header[:80]!r} instead of '{OUT} <m>'")
        try:
            m = int(header.split()[1])
        except (IndexError, ValueError):
            raise self._fail(f"sent a bad header {header[:80]!r}") from None
        return [self._readline(deadline) for _ in range(m)]

    def close(self) -> None:
        """End the program (EOF, then SIGKILL after 2 s) and release its pipes."""
        if self.proc and self.proc.poll() is None:
            assert self.proc.stdin
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc:
            for pipe in (self.proc.stdin, self.proc.stdout):
                with contextlib.suppress(OSError):
                    if pipe:
                        pipe.close()
        if self.stderr:
            self.stderr.close()
