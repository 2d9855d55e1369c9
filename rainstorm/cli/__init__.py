"""The `rainstorm` command: thin click commands that parse, call one
function, and print.  No logic lives here, and no Redis writes.

    base.py   one-line errors and exit codes; ``@shared``, the one decorator
              that gives a command ``--redis``/``--connect-timeout`` as a
              ``RedisOptions`` object
    show.py   printing: results, tables, the progress bar
    jobs.py   run, explain, submit, worker, mapreduce, autoscale
    ops.py    status, result, workers, list-tasks, kill-worker, kill-job, dlq,
              throttle, tail, ui
"""

from __future__ import annotations

import logging
import sys

from rainstorm import __version__, heap, native

heap.defer()  # before the imports below (tuned for good in main)

import click  # noqa: E402

from rainstorm.cli import jobs, ops  # noqa: E402


@click.group()
@click.version_option(version=__version__,
                      message=f"%(prog)s %(version)s (per-key work: {native.describe()})")
@click.option("-v", "--verbose", count=True, help="log more (-vv for debug)")
def main(verbose: int) -> None:
    """rainstorm: exactly-once stream and batch processing on Redis."""
    heap.tune()
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


for _command in (*jobs.COMMANDS, *ops.COMMANDS):
    main.add_command(_command)
