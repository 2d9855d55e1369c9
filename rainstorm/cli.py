"""The `rainstorm` command: parse, dispatch, print.  No logic lives here."""

from __future__ import annotations

import json
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
import redis
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rainstorm import keys, lua
from rainstorm.errors import RainstormError

F = TypeVar("F", bound=Callable[..., Any])
err_console = Console(stderr=True)


class _Failure(click.ClickException):
    """A one-line error, exit status 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"rainstorm: error: {self.message}", err=True)


class _UsageFailure(_Failure):
    """A user mistake, exit status 2 (like click's own usage errors)."""

    exit_code = 2


class _Incomplete(_Failure):
    """The result is printed but misses dead-lettered input: exit status 3."""

    exit_code = 3

    def show(self, file: Any = None) -> None:
        click.echo(f"rainstorm: {self.message}", err=True)


def _Exit(message: str, code: int) -> _Failure:
    return {2: _UsageFailure, 3: _Incomplete}.get(code, _Failure)(message)


def _guard(fn: F) -> F:
    """Turn RainstormError and Redis errors into one-line messages with an exit code."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RainstormError as exc:
            raise _Exit(str(exc), exc.exit_code) from None
        except redis.AuthenticationError as exc:
            raise _Exit(f"Redis refused the credentials: {exc}", 1) from None
        except redis.exceptions.NoPermissionError as exc:
            raise _Exit(f"the Redis user may not do this: {exc} (see the README's ACL "
                        "section)", 1) from None
        except redis.ConnectionError as exc:
            raise _Exit(f"cannot reach Redis: {exc}", 1) from None

    return wrapper  # type: ignore[return-value]


_redis_url_option = click.option(
    "--redis", "redis_url", envvar="RAINSTORM_REDIS", metavar="URL",
    help="redis://[user:password@]host:port/db, rediss://…, unix:///path (env RAINSTORM_REDIS)",
)
CONNECT_TIMEOUT_META = "rainstorm.connect_timeout_s"


def _remember_connect_timeout(ctx: click.Context, _param: Any, value: float | None) -> None:
    if value is not None:
        ctx.meta[CONNECT_TIMEOUT_META] = value


_connect_timeout_option = click.option(
    "--connect-timeout", type=click.FloatRange(0), default=None, metavar="SECONDS",
    expose_value=False, callback=_remember_connect_timeout,
    help="wait this long for a Redis that is down or not up yet, then fail "
         "(default 60; env RAINSTORM_CONNECT_TIMEOUT)",
)


def redis_option(fn: F) -> F:
    """--redis URL and --connect-timeout SECONDS (read by ``_client``)."""
    return _redis_url_option(_connect_timeout_option(fn))


def _connect_timeout() -> float | None:
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get(CONNECT_TIMEOUT_META) if ctx else None
json_option = click.option("--json", "as_json", is_flag=True, help="machine-readable output")
skip_bad_option = click.option(
    "--skip-bad-records", "skip_bad", is_flag=True, default=False,
    help="accept a result without the input that went to the dead-letter stream (a "
         "warning, exit 0; sets settings.skip_bad_records); without it such a batch job "
         "ends INCOMPLETE, exit status 3")


@click.group()
@click.option("-v", "--verbose", count=True, help="log more (-vv for debug)")
def main(verbose: int) -> None:
    """rainstorm: exactly-once stream and batch processing on Redis."""
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


def _client(redis_url: str | None) -> redis.Redis:
    from rainstorm.connection import open_checked

    if not redis_url:
        raise _Exit("no Redis given: pass --redis URL or set RAINSTORM_REDIS", 2)
    return open_checked(redis_url, wait_s=_connect_timeout())[0]


def _print_result(result: dict[str, Any] | list[Any], top_n: int, as_json: bool) -> None:
    from rainstorm.coordinator.result import to_json, top

    if as_json:
        click.echo(to_json(result))
        return
    if isinstance(result, list):
        for rec in result[:top_n]:
            click.echo(json.dumps(rec, ensure_ascii=False, default=repr))
        if len(result) > top_n:
            click.echo(f"… {len(result) - top_n} more records", err=True)
        return
    click.echo(f"top {min(top_n, len(result))} of {len(result)} keys")
    table = Table()
    table.add_column("key")
    table.add_column("value", justify="right")
    for k, v in top(result, top_n):
        table.add_row(k, str(v))
    Console().print(table)


def _progress_bar(total: int) -> tuple[Progress, Callable[[Any], None]]:
    prog = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                    TextColumn("{task.percentage:>5.1f}%  {task.fields[info]}"),
                    TimeElapsedColumn(), console=err_console, transient=False)
    task = prog.add_task("processing", total=max(total, 1), info="")

    def update(st: Any) -> None:
        committed = sum(s.committed for s in st.stages)
        info = f"{st.bytes_done / 1e6:.1f}/{st.total_bytes / 1e6:.1f} MB, {committed} entries"
        prog.update(task, completed=st.bytes_done if st.total_bytes else 0, info=info)

    return prog, update


@main.command(context_settings={"allow_extra_args": True})  # script.py [ARGS]
@click.argument("spec_path", metavar="SPEC")
@click.option("--input", "inputs", multiple=True, metavar="PATH_OR_GLOB",
              help="input files, directories or globs (replaces source.paths)")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="override a spec field, e.g. settings.parallelism=4 (repeatable)")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(0, 256))
@redis_option
@click.option("--job", "job_id", help="job id (default: <name>-<time>)")
@click.option("--output", type=click.Path(dir_okay=False), help="write the result as JSON here")
@click.option("--allow-module", "allow", multiple=True, help="modules workers may import")
@click.option("--allow-exec", is_flag=True, help="let the workers run the spec's executables")
@click.option("--persistence", default="none", show_default=True,
              type=click.Choice(["none", "rdb", "aof-everysec", "aof-always"]),
              help="embedded server: none, RDB snapshots, or AOF with fsync every second/write")
@click.option("--rdb-every", "rdb_every_s", default=5, show_default=True,
              type=click.IntRange(1, 3600), help="with --persistence rdb: snapshot interval (s)")
@click.option("--replicas", default=0, show_default=True, type=click.IntRange(0, 8),
              help="embedded primary + N replicas + 3 Sentinels; clients follow failovers")
@click.option("--wait-replicas", type=click.IntRange(0, 8), default=None,
              help="after each commit, WAIT for this many replicas (default: spec)")
@click.option("--wait-aof", is_flag=True, default=None,
              help="after each commit, WAITAOF: the commit is fsynced to the AOF")
@click.option("--top", "top_n", type=int, default=None, help="rows to show (default: spec)")
@click.option("--no-progress", is_flag=True)
@skip_bad_option
@click.option("--autoscale", metavar="MIN:MAX", default=None,
              help="instead of --workers: per stage, keep MIN to MAX local workers, sized "
                   "by the autoscaler (watermarks: see `rainstorm autoscale --help`)")
@json_option
@_guard
def run(spec_path: str, inputs: tuple[str, ...], overrides: tuple[str, ...], workers: int,
        redis_url: str | None,
        job_id: str | None, output: str | None, allow: tuple[str, ...], allow_exec: bool,
        persistence: str,
        rdb_every_s: int, replicas: int, wait_replicas: int | None, wait_aof: bool | None,
        top_n: int | None, no_progress: bool, skip_bad: bool, autoscale: str | None,
        as_json: bool) -> None:
    """Run SPEC to completion (embedded Redis and local workers unless --redis).

    SPEC may be a Python script instead (SPEC.py [ARGS]...; script options
    after --): it runs like spark-submit, its Datasets using --workers,
    --redis and --allow-module."""
    extra = click.get_current_context().args
    if spec_path.endswith(".py"):  # a Dataset script (rainstorm.apps.dataset)
        from rainstorm.apps.dataset import run_script

        run_script(spec_path, extra, redis_url=redis_url, workers=workers, allow_modules=allow)
        return
    if extra:
        raise _Exit(f"unexpected extra arguments: {' '.join(extra)}", 2)
    from rainstorm.coordinator.outputs import check_writable
    from rainstorm.coordinator.result import to_json, write_atomically
    from rainstorm.local.run import run_job
    from rainstorm.ops.autoscale.policy import ScalePolicy
    from rainstorm.sources.inputs import resolve_inputs
    from rainstorm.spec import load_spec

    policy = ScalePolicy.parse_bounds(autoscale) if autoscale else None
    if output:  # before anything runs: a result that cannot be written is lost
        check_writable(output, "--output")
    spec = _with_settings(load_spec(spec_path, list(overrides)), wait_replicas=wait_replicas,
                          wait_aof=wait_aof, skip_bad_records=skip_bad or None)
    total = 0
    if spec.source.type == "text":
        total = sum(f.stat().st_size for f in resolve_inputs(list(inputs) or spec.source.paths))
    signal.signal(signal.SIGTERM, _raise_interrupt)  # so `finally` stops server and workers
    show = not no_progress and sys.stderr.isatty()
    prog, update = _progress_bar(total)
    with prog if show else _Null():
        report = run_job(spec, inputs=list(inputs) or None, workers=workers,
                         redis_url=redis_url, job_id=job_id, allow_modules=allow,
                         allow_exec=allow_exec, persistence=persistence, replicas=replicas,
                         rdb_every_s=rdb_every_s, autoscale=policy,
                         on_progress=update if show else None,
                         connect_timeout_s=_connect_timeout())
    _print_result(report.result, top_n if top_n is not None else spec.sink.top, as_json)
    if output:  # (checked writable before the job ran; the spec's file sink is written)
        try:
            write_atomically(output, to_json(report.result))
        except OSError as exc:
            raise _Exit(f"--output {output}: cannot write the result ({exc.strerror}); it "
                        "was printed above", 1) from None
    mb = report.total_bytes / 1e6
    warn = report.status.counters.get("s0:invalid_utf8_entries", 0)
    who = f"autoscaled {autoscale} workers per stage" if autoscale else f"{workers} workers"
    click.echo(
        f"job {report.job_id}: {mb:.1f} MB in {report.seconds:.2f} s "
        f"({mb / max(report.seconds, 1e-9):.1f} MB/s) with {who} on {report.server}",
        err=True,
    )
    if warn:
        click.echo(f"warning: {warn} input batches held invalid UTF-8; bad bytes were "
                   "replaced by U+FFFD", err=True)
    _check_complete(report.job_id, spec, report.status.dead_letters)


def _with_settings(spec: Any, **settings: Any) -> Any:
    """``spec`` with the settings given on the command line (None: the spec's)."""
    given = {k: v for k, v in settings.items() if v is not None}
    if not given:
        return spec
    return spec.model_copy(update={"settings": spec.settings.model_copy(update=given)})


def _check_complete(job_id: str, spec: Any, dead_letters: int) -> None:
    """After the result is printed: a batch job with dead letters exits 3
    (IncompleteResult) unless bad records are skipped by choice (a warning)."""
    from rainstorm.coordinator.result import check_complete

    if spec.unbounded:  # a streaming job's letters can be requeued while it runs
        if dead_letters:
            click.echo(f"warning: {dead_letters} dead letters in {keys.dlq(job_id)}, see "
                       f"`rainstorm dlq {job_id}`", err=True)
        return
    skip = spec.settings.skip_bad_records
    note = check_complete(job_id, dead_letters, dead_letters > 0 and not skip)
    if note:
        click.echo(note, err=True)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: object) -> None:
        return None


@main.command()
@click.argument("spec_path", metavar="SPEC")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@json_option
@_guard
def explain(spec_path: str, overrides: tuple[str, ...], as_json: bool) -> None:
    """Show how SPEC is cut into stages, and which operators are fused."""
    from rainstorm.plan import describe, plan
    from rainstorm.spec import load_spec

    spec = load_spec(spec_path, list(overrides))
    p = plan(spec)
    if as_json:
        click.echo(json.dumps([{"stage": s.index, "partitions": s.partitions,
                                "fused": [o.label for o in s.ops],
                                "keyed_in": s.keyed_in, "aggregate": s.aggregate,
                                "window": s.window.label if s.window else None}
                               for s in p.stages]))
        return
    click.echo(f"job {spec.name!r}: {len(p.stages)} stage(s)")
    for line, s in zip(describe(p), p.stages, strict=True):
        fused = f"  [{len(s.ops)} operators fused]" if len(s.ops) > 1 else ""
        click.echo(f"  {line}{fused}")


@main.command()
@click.argument("spec_path", metavar="[SPEC]", required=False, envvar="RAINSTORM_SPEC")
@click.option("--input", "inputs", multiple=True, metavar="PATH_OR_GLOB", envvar="RAINSTORM_INPUT",
              help="replaces source.paths (env RAINSTORM_INPUT, space-separated)")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@redis_option
@click.option("--job", "job_id", envvar="RAINSTORM_JOB",
              help="job id; submitting an existing id resumes it (env RAINSTORM_JOB)")
@click.option("--timeout", "timeout_s", type=float, default=None)
@click.option("--insecure-unsigned", "unsigned", is_flag=True,
              envvar="RAINSTORM_INSECURE_UNSIGNED",
              help="DEVELOPMENT ONLY: without RAINSTORM_SECRET, submit the spec unsigned "
                   "(only workers started with --insecure-accept-unsigned run it)")
@skip_bad_option
@json_option
@_guard
def submit(spec_path: str | None, inputs: tuple[str, ...], overrides: tuple[str, ...],
           redis_url: str | None, job_id: str | None, timeout_s: float | None,
           unsigned: bool, skip_bad: bool, as_json: bool) -> None:
    """Submit SPEC to a running Redis and coordinate it to the end (workers run elsewhere).

    SPEC is a YAML/JSON file (env RAINSTORM_SPEC); without one, the spec's
    YAML text is read from the environment variable RAINSTORM_SPEC_YAML.
    The spec is signed with RAINSTORM_SECRET (or RAINSTORM_SECRET_FILE),
    the key the workers hold."""
    import os

    from rainstorm.connection import connect_timeout_s, wait_out_outage
    from rainstorm.coordinator.driver import drive
    from rainstorm.coordinator.result import completeness
    from rainstorm.coordinator.submit import submit as do_submit
    from rainstorm.local.run import prepare
    from rainstorm.spec import load_spec, parse_spec_text
    from rainstorm.spec_signature import submitter_key

    inline = os.environ.get("RAINSTORM_SPEC_YAML", "")
    if spec_path:
        spec = load_spec(spec_path, list(overrides))
    elif inline.strip():
        spec = parse_spec_text(inline, "RAINSTORM_SPEC_YAML", list(overrides))
    else:
        raise _Exit("no job given: pass SPEC, or set RAINSTORM_SPEC (a spec file) or "
                    "RAINSTORM_SPEC_YAML (the spec's YAML text)", 2)
    spec = _with_settings(spec, skip_bad_records=skip_bad or None)
    job, files = prepare(spec, list(inputs) or None, job_id)
    key = submitter_key(unsigned=unsigned)  # no key: one line, before Redis is touched
    if key is None:
        click.echo("warning: --insecure-unsigned: the spec is not signed; only workers in "
                   "development mode (--insecure-accept-unsigned) run it", err=True)
    r = _client(redis_url)

    def submit_once() -> bool:  # safe to repeat: a job already there is resumed
        lua.load_library(r)
        return do_submit(r, job, files, key=key, unsigned=key is None)

    fresh = wait_out_outage(submit_once, connect_timeout_s(_connect_timeout()), "Redis")
    click.echo(f"{'submitted' if fresh else 'resuming'} job {job.id}", err=True)
    result = drive(r, job, timeout_s=timeout_s)  # a failure marks the job failed
    _print_result(result, spec.sink.top, as_json)
    _check_complete(job.id, spec, completeness(r, job.id)[0])


@main.command()
@redis_option
@click.option("--job", "job_id", help="serve only this job")
@click.option("--burst", is_flag=True, help="exit when no running job is left")
@click.option("--stage", type=click.IntRange(0, None), default=None, envvar="RAINSTORM_STAGE",
              help="serve only this stage (of every job, or of --job)")
@click.option("--id", "worker_id", default=None, envvar="RAINSTORM_WORKER_ID",
              help="worker id (default: <host>-<pid>-<random>); must be unique")
@click.option("--allow-module", "allow", multiple=True, envvar="RAINSTORM_ALLOW_MODULES",
              help="top-level modules operators may be imported from")
@click.option("--allow-exec", is_flag=True, envvar="RAINSTORM_ALLOW_EXEC",
              help="run jobs whose operators are external programs")
@click.option("--allow-exec-path", "exec_paths", multiple=True, metavar="PROG",
              envvar="RAINSTORM_ALLOW_EXEC_PATHS",
              help="run only these programs (names or paths, as PATH resolves them; "
                   "repeatable or comma-separated; implies --allow-exec)")
@click.option("--insecure-accept-unsigned", "insecure", is_flag=True,
              envvar="RAINSTORM_INSECURE_UNSIGNED",
              help="DEVELOPMENT ONLY: run job specs nobody signed; anyone who can write to "
                   "the Redis can then run code on this worker")
@_guard
def worker(redis_url: str | None, job_id: str | None, burst: bool, stage: int | None,
           worker_id: str | None, allow: tuple[str, ...], allow_exec: bool,
           exec_paths: tuple[str, ...], insecure: bool) -> None:
    """Run a worker: consume, compute, commit, until stopped.

    It runs only job specs signed with the shared RAINSTORM_SECRET (or
    RAINSTORM_SECRET_FILE) of their submitter."""
    from rainstorm.operators.resolve import allowed_modules_from_env
    from rainstorm.signing import secret_key
    from rainstorm.worker.loop import Worker, WorkerOptions

    key = secret_key()
    if key is None and not insecure:
        raise _Exit("no RAINSTORM_SECRET (or RAINSTORM_SECRET_FILE) set: "
                    "workers run only job specs signed with the submitters' key; set the "
                    "same key here, or for development only pass --insecure-accept-unsigned", 2)
    allow_all = tuple(a for item in allow for a in item.split(",") if a) or \
        allowed_modules_from_env()
    opts = WorkerOptions(job=job_id, burst=burst, stage=stage, allow_modules=allow_all,
                         allow_exec=allow_exec, secret=key, insecure_unsigned=insecure,
                         allow_exec_paths=tuple(p for item in exec_paths
                                                for p in item.split(",") if p))
    if worker_id:
        opts.worker_id = worker_id
    # stopped while still connecting (e.g. waiting out an outage): a clean exit
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    client = _client(redis_url)
    lua.refuse_other_version(client)  # one line now, not when the first batch commits
    w = Worker(client, opts)
    w.install_signal_handlers()
    w.work()


@main.command()
@click.option("--mapper", required=True, metavar="EXE_OR_CALLABLE",
              help="a command line (fed input lines, writes key<TAB>value) or module:fn")
@click.option("--reducer", required=True, metavar="EXE_OR_CALLABLE",
              help="a command line (fed sorted key<TAB>value lines) or module:fn(key, values)")
@click.option("--input", "inputs", multiple=True, required=True, metavar="PREFIX_OR_GLOB")
@click.option("--output", required=True, type=click.Path(file_okay=False),
              help="directory for part-NNNNN files (must not exist)")
@click.option("--partitions", default=2, show_default=True, type=click.IntRange(1, 1024))
@click.option("--combiner", metavar="CALLABLE", default=None,
              help="module:fn(key, values) -> values, run on each map batch (map-side combine)")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 256))
