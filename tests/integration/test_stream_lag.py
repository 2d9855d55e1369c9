"""How far a job is behind its Redis stream source (rainstorm.monitor.
stream_lag), for each transport, against the real server: the figure is
checked against an independent count, XRANGE of the entries after the
point the job's own cursor (or group) names, and shown by `status`, the
dashboard's view and /metrics."""

from __future__ import annotations

import redis

from rainstorm import keys
from rainstorm.coordinator.submit import submit
from rainstorm.job import Job
from rainstorm.local.run import prepare
from rainstorm.monitor import job_view, snapshot
from rainstorm.monitor.source import LAG_COUNT_CAP
from rainstorm.monitor.stream_lag import StreamLag, lag_line, stream_lag
from rainstorm.ops.dashboard.metrics import render
from rainstorm.ops.status import job_statuses
from rainstorm.protocol.stream_cursor import parse_pos
from rainstorm.sources.pick import loader_for
from rainstorm.sources.ranges import resolve_stream_transport
from rainstorm.spec import parse_spec
from tests.helpers import cli, produce_lines


def _job(r: redis.Redis, job_id: str, transport: str) -> Job:
    spec = parse_spec({
        "name": job_id, "source": {"type": "stream", "key": job_id, "batch_records": 10,
                                   "linger_ms": 0, "transport": transport},
        "pipeline": [{"op": "flat_map", "fn": "split_words"}, {"op": "count"}],
        "settings": {"parallelism": 1, "batch_entries": 2, "max_backlog": 1000}})
    job, files = prepare(spec, None, job_id)
    job = resolve_stream_transport(r, job)
    submit(r, job, files)
    return job


def _after_cursor(r: redis.Redis, job: Job) -> int:
    """The entries after the id the job's cursor names: an independent count."""
    pos = (r.hget(keys.cursor(job.id), "pos") or b"").decode()
    after = parse_pos(pos)[0] if job.stream_ranges else (pos or "0-0")
    return len(r.xrange(job.id, min=f"({after}", max="+"))


def test_split_lag_is_the_counter_behind_the_cursor(r: redis.Redis) -> None:
    job = _job(r, "lag-split", "split")
    assert job.stream_ranges
    produce_lines(r, job.id, [f"w{i}" for i in range(100)])
    assert stream_lag(r, job) == StreamLag(job.id, 100, "exact")
    loader = loader_for(r, job)
    loader.step()  # a backlog: one step cuts batch_entries x batch_records = 20
    lag = stream_lag(r, job)
    assert lag == StreamLag(job.id, 80, "about") and _after_cursor(r, job) == 80
    while (lag := stream_lag(r, job)) is not None and lag.how != "exact":
        assert lag.records == _after_cursor(r, job)
        loader.step()
    assert lag == StreamLag(job.id, 0, "exact")  # cut to the end: the counter again
    produce_lines(r, job.id, [f"v{i}" for i in range(7)])
    assert stream_lag(r, job) == StreamLag(job.id, 7, "exact") and _after_cursor(r, job) == 7
    assert lag_line(StreamLag(job.id, 1234, "about")) == \
        "source stream 'lag-split': about 1,234 entries not read yet"


def test_copy_lag_counts_after_the_cursor_up_to_the_cap(r: redis.Redis) -> None:
    job = _job(r, "lag-copy", "copy")
    produce_lines(r, job.id, [f"w{i}" for i in range(30)])
    assert stream_lag(r, job) == StreamLag(job.id, 30, "exact")
    loader_for(r, job).step()  # copies 20
    assert stream_lag(r, job) == StreamLag(job.id, 10, "exact") == \
        StreamLag(job.id, _after_cursor(r, job), "exact")
    produce_lines(r, job.id, ["x"] * LAG_COUNT_CAP)
    assert stream_lag(r, job) == StreamLag(job.id, LAG_COUNT_CAP, "at least")
    while loader_for(r, job).step().loaded_entries:  # copied to the end: one XINFO says 0
        pass
    assert stream_lag(r, job) == StreamLag(job.id, 0, "exact") and _after_cursor(r, job) == 0


def test_direct_lag_is_the_groups(r: redis.Redis) -> None:
    job = _job(r, "lag-direct", "direct")
    produce_lines(r, job.id, [f"w{i}" for i in range(15)])
    assert stream_lag(r, job) == StreamLag(job.id, 15, "exact")


def test_status_the_dashboard_view_and_metrics_show_the_lag(r: redis.Redis, url: str) -> None:
    job = _job(r, "lag-shown", "split")
    produce_lines(r, job.id, [f"w{i}" for i in range(42)])
    (row,) = job_statuses(r, job.id)
    assert row.source == StreamLag(job.id, 42, "exact")
    assert row.to_json()["source"] == {"stream": job.id, "lag": 42, "how": "exact"}
    assert job_view(r, job.id).to_json()["source"] == {"stream": job.id, "lag": 42,
                                                       "how": "exact"}
    text = render(snapshot(r, job.id))
    assert f'rainstorm_source_lag_entries{{job_id="{job.id}",stream="{job.id}",how="exact"}} 42' \
        in text.splitlines()
    res = cli(url, "status", job.id)
    assert res.returncode == 0, res.stderr
    assert f"{job.id}: source stream '{job.id}': 42 entries not read yet" in res.stdout


def test_a_user_without_xinfo_gets_no_lag_rather_than_a_wrong_one(r: redis.Redis) -> None:
    """The compose `worker` user may not run XINFO: the lag is left out (None),
    never shown as 0."""
    jobs = [_job(r, f"lag-noxinfo-{t}", t) for t in ("split", "copy", "direct")]
    for job in jobs:
        produce_lines(r, job.id, ["w"] * 5)
        assert stream_lag(r, job) == StreamLag(job.id, 5, "exact")  # the admin sees it
    r.execute_command("ACL", "SETUSER", "lagviewer", "on", ">lagpw", "~*", "+@all", "-xinfo")
    kwargs = dict(r.connection_pool.connection_kwargs, username="lagviewer", password="lagpw")
    viewer = redis.Redis(connection_pool=redis.ConnectionPool(
        connection_class=r.connection_pool.connection_class, **kwargs))
    try:
        assert [stream_lag(viewer, job) for job in jobs] == [None, None, None]
    finally:
        viewer.close()
        r.execute_command("ACL", "DELUSER", "lagviewer")
