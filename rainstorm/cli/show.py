"""How commands print: results (a table, JSON lines, or JSON), tables of
rows, the progress bar of ``rainstorm run``."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

# rich is imported where a table or a bar is drawn, not with the CLI: ~70 ms of
# every command's start (a `rainstorm run --json > file` draws neither)

# what text from Redis (a key of the data, a worker's error, a dead letter)
# may not put on a terminal as it is: C0 controls but tab and newline, DEL, C1
# controls (ESC and CSI start sequences that move the cursor, recolour,
# retitle or hide what follows) and the bidirectional overrides (which make
# text read other than it is); each is shown as its escape, \x1b or \u202e
_ESCAPED = {c: (f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}")
            for c in (*range(0x09), *range(0x0b, 0x20), *range(0x7f, 0xa0),
                      *range(0x202a, 0x202f), *range(0x2066, 0x206a))}


def printable(text: str) -> str:
    """``text`` safe to print on a terminal (:data:`_ESCAPED`)."""
    return text.translate(_ESCAPED)


def console(stderr: bool = False) -> Console:
    """A rich console that takes strings as they are: no markup (a key like
    '[/b]' would raise, '[link=…]' would make a hyperlink), no emoji codes,
    no highlighting."""
    from rich.console import Console

    return Console(stderr=stderr, markup=False, emoji=False, highlight=False)


def print_result(result: Mapping[str, Any] | list[Any], top_n: int, as_json: bool) -> None:
    """An aggregate as a table of its ``top_n`` keys, records as JSON lines,
    or (``as_json``) the whole result as JSON (an aggregate streamed to
    stdout one state partition at a time)."""
    from rainstorm.coordinator.result import top, write_json

    if as_json:
        write_json(sys.stdout, result)
        sys.stdout.write("\n")
        sys.stdout.flush()
        return
    if isinstance(result, list):
        for rec in result[:top_n]:
            click.echo(json.dumps(rec, ensure_ascii=False, default=repr))
        if len(result) > top_n:
            click.echo(f"… {len(result) - top_n} more records", err=True)
        return
    from rich.table import Table

    click.echo(f"top {min(top_n, len(result))} of {len(result)} keys")
    table = Table()
    table.add_column("key")
    table.add_column("value", justify="right")
    for k, v in top(result, top_n):
        table.add_row(printable(str(k)), printable(str(v)))
    console().print(table)


PIPED_WIDTH = 200  # a table's width when stdout is not a terminal


def table(title: str, rows: list[dict[str, Any]], cols: list[str]) -> None:
    """``rows`` as a titled table of the columns ``cols`` (every cell
    :func:`printable`)."""
    from rich.table import Table

    out = Table(title=printable(title))
    for i, col in enumerate(cols):
        # the first column names the row (a worker's or job's id): never cut
        # short, whatever the terminal's width; the others give way
        whole = max((len(str(row.get(col, ""))) for row in rows), default=0) if i == 0 else None
        out.add_column(col, min_width=whole, no_wrap=i == 0)
    for row in rows:
        out.add_row(*(printable(str(row.get(c, ""))) for c in cols))
    con = console()
    if not con.is_terminal:  # piped (grep, a file): whole cells, not 80 columns' worth
        con.width = max(con.width, PIPED_WIDTH)
    con.print(out)


def progress_bar() -> tuple[Progress, Callable[[Any], None]]:
    """A bar over the job's input bytes (their total as recorded at submit,
    from the first status on), and the callback that moves it."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    prog = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                    TextColumn("{task.percentage:>5.1f}%  {task.fields[info]}"),
                    TimeElapsedColumn(), console=Console(stderr=True), transient=False)
    task = prog.add_task("processing", total=1, info="")

    def update(st: Any) -> None:
        committed = sum(s.committed for s in st.stages)
        info = f"{st.bytes_done / 1e6:.1f}/{st.total_bytes / 1e6:.1f} MB, {committed} entries"
        prog.update(task, total=max(st.total_bytes, 1),
                    completed=st.bytes_done if st.total_bytes else 0, info=info)

    return prog, update


class Null:
    """A context manager that does nothing (no progress bar)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: object) -> None:
        return None