@redis_option
@click.option("--allow-exec", is_flag=True, help="let workers run the mapper/reducer programs")
@click.option("--allow-module", "allow", multiple=True, help="modules workers may import")
@_guard
def mapreduce(mapper: str, reducer: str, inputs: tuple[str, ...], output: str, partitions: int,
              combiner: str | None, workers: int, redis_url: str | None, allow_exec: bool,
              allow: tuple[str, ...]) -> None:
    """Run a MapReduce job: map, group by key, reduce into DIR/part-NNNNN."""
    from pathlib import Path

    from rainstorm.apps.mapreduce import run_mapreduce

    rep = run_mapreduce(mapper, reducer, [_prefix_glob(i) for i in inputs], Path(output),
                        partitions=partitions, combiner=combiner, workers=workers,
                        redis_url=redis_url, allow_exec=allow_exec, allow_modules=allow)
    click.echo(f"map {rep.map_seconds:.2f} s ({rep.keys} keys), reduce "
               f"{rep.reduce_seconds:.2f} s: {rep.output_lines} lines in {rep.parts} parts "
               f"under {rep.output}", err=True)


def _prefix_glob(text: str) -> str:
    """MapleJuice-style input prefix: 'logs/part' means 'logs/part*'."""
    from pathlib import Path

    if any(c in text for c in "*?[") or Path(text).exists():
        return text
    return text + "*"


