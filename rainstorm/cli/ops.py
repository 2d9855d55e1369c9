"""Operations commands: status, result, workers, list-tasks, kill-worker,
kill-job, dlq, throttle, tail, ui.  Each parses, calls one function of
rainstorm.ops / rainstorm.monitor / rainstorm.coordinator, and prints."""

from __future__ import annotations

import json
import signal
from typing import Any

import click

from rainstorm.cli.base import RedisOptions, fail, json_option, raise_interrupt, shared
from rainstorm.cli.show import console, print_result, printable, table

# a worker's per-key code, as `workers` shows it (None: a worker older than the field)
_CODE = {True: "C", False: "Python", None: "-"}


@click.command()
@click.argument("job_id", required=False)
@shared()
@json_option
def status(job_id: str | None, conn: RedisOptions, as_json: bool) -> None:
    """Show jobs, their stages and counters; JOB_ID may name a dataflow
    graph: then each step (its job, state, inputs, per stage emitted,
    committed and backlog) and the graph's state."""
    from rainstorm.monitor.stream_lag import lag_line
    from rainstorm.ops.status import graph_status, graph_statuses, job_statuses

    r = conn.client()
    graph = graph_status(r, job_id) if job_id else None
    if graph is not None:
        _print_graph(graph, as_json)
        return
    rows = job_statuses(r, job_id)
    if as_json:
        click.echo(json.dumps([row.to_json() for row in rows]))
        return
    from rich.table import Table

    out = Table(title="rainstorm jobs")
    for col in ("job", "state", "loaded", "progress", "stage", "emitted", "committed",
                "dead", "claimed", "rejected"):
        out.add_column(col)
    for row in rows:
        for s in row.stages:
            state = "done (INCOMPLETE)" if row.incomplete else row.state
            out.add_row(printable(row.job), printable(state), str(row.loaded),
                        f"{row.progress * 100:.1f}%", str(s.index), str(s.emitted),
                        str(s.committed), str(s.dead), str(s.claimed), str(s.rejected))
    console().print(out)
    for row in rows:
        if row.source is not None:
            click.echo(printable(f"{row.job}: {lag_line(row.source)}"))
    graphs = [] if job_id else graph_statuses(r)
    if graphs:
        table("rainstorm graphs", [{"graph": g.record.id, "name": g.record.name,
                                    "state": g.state,
                                    "steps": ", ".join(f"{row.step}: {row.state}"
                                                       for row in g.rows)} for g in graphs],
              ["graph", "name", "state", "steps"])


def _print_graph(graph: Any, as_json: bool) -> None:
    """`status GRAPH_ID`: one row per stage of every step."""
    if as_json:
        click.echo(json.dumps(graph.to_json()))
        return
    from rich.table import Table

    out = Table(title=printable(f"graph {graph.record.id} ({graph.record.name}): "
                                f"{graph.state}"))
    for col in ("step", "job", "state", "inputs", "stage", "emitted", "committed", "backlog"):
        out.add_column(col)
    for s, row in zip(graph.record.steps, graph.rows, strict=True):
        state = "done (INCOMPLETE)" if row.incomplete else row.state
        inputs = ", ".join(s.inputs) or "-"
        for c in row.stages or [None]:
            out.add_row(*map(printable, (s.step, row.job, state, inputs)),
                        *(("-",) * 4 if c is None else
                          (str(c.index), str(c.emitted), str(c.committed), str(c.backlog))))
    console().print(out)


@click.command()
@click.argument("job_id")
@shared()
@click.option("--top", "top_n", type=click.IntRange(min=0), default=10, help="rows to show")
@click.option("--key", "key", default=None, metavar="KEY",
              help="print only this key's value, reading only its state partition "
                   "(during the job or after it); exit status 1 if it has none")
@json_option
def result(job_id: str, conn: RedisOptions, top_n: int, key: str | None,
           as_json: bool) -> None:
    """Print a finished job's result (exit status 3: INCOMPLETE, input was dead-lettered)."""
    from rainstorm.coordinator.result import check_complete, stored_result
    from rainstorm.monitor.deadletters import first_reason
    from rainstorm.operators.resolve import allowed_modules_from_env

    # who reads a result is no coordinator: its environment's module allowlist
    if key is not None:
        _print_key(conn, job_id, key, as_json)
        return
    r = conn.client()
    stored = stored_result(r, job_id, allow=allowed_modules_from_env())
    if stored.live:
        click.echo(f"job {job_id} is a streaming job ({stored.state}): its result so far",
                   err=True)
    print_result(stored.result, top_n, as_json)
    first = first_reason(r, job_id, stored.dead_letters) if stored.incomplete else ""
    note = check_complete(job_id, stored.dead_letters, stored.incomplete, first=first)
    if note:
        click.echo(note, err=True)


