"""Commands that run things: run, explain, submit, worker, mapreduce,
autoscale.  Each parses, calls one function, and prints."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from rainstorm import keys
from rainstorm.cli.base import (
    RedisOptions,
    fail,
    json_option,
    shared,
    skip_bad_option,
    stop_on_signals,
)
from rainstorm.cli.show import Null, print_result, progress_bar

if TYPE_CHECKING:
    from rainstorm.local.run import RunOptions

log = logging.getLogger(__name__)


@click.command(context_settings={"allow_extra_args": True})  # script.py [ARGS]
@click.argument("spec_path", metavar="SPEC")
@click.option("--input", "inputs", multiple=True, metavar="PATH_OR_GLOB",
              help="input files, directories, globs or URLs (https://, s3://, ...; "
                   "replaces source.paths)")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="override a spec field, e.g. settings.parallelism=4 (repeatable)")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(0, 256))
@shared()
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
@click.option("--top", "top_n", type=click.IntRange(min=0), default=None,
              help="rows to show (default: the spec's sink.top)")
@click.option("--no-progress", is_flag=True)
@skip_bad_option
@click.option("--autoscale", metavar="MIN:MAX", default=None,
              help="instead of --workers: per stage, keep MIN to MAX local workers, sized "
                   "by the autoscaler (watermarks: see `rainstorm autoscale --help`)")
@json_option
def run(spec_path: str, inputs: tuple[str, ...], overrides: tuple[str, ...], workers: int,
        conn: RedisOptions, job_id: str | None, output: str | None, allow: tuple[str, ...],
        allow_exec: bool, persistence: str, rdb_every_s: int, replicas: int,
        wait_replicas: int | None, wait_aof: bool | None, top_n: int | None,
        no_progress: bool, skip_bad: bool, autoscale: str | None, as_json: bool) -> None:
    """Run SPEC to completion (embedded Redis and local workers unless --redis).

    SPEC may be a Python script instead (SPEC.py [ARGS]...; script options
    after --): it runs like spark-submit, its Datasets using --workers,
    --redis and --allow-module."""
    from rainstorm.local.run import RunOptions

    _run(RunCommand(
        spec_path, tuple(click.get_current_context().args), overrides,
        RunOptions(redis_url=conn.url, connect_timeout_s=conn.connect_timeout_s,
                   persistence=persistence, rdb_every_s=rdb_every_s, replicas=replicas,
                   inputs=inputs, job_id=job_id, workers=workers, allow_modules=allow,
                   allow_exec=allow_exec),
        settings={"wait_replicas": wait_replicas, "wait_aof": wait_aof,
                  "skip_bad_records": skip_bad or None},
        autoscale=autoscale, output=output, top_n=top_n, progress=not no_progress,
        as_json=as_json))


@dataclass(frozen=True)
class RunCommand:
    """A `rainstorm run` command line: how to run (``options``; its
    autoscale policy and progress callback are added from ``autoscale`` and
    ``progress``), spec ``settings`` (None: the spec's), what to print and
    where."""

    spec_path: str
    extra: tuple[str, ...]  # after SPEC: a script's arguments
    overrides: tuple[str, ...]
    options: RunOptions
    settings: dict[str, Any] = field(default_factory=dict)
    autoscale: str | None = None  # MIN:MAX
    output: str | None = None
    top_n: int | None = None
    progress: bool = True
    as_json: bool = False


def _run(cmd: RunCommand) -> None:
    """Run a spec (or a Dataset script), print its result and a summary."""
    if cmd.spec_path.endswith(".py"):  # a Dataset script (rainstorm.apps.execute)
        from rainstorm.apps.execute import run_script

        run_script(cmd.spec_path, cmd.extra, redis_url=cmd.options.redis_url,
                   workers=cmd.options.workers, allow_modules=cmd.options.allow_modules)
        return
    if cmd.extra:
        raise fail(f"unexpected extra arguments: {' '.join(cmd.extra)}", 2)
    from rainstorm.coordinator.outputs import check_writable
    from rainstorm.graph import GraphSpec, load_any
    from rainstorm.local.run import run_job
    from rainstorm.ops.autoscale.policy import ScalePolicy

    policy = ScalePolicy.parse_bounds(cmd.autoscale) if cmd.autoscale else None
    if cmd.output:  # before anything runs: a result that cannot be written is lost
        check_writable(cmd.output, "--output")
    loaded = load_any(cmd.spec_path, list(cmd.overrides))
    if isinstance(loaded, GraphSpec):
        _run_graph(cmd, loaded)
        return
    spec = _with_settings(loaded, **cmd.settings)
    stop_on_signals()
    bar = progress_bar() if cmd.progress and sys.stderr.isatty() else None

    output_s = [0.0]

    def show_result(report: Any, _r: Any) -> None:  # while the server runs: streamed from it
        t = time.perf_counter()
        if bar:
            bar[0].stop()
        print_result(report.result, cmd.top_n if cmd.top_n is not None else spec.sink.top,
                     cmd.as_json)
        if cmd.output:  # (checked writable before the job ran; the spec's file sink is written)
            _write_output(cmd.output, report.result)
        output_s[0] = time.perf_counter() - t

    opts = replace(cmd.options, on_progress=bar[1] if bar else None, autoscale=policy,
                   on_result=show_result)
    with bar[0] if bar else Null():
        report = run_job(spec, opts)
    who = f"autoscaled {cmd.autoscale} workers per stage" if cmd.autoscale \
        else f"{cmd.options.workers} workers"
    _summary(report, who)
    _log_time(report.seconds, output_s[0])
    _check_complete(report.job_id, spec, report.status.dead_letters, report.first_dead)


def _run_graph(cmd: RunCommand, gspec: Any) -> None:
    """`rainstorm run` of a graph: every leaf step's result (under its name;
    with --json one object by step), then a summary line."""
    from rainstorm.local.run import run_graph

    if cmd.autoscale:
        raise fail("--autoscale: a graph runs with --workers N", 2)
    given = {k: v for k, v in cmd.settings.items() if v is not None}
    if given:
        gspec = gspec.model_copy(update={"settings": {**gspec.settings, **given}})
    stop_on_signals()
    report = run_graph(gspec, cmd.options, origin=cmd.spec_path)
    _print_graph(report, cmd.top_n, cmd.as_json)
    if cmd.output:
        _write_output(cmd.output, report.results)
    mb = report.total_bytes / 1e6
    click.echo(f"graph {report.graph_id}: {len(report.reports)} steps, {mb:.1f} MB in "
               f"{report.seconds:.2f} s with {cmd.options.workers} workers on {report.server}",
               err=True)
    _graph_complete(report)


def _print_graph(report: Any, top_n: int | None, as_json: bool) -> None:
    """Every leaf step's result under its name (``as_json``: one object by step)."""
    if as_json:  # {step: result}, each result streamed as `run --json` streams one
        from rainstorm.coordinator.result import write_json

        sys.stdout.write("{")
        for n, (name, result) in enumerate(report.results.items()):
            sys.stdout.write(("," if n else "") + json.dumps(name) + ":")
            write_json(sys.stdout, result)
        sys.stdout.write("}\n")
        sys.stdout.flush()
        return
    for name, result in report.results.items():
        step = report.graph.step(name)
        click.echo(f"== step {name} ({step.job_id})")
        print_result(result, top_n if top_n is not None else step.spec.sink.top, False)