@main.command()
@redis_option
@click.option("--prune", "prune_s", type=float, default=None, metavar="SECONDS",
              help="first forget workers silent for longer than SECONDS")
@json_option
@_guard
def workers(redis_url: str | None, prune_s: float | None, as_json: bool) -> None:
    """Workers: id, host, pid, heartbeat age, pinned stage, current stage, batches."""
    from rainstorm.monitor import workers as list_workers
    from rainstorm.ops.tasks import prune_workers

    r = _client(redis_url)
    if prune_s is not None:
        n = prune_workers(r, prune_s)
        click.echo(f"forgot {n} dead workers", err=True)
    rows = list_workers(r)
    if as_json:
        click.echo(json.dumps(rows))
        return
    for row in rows:
        row["pinned"] = "-" if row["stage"] is None else f"{row['job'] or '*'}:s{row['stage']}"
        row["where"] = row["container"] or row["host"]
        row["state"] = "busy" if row["busy"] else row["state"]
    _table("rainstorm workers", rows, ["id", "where", "pid", "state", "heartbeat_age_s",
                                        "pinned", "current", "batches"])


@main.command("list-tasks")
@click.argument("job_id", required=False)
@redis_option
@click.option("--sample", "sample_s", type=click.FloatRange(0, 60), default=1.0,
              show_default=True, help="seconds over which rates are measured (0: no rates)")