def _print_key(conn: RedisOptions, job_id: str, key: str, as_json: bool) -> None:
    from rainstorm.coordinator.result import stored_key
    from rainstorm.operators.resolve import allowed_modules_from_env

    read, found_as = stored_key(conn.client(), job_id, key, allow=allowed_modules_from_env())
    if as_json:
        click.echo(json.dumps({"key": found_as, "found": read.found, "value": read.value,
                               "partition": read.partition}, ensure_ascii=False, default=repr))
    elif read.found:
        click.echo(f"{key}\t{read.value}")
    if not read.found:
        raise fail(f"job {job_id} has no key {key!r} (looked in state partition "
                   f"{read.partition})", 1)


@click.command()
@shared()
@click.option("--prune", "prune_s", type=float, default=None, metavar="SECONDS",
              help="first forget workers silent for longer than SECONDS")
@json_option
def workers(conn: RedisOptions, prune_s: float | None, as_json: bool) -> None:
    """Workers: id, host, pid, heartbeat age, pinned stage, current stage, batches."""
    from rainstorm.monitor import workers as list_workers
    from rainstorm.ops.tasks import prune_workers

    r = conn.client()
    if prune_s is not None:
        n = prune_workers(r, prune_s)
        click.echo(f"forgot {n} dead workers", err=True)
    views = list_workers(r)
    if as_json:
        click.echo(json.dumps([w.to_json() for w in views]))
        return
    rows = [{**w.to_json(), "pinned": "-" if w.stage is None else f"{w.job or '*'}:s{w.stage}",
             "where": w.container or w.host, "state": "busy" if w.busy else w.state,
             "code": _CODE[w.native]}
            for w in views]
    table("rainstorm workers", rows, ["id", "where", "pid", "state", "heartbeat_age_s",
                                      "pinned", "current", "batches", "code"])


@click.command("list-tasks")
@click.argument("job_id", required=False)
@shared()
@click.option("--sample", "sample_s", type=click.FloatRange(0, 60), default=1.0,
              show_default=True, help="seconds over which rates are measured (0: no rates)")
@json_option
def list_tasks(job_id: str | None, conn: RedisOptions, sample_s: float, as_json: bool) -> None:
    """Per job, stage and partition: unread and pending entries, rates,
    holders (JOB_ID may name a dataflow graph: every step's tasks)."""
    from rainstorm.ops.tasks import list_tasks as tasks

    views = tasks(conn.client(), job_id, sample_s)
    if as_json:
        click.echo(json.dumps([t.to_json() for t in views]))
        return
    rows = [{**t.to_json(),
             "holders": ", ".join(f"{k}: {v}" for k, v in t.holders.items()) or "-",
             "rate": "-" if t.in_rate is None else f"{t.in_rate:g} in / {t.out_rate:g} out"}
            for t in views]
    steps = ["step"] if any(t.step for t in views) else []
    table("rainstorm tasks (rates in entries/s)", [{**row, "step": row["step"] or "-"}
                                                   for row in rows],
          ["job", *steps, "state", "stage", "partition", "unread", "pending", "rate",
           "holders"])


@click.command("kill-worker")
@click.argument("worker_id")
@shared()
@click.option("--force", is_flag=True,
              help="SIGKILL it (same host) or kill its container (Docker SDK) instead of "
                   "asking it to stop")
def kill_worker(worker_id: str, conn: RedisOptions, force: bool) -> None:
    """Stop WORKER_ID: by default it finishes its batch and exits; with
    --force it dies at once and others steal its pending entries."""
    from rainstorm.ops.tasks import kill_worker as stop

    click.echo(stop(conn.client(), worker_id, force=force), err=True)


@click.command()
@click.argument("job_id")
@shared()
@click.option("--requeue", is_flag=True,
              help="move every dead letter back into its stage (the job must be running)")