def _graph_complete(report: Any) -> None:
    """:func:`_check_complete` of every step."""
    for step in report.graph.steps:
        rep = report.reports[step.name]
        _check_complete(step.job_id, step.spec, rep.status.dead_letters, rep.first_dead)


def _write_output(path: str, result: Any) -> None:
    from rainstorm.coordinator.result import write_json_atomically

    try:
        write_json_atomically(path, result)
    except OSError as exc:
        raise fail(f"--output {path}: cannot write the result ({exc.strerror}); it "
                   "was printed above") from None


def _log_time(job_s: float, output_s: float) -> None:
    """With -v: where this process's time went, so the whole command can be
    compared with the job alone (experiments/scaling.py reads this line)."""
    age = _process_age_s()
    if age is None or not log.isEnabledFor(logging.INFO):
        return
    log.info("time: %.2f s since the process started: the job %.2f s, the result's output "
             "%.2f s, the rest %.2f s (interpreter, imports, server start and stop)",
             age, job_s, output_s, max(age - job_s - output_s, 0.0))


def _process_age_s() -> float | None:
    """Seconds since this process started (Linux /proc; None elsewhere)."""
    try:
        stat = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - int(stat[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime
    except (OSError, ValueError, IndexError):
        return None


def _summary(report: Any, who: str) -> None:
    """The last lines of `rainstorm run`: size, time, rate, where; bad UTF-8."""
    mb = report.total_bytes / 1e6
    warn = report.status.stages[0].invalid_utf8_entries
    click.echo(
        f"job {report.job_id}: {mb:.1f} MB in {report.seconds:.2f} s "
        f"({mb / max(report.seconds, 1e-9):.1f} MB/s) with {who} on {report.server}",
        err=True,
    )
    if warn:
        click.echo(f"warning: {warn} input batches held invalid UTF-8; bad bytes were "
                   "replaced by U+FFFD", err=True)


def _with_settings(spec: Any, **settings: Any) -> Any:
    """``spec`` with the settings given on the command line (None: the spec's)."""
    given = {k: v for k, v in settings.items() if v is not None}
    if not given:
        return spec
    return spec.model_copy(update={"settings": spec.settings.model_copy(update=given)})


def _check_complete(job_id: str, spec: Any, dead_letters: int, first: str = "") -> None:
    """After the result is printed: a batch job with dead letters exits 3
    (IncompleteResult, naming the ``first`` reason) unless bad records are
    skipped by choice (a warning)."""
    from rainstorm.coordinator.result import check_complete

    if spec.unbounded:  # a streaming job's letters can be requeued while it runs
        if dead_letters:
            click.echo(f"warning: {dead_letters} dead letters in {keys.dlq(job_id)}, see "
                       f"`rainstorm dlq {job_id}`", err=True)
        return
    skip = spec.settings.skip_bad_records
    note = check_complete(job_id, dead_letters, dead_letters > 0 and not skip, first=first)
    if note:
        click.echo(note, err=True)


@click.command()
@click.argument("spec_path", metavar="SPEC")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@json_option
@shared(redis=False)
def explain(spec_path: str, overrides: tuple[str, ...], as_json: bool) -> None:
    """Show how SPEC is cut into stages, and which operators are fused."""
    from rainstorm.coordinator.submit import new_id
    from rainstorm.graph import GraphSpec, build, load_any
    from rainstorm.graph import explain as graph_lines
    from rainstorm.plan import explain as lines
    from rainstorm.plan import plan

    spec = load_any(spec_path, list(overrides))
    if isinstance(spec, GraphSpec):
        graph = build(spec, new_id(spec.name), spec_path)
        if as_json:
            click.echo(json.dumps({"graph": json.loads(graph.to_json()),
                                   "stages": {s.name: plan(s.spec).to_json()
                                              for s in graph.steps}}))
            return
        for line in graph_lines(graph):
            click.echo(line)
        return
    if as_json:
        click.echo(json.dumps(plan(spec).to_json()))
        return
    for line in lines(spec):
        click.echo(line)


@click.command()
@click.argument("spec_path", metavar="[SPEC]", required=False, envvar="RAINSTORM_SPEC")
@click.option("--input", "inputs", multiple=True, metavar="PATH_OR_GLOB", envvar="RAINSTORM_INPUT",
              help="replaces source.paths (env RAINSTORM_INPUT, space-separated)")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@shared()
@click.option("--job", "job_id", envvar="RAINSTORM_JOB",
              help="job id; submitting an existing id resumes it (env RAINSTORM_JOB)")
@click.option("--timeout", "timeout_s", type=float, default=None)
@click.option("--insecure-unsigned", "unsigned", is_flag=True,
              envvar="RAINSTORM_INSECURE_UNSIGNED",
              help="DEVELOPMENT ONLY: without RAINSTORM_SECRET, submit the spec unsigned "
                   "(only workers started with --insecure-accept-unsigned run it)")
@click.option("--shared-fs", is_flag=True, envvar="RAINSTORM_SHARED_FS",
              help="the workers see this process's input files at the same paths (one volume "
                   "mounted in all): source.transport auto sends them splits, not the bytes")
@skip_bad_option
@json_option
def submit(spec_path: str | None, inputs: tuple[str, ...], overrides: tuple[str, ...],
           conn: RedisOptions, job_id: str | None, timeout_s: float | None,
           unsigned: bool, shared_fs: bool, skip_bad: bool, as_json: bool) -> None:
    """Submit SPEC to a running Redis and coordinate it to the end (workers run elsewhere).

    SPEC is a YAML/JSON file (env RAINSTORM_SPEC); without one, the spec's
    YAML text is read from the environment variable RAINSTORM_SPEC_YAML.
    The spec is signed with RAINSTORM_SECRET (or RAINSTORM_SECRET_FILE),
    the key the workers hold."""
    from rainstorm.coordinator.result import completeness
    from rainstorm.coordinator.session import Hooks, Session, prepare
    from rainstorm.graph import GraphSpec

    loaded = _submitted_spec(spec_path, overrides)
    if isinstance(loaded, GraphSpec):
        _submit_graph(loaded, conn, inputs, job_id, timeout_s, unsigned, shared_fs, skip_bad,
                      as_json)
        return
    spec = _with_settings(loaded, skip_bad_records=skip_bad or None)
    job, files = prepare(spec, list(inputs) or None, job_id, shared_fs=shared_fs)
    key = _signing_key(unsigned)
    session = Session(conn.client(), job, files, key=key, unsigned=key is None)
    report = session.run(Hooks(on_submit=lambda fresh: click.echo(
        f"{'submitted' if fresh else 'resuming'} job {job.id}", err=True)),
        wait_s=conn.connect_timeout_s, timeout_s=timeout_s)  # a failure marks the job failed
    print_result(report.result, spec.sink.top, as_json)
    _check_complete(job.id, spec, completeness(session.r, job.id)[0], report.first_dead)


def _signing_key(unsigned: bool) -> bytes | None:
    """The key `submit` signs with (no key: one line, before Redis is touched)."""
    from rainstorm.spec_signature import submitter_key

    key = submitter_key(unsigned=unsigned)
    if key is None:
        click.echo("warning: --insecure-unsigned: the spec is not signed; only workers in "
                   "development mode (--insecure-accept-unsigned) run it", err=True)
    return key


def _submit_graph(gspec: Any, conn: RedisOptions, inputs: tuple[str, ...], graph_id: str | None,
                  timeout_s: float | None, unsigned: bool, shared_fs: bool, skip_bad: bool,
                  as_json: bool) -> None:
    """`submit` of a graph: every step submitted, all driven from here
    (workers elsewhere serve them, e.g. `rainstorm worker --job 'GRAPH.*'`)."""
    from rainstorm.coordinator.graph_run import GraphSession, prepare_graph
    from rainstorm.coordinator.session import Hooks

    if inputs:
        raise fail("--input: a graph's steps name their own sources; set them with "
                   "--set steps.<step>.source.paths=[...]", 2)
    if skip_bad:
        gspec = gspec.model_copy(update={"settings": {**gspec.settings,
                                                      "skip_bad_records": True}})
    graph, steps = prepare_graph(gspec, graph_id, shared_fs=shared_fs)
    key = _signing_key(unsigned)
    session = GraphSession(conn.client(), graph, steps, key=key, unsigned=key is None)
    report = session.run(Hooks(on_submit=lambda fresh: click.echo(
        f"{'submitted' if fresh else 'resuming'} graph {graph.id} ({len(graph.steps)} steps; "
        f"workers serve it with --job '{graph.id}.*' or without --job)", err=True)),
        wait_s=conn.connect_timeout_s, timeout_s=timeout_s)
    _print_graph(report, None, as_json)
    _graph_complete(report)


def _submitted_spec(spec_path: str | None, overrides: tuple[str, ...]) -> Any:
    """SPEC (a job's or a graph's), else the YAML text in RAINSTORM_SPEC_YAML."""
    import os

    from rainstorm.graph import is_graph, load_any, parse_graph
    from rainstorm.spec import parse_spec, spec_data

    inline = os.environ.get("RAINSTORM_SPEC_YAML", "")
    if spec_path:
        return load_any(spec_path, list(overrides))
    if inline.strip():
        data = spec_data(inline, "RAINSTORM_SPEC_YAML", list(overrides))
        return parse_graph(data, "RAINSTORM_SPEC_YAML") if is_graph(data) else \
            parse_spec(data, "RAINSTORM_SPEC_YAML")
    raise fail("no job given: pass SPEC, or set RAINSTORM_SPEC (a spec file) or "
               "RAINSTORM_SPEC_YAML (the spec's YAML text)", 2)


@click.command()
@shared()
@click.option("--job", "job_id", help="serve only this job")
@click.option("--burst", is_flag=True,
              help="exit when no running job is left (with --job: when it has ended, or "
                   "10 s after it is found gone: a Redis restart or failover is ridden out)")
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
def worker(conn: RedisOptions, job_id: str | None, burst: bool, stage: int | None,
           worker_id: str | None, allow: tuple[str, ...], allow_exec: bool,
           exec_paths: tuple[str, ...], insecure: bool) -> None:
    """Run a worker: consume, compute, commit, until stopped.

    It runs only job specs signed with the shared RAINSTORM_SECRET (or
    RAINSTORM_SECRET_FILE) of their submitter."""
    from rainstorm.local.worker_setup import WorkerFlags, worker_options

    opts = worker_options(WorkerFlags(job_id, burst, stage, worker_id, allow, allow_exec,
                                      exec_paths, insecure))
    _serve(conn, opts)


def _serve(conn: RedisOptions, opts: Any) -> None:
    """Connect (waiting out an outage), check the library, work until stopped."""
    from rainstorm import lua
    from rainstorm.worker.loop import Worker

    # stopped while still connecting (e.g. waiting out an outage): a clean exit
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    client = conn.client()
    lua.refuse_other_version(client)  # one line now, not when the first batch commits
    lua.check_transactions(client)  # likewise: a user that may not commit at all
    w = Worker(client, opts)
    w.install_signal_handlers()
    w.run()


@click.command()
@click.option("--mapper", required=True, metavar="EXE_OR_CALLABLE",
              help="a command line (fed input lines, writes key<TAB>value) or module:fn")
@click.option("--reducer", required=True, metavar="EXE_OR_CALLABLE",
              help="a command line (fed sorted key<TAB>value lines) or module:fn(key, values)")
@click.option("--input", "inputs", multiple=True, required=True, metavar="PREFIX_OR_GLOB")
@click.option("--output", required=True, type=click.Path(file_okay=False),
              help="directory for part-NNNNN files (must not exist)")
@click.option("--partitions", default=None, type=click.IntRange(1, 1024),
              help="reducers, and output parts [default: one per 8 MiB of input, at "
                   "least 2]: each reducer's groups and output part must fit one call "
                   "(20 MiB), ~400,000 distinct keys")
@click.option("--combiner", metavar="CALLABLE|sum", default=None,
              help="module:fn(key, values) -> values, run on each map batch (map-side "
                   "combine); sum: the built-in partial sum (numeric values; each reducer "
                   "call gets the key's total)")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 256))
