"""External executables as operators, like Hadoop streaming or Spark's pipe().

One process per batch: the batch's records go to the program's stdin, one
per line (str as is; (key, value) pairs as ``key<TAB>value``; anything else as
JSON; a record holding a newline becomes several lines), and every line the
program writes to stdout is an output record.  A program that exits with a
code outside ``ok_exit_codes`` (default 0, and also 1 for the grep family,
whose 1 means "no match"), or runs past ``timeout_s``, fails the batch; its
stderr goes into the error, and so into the dead letter if it keeps failing.

Workers run executables only when started with ``--allow-exec``: write access
to Redis must not be code execution on workers.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from itertools import repeat
from typing import Any

from rainstorm.operators.chain_errors import ExternalError

GREP_FAMILY = {"grep", "egrep", "fgrep", "rg", "zgrep"}
STDERR_TAIL = 2000


def default_ok_codes(cmd: list[str]) -> tuple[int, ...]:
    return (0, 1) if os.path.basename(cmd[0]) in GREP_FAMILY else (0,)


def as_line(record: Any) -> str:
    if isinstance(record, str):
        return record
    if isinstance(record, tuple | list) and len(record) == 2:
        return f"{record[0]}\t{record[1]}"
    return json.dumps(record, default=repr)


def stderr_tail(data: bytes | None) -> str:
    text = (data or b"").decode("utf-8", "replace").strip()
    return text[-STDERR_TAIL:]


def make_pipe(cmd: list[str], timeout_s: float,
              ok_codes: tuple[int, ...] | None = None) -> Callable[[list[Any]], list[str]]:
    ok = ok_codes if ok_codes is not None else default_ok_codes(cmd)

    def run(records: list[Any]) -> list[str]:
        data = "".join(as_line(r) + "\n" for r in records).encode("utf-8", "surrogateescape")
        try:
            proc = subprocess.run(cmd, input=data, capture_output=True, timeout=timeout_s,
                                  check=False)
        except subprocess.TimeoutExpired as exc:
            raise ExternalError(f"{cmd[0]} ran past its timeout of {timeout_s} s; "
                                f"stderr: {stderr_tail(exc.stderr)!r}") from None
        except OSError as exc:
            raise ExternalError(f"cannot run {cmd[0]!r}: {exc.strerror}") from None
        if proc.returncode not in ok:
            raise ExternalError(f"{cmd[0]} exited with status {proc.returncode}; "
                                f"stderr: {stderr_tail(proc.stderr)!r}")
        out = proc.stdout.decode("utf-8", "replace")
        lines = out.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return lines

    return run


def make_reduce(cmd: list[str] | None, fn: Callable[..., Any] | None,
                timeout_s: float) -> Callable[[list[Any]], list[Any]]:
    """The reduce side: records are ``[partition, key, [values]]`` groups (one
    key each, keys sorted); outputs are ``(partition, line)`` pairs, sorted
    (a partition's groups come in one entry, so its part is sorted whole)."""
    pipe = make_pipe(cmd, timeout_s) if cmd else None

    def run(records: list[Any]) -> list[Any]:
        # one pass, no per-key objects beyond the reducer's own: a reduce
        # batch is a whole partition, up to ~10^6 keys
        parts: dict[int, list[str]] = {}
        lines: list[str] = []
        at: Any = None
        for rec in records:
            part, key, vals = json.loads(rec) if isinstance(rec, str) else rec
            if part != at:
                at, lines = part, parts.setdefault(part, [])
            if type(vals) is not list:  # a summed shuffle (--combiner sum): the key's total
                vals = [vals]
            if pipe is not None:  # as_line((key, value)), built here at once
                lines += [f"{key}\t{v}" for v in vals]
                continue
            assert fn is not None
            for o in fn(key, vals):
                lines.append(o if type(o) is str else as_line(o))
        out: list[Any] = []
        for part in sorted(parts):  # sorted as (part, line) pairs: strings sort faster
            lines = pipe(parts[part]) if pipe is not None else parts[part]
            lines.sort()
            out += zip(repeat(part), lines)
        return out

    return run