@json_option
@_guard
def list_tasks(job_id: str | None, redis_url: str | None, sample_s: float,
               as_json: bool) -> None:
    """Per job, stage and partition: unread and pending entries, rates, holders."""
    from rainstorm.ops.tasks import list_tasks as tasks

    rows = tasks(_client(redis_url), job_id, sample_s)
    if as_json:
        click.echo(json.dumps(rows))
        return
    for row in rows:
        row["holders"] = ", ".join(f"{k}: {v}" for k, v in row["holders"].items()) or "-"
        row["rate"] = "-" if row["in_rate"] is None else \
            f"{row['in_rate']:g} in / {row['out_rate']:g} out"
    _table("rainstorm tasks (rates in entries/s)", rows,
           ["job", "state", "stage", "partition", "unread", "pending", "rate", "holders"])


@main.command("kill-worker")
@click.argument("worker_id")
@redis_option
@click.option("--force", is_flag=True,
              help="SIGKILL it (same host) or kill its container (Docker SDK) instead of "
                   "asking it to stop")
@_guard
def kill_worker(worker_id: str, redis_url: str | None, force: bool) -> None:
    """Stop WORKER_ID: by default it finishes its batch and exits; with
    --force it dies at once and others steal its pending entries."""
    from rainstorm.ops.tasks import kill_worker as stop

    click.echo(stop(_client(redis_url), worker_id, force=force), err=True)