@shared()
@click.option("--allow-exec", is_flag=True, help="let workers run the mapper/reducer programs")
@click.option("--allow-module", "allow", multiple=True, help="modules workers may import")
def mapreduce(mapper: str, reducer: str, inputs: tuple[str, ...], output: str,
              partitions: int | None,
              combiner: str | None, workers: int, conn: RedisOptions, allow_exec: bool,
              allow: tuple[str, ...]) -> None:
    """Run a MapReduce job: map, group by key, reduce into DIR/part-NNNNN."""
    from pathlib import Path

    from rainstorm.apps.mapreduce import prefix_glob, run_mapreduce
    from rainstorm.local.run import RunOptions

    opts = RunOptions(redis_url=conn.url, connect_timeout_s=conn.connect_timeout_s,
                      workers=workers, allow_modules=allow, allow_exec=allow_exec)
    rep = run_mapreduce(mapper, reducer, [prefix_glob(i) for i in inputs], Path(output),
                        partitions=partitions, combiner=combiner, options=opts)
    click.echo(f"map {rep.map_seconds:.2f} s ({rep.keys} keys), reduce "
               f"{rep.reduce_seconds:.2f} s: {rep.output_lines} lines in {rep.parts} parts "
               f"under {rep.output}", err=True)


@click.command()
@click.argument("bounds", metavar="MIN:MAX")
@shared()
@click.option("--job", "job_id", help="scale only this job, or every step of this dataflow "
              "graph (default: every running job)")