@click.option("--limit", type=int, default=100, show_default=True, help="rows to show")
@json_option
def dlq(job_id: str, conn: RedisOptions, requeue: bool, limit: int, as_json: bool) -> None:
    """Show JOB's dead letters (stage, kind, error, deliveries), or requeue them."""
    from rainstorm.ops import dlq as dead

    r = conn.client()
    if requeue:
        res = dead.requeue(r, job_id)
        if as_json:
            click.echo(json.dumps({"requeued": res.moved, "skipped": res.skipped}))
        else:
            click.echo(f"requeued {res.moved} dead letters of job {job_id}"
                       + (f" ({res.skipped} were already gone)" if res.skipped else ""),
                       err=True)
        return
    rows = [letter.to_json() for letter in dead.read(r, job_id, count=limit)]
    if as_json:
        click.echo(json.dumps(rows))
        return
    table(f"dead letters of {job_id}", rows,
          ["id", "stage", "kind", "deliveries", "error", "record"])


@click.command()
@click.argument("job_id")
@click.argument("rate")
@shared()
def throttle(job_id: str, rate: str, conn: RedisOptions) -> None:
    """Limit how many input lines per second JOB's loader adds (RATE, or 'off')."""
    from rainstorm.ops.tasks import throttle as set_rate

    r = conn.client()
    set_rate(r, job_id, _rate(rate))
    click.echo(f"job {job_id}: " + ("loading unthrottled" if rate == "off"
                                    else f"loading at most {float(rate):g} lines/s"), err=True)


def _rate(text: str) -> float | None:
    """RATE: a positive number of lines per second, or 'off' (None)."""
    if text == "off":
        return None
    try:
        value = float(text)
        if value <= 0:
            raise ValueError
    except ValueError:
        raise fail(f"RATE must be a positive number of lines per second or 'off', "
                   f"got {text!r}", 2) from None
    return value


@click.command()
@click.argument("job_id")
@shared()
@click.option("--from-start", is_flag=True, help="first everything already committed")
@click.option("--interval", "interval_s", type=float, default=1.0, show_default=True,
              help="aggregates: seconds between looks")
def tail(job_id: str, conn: RedisOptions, from_start: bool, interval_s: float) -> None:
    """Follow JOB's output: records as they are committed (JSON lines), or an
    aggregate's changed keys with their new values; until the job stops."""
    from rainstorm.jobstore import load_job
    from rainstorm.operators.resolve import allowed_modules_from_env
    from rainstorm.ops.follow import follow

    r = conn.client()
    job = load_job(r, job_id)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        for item in follow(r, job, allow=allowed_modules_from_env(), from_start=from_start,
                           interval_s=interval_s, stop=lambda: stop["now"]):
            line = json.dumps(item if not job.plan.aggregate
                              else {"key": item[0], "value": item[1]},
                              ensure_ascii=False, default=repr)
            click.echo(line)
    except KeyboardInterrupt:
        pass


@click.command("kill-job")
@click.argument("job_id")
@shared()
@click.option("--keep", is_flag=True,
              help="only stop it: keep its keys (a streaming job's result stays readable)")
def kill_job(job_id: str, conn: RedisOptions, keep: bool) -> None:
    """Cancel JOB and remove its keys (its coordinator fails with 'cancelled';
    a streaming job's coordinator stops cleanly).  JOB may name a dataflow
    graph: every step's job, and the graph's record."""
    from rainstorm.monitor import graph_named
    from rainstorm.ops.tasks import kill_graph
    from rainstorm.ops.tasks import kill_job as cancel

    r = conn.client()
    if graph_named(r, job_id) is not None:
        steps, removed = kill_graph(r, job_id, keep=keep)
        click.echo(f"graph {job_id} cancelled: {steps} steps; " + (
            "their keys are kept" if keep else f"{removed} keys and the graph's record removed"),
            err=True)
        return
    n = cancel(r, job_id, keep=keep)
    click.echo(f"job {job_id} cancelled; " + ("its keys are kept"
                                              if keep else f"{n} keys removed"), err=True)


@click.command()
@shared()
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535),
              help="port to listen on (0: any free port)")
@click.option("--interval", "interval_s", default=1.0, show_default=True,
              type=click.FloatRange(0.1, 60), help="seconds between samples of Redis")
def ui(conn: RedisOptions, host: str, port: int, interval_s: float) -> None:
    """Serve a live web dashboard, /api/state (JSON) and /metrics (Prometheus)."""
    from rainstorm.ops.dashboard.server import serve

    r = conn.client()
    signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        serve(r, host=host, port=port, interval_s=interval_s,
              announce=lambda url: click.echo(f"rainstorm ui: serving on {url}", err=True))
    except KeyboardInterrupt:
        click.echo("rainstorm ui: stopped", err=True)


COMMANDS: list[Any] = [status, result, workers, list_tasks, kill_worker, dlq, throttle, tail,
                       kill_job, ui]