@main.command()
@click.argument("job_id")
@redis_option
@click.option("--requeue", is_flag=True,
              help="move every dead letter back into its stage (the job must be running)")
@click.option("--limit", type=int, default=100, show_default=True, help="rows to show")
@json_option
@_guard
def dlq(job_id: str, redis_url: str | None, requeue: bool, limit: int, as_json: bool) -> None:
    """Show JOB's dead letters (stage, kind, error, deliveries), or requeue them."""
    from rainstorm.ops import dlq as dead

    r = _client(redis_url)
    if requeue:
        res = dead.requeue(r, job_id)
        if as_json:
            click.echo(json.dumps({"requeued": res.moved, "skipped": res.skipped}))
        else:
            click.echo(f"requeued {res.moved} dead letters of job {job_id}"
                       + (f" ({res.skipped} were already gone)" if res.skipped else ""),
                       err=True)
        return
    rows = dead.read(r, job_id, count=limit)
    if as_json:
        click.echo(json.dumps(rows))
        return
    _table(f"dead letters of {job_id}", rows,
           ["id", "stage", "kind", "deliveries", "error", "record"])


@main.command()
@click.argument("bounds", metavar="MIN:MAX")
@redis_option
@click.option("--job", "job_id", help="scale only this job (default: every running job)")
@click.option("--backend", type=click.Choice(["local", "docker"]), default="local",
              show_default=True, help="start workers as local processes or Docker containers")