@click.option("--backend", type=click.Choice(["local", "docker"]), default="local",
              show_default=True, help="start workers as local processes or Docker containers")
@click.option("--image", default="rainstorm:latest", show_default=True,
              help="docker backend: image whose entry point is `rainstorm`")
@click.option("--network", default=None, help="docker backend: network of the containers")
@click.option("--volume", "volumes", multiple=True, metavar="VOLUME:PATH",
              help="docker backend: mount this volume (or absolute host directory) at PATH in "
                   "each container, e.g. the input files' volume for splits (repeatable)")
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
def autoscale(bounds: str, conn: RedisOptions, job_id: str | None, backend: str, image: str,
              network: str | None, volumes: tuple[str, ...], worker_redis: str | None,
              high_backlog_s: float,
              low_utilization: float, period_s: float, cooldown_s: float, interval_s: float,
              trace: Any, allow: tuple[str, ...], allow_exec: bool) -> None:
    """Keep MIN to MAX workers pinned to each stage of the running jobs,
    sized by backlog (high watermark) and utilization (low watermark)."""
    from rainstorm.local.scaling import BackendOptions
    from rainstorm.ops.autoscale.policy import ScalePolicy

    policy = ScalePolicy.parse_bounds(bounds, high_backlog_s=high_backlog_s,
                                      low_utilization=low_utilization, period_s=period_s,
                                      cooldown_s=cooldown_s, interval_s=interval_s)
    for v in volumes:
        source, _, target = v.partition(":")
        if not source or not target.startswith("/"):
            raise fail(f"--volume {v}: expected VOLUME:/absolute/path", 2)
    _autoscale(conn, policy, BackendOptions(backend, image, network, allow, allow_exec,
                                            volumes=volumes),
               worker_redis or conn.url or "", job_id, trace)


def _autoscale(conn: RedisOptions, policy: Any, chosen: Any, url: str, job_id: str | None,
               trace: Any) -> None:
    """Scale until SIGTERM or Ctrl-C, then stop the workers started."""
    import threading

    from rainstorm.local.scaling import make_backend
    from rainstorm.ops.autoscale.controller import Autoscaler

    r = conn.client()
    backend = make_backend(r, url, chosen)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    click.echo(f"autoscaling {job_id or 'every running job'}: {policy.min_workers} to "
               f"{policy.max_workers} {chosen.kind} workers per stage", err=True)
    try:
        Autoscaler(r, backend, policy, job_id=job_id, trace=trace).run(stop)
    finally:
        backend.close()


COMMANDS: list[Any] = [run, explain, submit, worker, mapreduce, autoscale]