@click.option("--image", default="rainstorm:latest", show_default=True,
              help="docker backend: image whose entry point is `rainstorm`")
@click.option("--network", default=None, help="docker backend: network of the containers")
@click.option("--worker-redis", default=None, envvar="RAINSTORM_WORKER_REDIS", metavar="URL",
              help="the URL workers get (default: --redis), e.g. with the worker ACL user")
@click.option("--high-backlog", "high_backlog_s", type=float, default=2.0, show_default=True,
              help="add workers when a stage's backlog takes longer than this to drain (s)")
@click.option("--low-utilization", type=float, default=0.5, show_default=True,
              help="remove a worker when the stage's workers are busy less than this")
@click.option("--period", "period_s", type=float, default=3.0, show_default=True,
              help="a watermark must be crossed this long before acting (s)")
@click.option("--cooldown", "cooldown_s", type=float, default=5.0, show_default=True,
              help="after a change, leave the stage alone this long (s)")
@click.option("--interval", "interval_s", type=float, default=1.0, show_default=True,
              help="seconds between looks")
@click.option("--trace", type=click.File("a"), default=None,
              help="append every look (numbers and decision) as a JSON line to this file")
@click.option("--allow-module", "allow", multiple=True, help="modules workers may import")
@click.option("--allow-exec", is_flag=True, help="let the workers run external programs")
@_guard
def autoscale(bounds: str, redis_url: str | None, job_id: str | None, backend: str, image: str,
              network: str | None, worker_redis: str | None, high_backlog_s: float,
              low_utilization: float, period_s: float, cooldown_s: float, interval_s: float,
              trace: Any, allow: tuple[str, ...], allow_exec: bool) -> None:
    """Keep MIN to MAX workers pinned to each stage of the running jobs,
    sized by backlog (high watermark) and utilization (low watermark)."""
    import threading

    from rainstorm.ops.autoscale.backends import Backend, DockerBackend, LocalBackend
    from rainstorm.ops.autoscale.controller import Autoscaler
    from rainstorm.ops.autoscale.policy import ScalePolicy
    from rainstorm.signing import secret_key

    policy = ScalePolicy.parse_bounds(bounds, high_backlog_s=high_backlog_s,
                                      low_utilization=low_utilization, period_s=period_s,
                                      cooldown_s=cooldown_s, interval_s=interval_s)
    r = _client(redis_url)
    url = worker_redis or redis_url or ""
    env = {"RAINSTORM_ALLOW_MODULES": ",".join(allow)} if allow else {}
    if allow_exec:
        env["RAINSTORM_ALLOW_EXEC"] = "1"
    if backend == "docker" and (key := secret_key()) is not None:  # local ones inherit it
        env["RAINSTORM_SECRET"] = key.decode()  # containers verify specs with it too
    chosen: Backend = (DockerBackend(r, url, image, network, env) if backend == "docker"
                       else LocalBackend(r, url, allow, allow_exec))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    click.echo(f"autoscaling {job_id or 'every running job'}: {policy.min_workers} to "
               f"{policy.max_workers} {backend} workers per stage", err=True)
    try:
        Autoscaler(r, chosen, policy, job_id=job_id, trace=trace).run(stop)
    finally:
        chosen.close()


@main.command()
@click.argument("job_id")
@click.argument("rate")
@redis_option
@_guard
def throttle(job_id: str, rate: str, redis_url: str | None) -> None:
    """Limit how many input lines per second JOB's loader adds (RATE, or 'off')."""
    from rainstorm.monitor import load_job

    r = _client(redis_url)
    load_job(r, job_id)
    if rate == "off":
        r.hdel(keys.meta(job_id), "max_rate")
        click.echo(f"job {job_id}: loading unthrottled", err=True)
        return
    try:
        value = float(rate)
        if value <= 0:
            raise ValueError
    except ValueError:
        raise _Exit(f"RATE must be a positive number of lines per second or 'off', "
                    f"got {rate!r}", 2) from None
    r.hset(keys.meta(job_id), "max_rate", value)
    click.echo(f"job {job_id}: loading at most {value:g} lines/s", err=True)


@main.command()
@click.argument("job_id")
@redis_option
@click.option("--from-start", is_flag=True, help="first everything already committed")
@click.option("--interval", "interval_s", type=float, default=1.0, show_default=True,
              help="aggregates: seconds between looks")
@_guard
def tail(job_id: str, redis_url: str | None, from_start: bool, interval_s: float) -> None:
    """Follow JOB's output: records as they are committed (JSON lines), or an
    aggregate's changed keys with their new values; until the job stops."""
    from rainstorm.monitor import load_job
    from rainstorm.ops.follow import follow

    r = _client(redis_url)
    job = load_job(r, job_id)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        for item in follow(r, job, from_start=from_start, interval_s=interval_s,
                           stop=lambda: stop["now"]):
            line = json.dumps(item if not job.plan.aggregate
                              else {"key": item[0], "value": item[1]},
                              ensure_ascii=False, default=repr)
            click.echo(line)
    except KeyboardInterrupt:
        pass


@main.command("kill-job")
@click.argument("job_id")
@redis_option
@click.option("--keep", is_flag=True,
              help="only stop it: keep its keys (a streaming job's result stays readable)")
@_guard
def kill_job(job_id: str, redis_url: str | None, keep: bool) -> None:
    """Cancel JOB and remove its keys (its coordinator fails with 'cancelled';
    a streaming job's coordinator stops cleanly)."""
    from rainstorm.ops.tasks import kill_job as cancel

    n = cancel(_client(redis_url), job_id, keep=keep)
    click.echo(f"job {job_id} cancelled; " + ("its keys are kept" if keep
                                              else f"{n} keys removed"), err=True)


def _table(title: str, rows: list[dict[str, Any]], cols: list[str]) -> None:
    table = Table(title=title)
    for col in cols:
        table.add_column(col)
    for row in rows:
        table.add_row(*(str(row.get(c, "")) for c in cols))
    Console().print(table)


@main.command()
@click.argument("job_id", required=False)
@redis_option
@json_option
@_guard
def status(job_id: str | None, redis_url: str | None, as_json: bool) -> None:
    """Show jobs, their stages and counters."""
    from rainstorm.ops.status import job_statuses

    rows = job_statuses(_client(redis_url), job_id)
    if as_json:
        click.echo(json.dumps(rows))
        return
    table = Table(title="rainstorm jobs")
    for col in ("job", "state", "loaded", "progress", "stage", "emitted", "committed",
                "dead", "claimed", "rejected"):
        table.add_column(col)
    for row in rows:
        for s in row["stages"]:
            state = "done (INCOMPLETE)" if row.get("incomplete") else row["state"]
            table.add_row(row["job"], state, str(row["loaded"]),
                          f"{row['progress'] * 100:.1f}%", str(s["stage"]), str(s["emitted"]),
                          str(s["committed"]), str(s["dead"]), str(s["claimed"]),
                          str(s["rejected"]))
    Console().print(table)


@main.command()
@click.argument("job_id")
@redis_option
@click.option("--top", "top_n", type=int, default=10)
@json_option
@_guard
def result(job_id: str, redis_url: str | None, top_n: int, as_json: bool) -> None:
    """Print a finished job's result (exit status 3: INCOMPLETE, input was dead-lettered)."""
    from rainstorm.coordinator.result import check_complete, completeness, load_stored
    from rainstorm.monitor import load_job

    r = _client(redis_url)
    job = load_job(r, job_id)
    state: Any = r.hget(keys.meta(job_id), "state")
    live = job.spec.unbounded and state in (b"running", b"cancelled")
    if state != b"done" and not live:
        raise _Exit(f"job {job_id} is {state.decode() if state else 'unknown'}, not done", 1)
    if live:
        click.echo(f"job {job_id} is a streaming job ({state.decode()}): its result so far",
                   err=True)
    _print_result(load_stored(r, job), top_n, as_json)
    note = check_complete(job_id, *completeness(r, job_id))
    if note:
        click.echo(note, err=True)


@main.command()
@redis_option
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535),
              help="port to listen on (0: any free port)")
@click.option("--interval", "interval_s", default=1.0, show_default=True,
              type=click.FloatRange(0.1, 60), help="seconds between samples of Redis")
@_guard
def ui(redis_url: str | None, host: str, port: int, interval_s: float) -> None:
    """Serve a live web dashboard, /api/state (JSON) and /metrics (Prometheus)."""
    from rainstorm.ops.dashboard.server import serve

    r = _client(redis_url)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        serve(r, host=host, port=port, interval_s=interval_s,
              announce=lambda url: click.echo(f"rainstorm ui: serving on {url}", err=True))
    except KeyboardInterrupt:
        click.echo("rainstorm ui: stopped", err=True)
