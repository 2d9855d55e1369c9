from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rainstorm.coordinator.submit import new_id
from rainstorm.errors import UsageError
from rainstorm.graph import build, parse_graph
from rainstorm.plan import describe, plan
from rainstorm.spec import (
    MAX_JOB_ID,
    STREAM_STATE_PARTITIONS,
    Settings,
    check_job_id,
    is_job_id,
    load_spec,
    parse_spec,
)

ROOT = Path(__file__).resolve().parents[2]


def spec(pipeline: list[dict[str, object]], **kw: object):  # type: ignore[no-untyped-def]
    return parse_spec({"name": "t", "pipeline": pipeline, **kw})


def test_wordcount_example_is_one_fused_stage() -> None:
    p = plan(load_spec(ROOT / "examples" / "wordcount.yaml"))
    assert len(p.stages) == 1
    assert p.aggregate == "count"
    assert [o.fn for o in p.stages[0].ops] == ["split_words"]


def test_record_ops_fuse_and_repartition_cuts() -> None:
    p = plan(spec([
        {"op": "flat_map", "fn": "split_words"},
        {"op": "map", "fn": "lower"},
        {"op": "repartition", "partitions": 3},
        {"op": "filter", "fn": "nonempty"},
        {"op": "key_by", "fn": "first_char", "value": "length"},
        {"op": "sum"},
    ]))
    assert [len(s.ops) for s in p.stages] == [2, 2]
    assert p.stages[1].partitions == 3
    assert p.stages[1].keyed_out and not p.stages[1].keyed_in
    assert "stage 1: 3 partitions" in describe(p)[1]


@pytest.mark.parametrize("pipeline, field", [
    ([{"op": "flat_map"}], "pipeline.0.flat_map.fn"),
    ([{"op": "explode", "fn": "x"}], "pipeline.0"),
    ([], "pipeline"),
    ([{"op": "map", "fn": "lower", "value": "length"}], "pipeline.0.map"),
])
def test_invalid_specs_name_the_field(pipeline: list[dict[str, object]], field: str) -> None:
    with pytest.raises(UsageError) as exc:
        spec(pipeline)
    msg = str(exc.value)
    assert field in msg and "\n" not in msg


def test_sum_without_key_is_refused_at_plan_time() -> None:
    with pytest.raises(UsageError, match="pipeline.1: sum needs keyed records"):
        plan(spec([{"op": "flat_map", "fn": "split_words"}, {"op": "sum"}]))


def test_nothing_after_aggregate() -> None:
    with pytest.raises(UsageError, match="pipeline.2"):
        plan(spec([{"op": "flat_map", "fn": "split_words"}, {"op": "count"},
                   {"op": "map", "fn": "lower"}]))


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(UsageError, match="cannot parse spec"):
        load_spec(bad)
    with pytest.raises(UsageError, match="spec file not found"):
        load_spec(tmp_path / "nope.yaml")
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n")
    with pytest.raises(UsageError, match="mapping"):
        load_spec(lst)


@pytest.mark.parametrize("source, given, expected", [
    ({"type": "stream", "key": "ev"}, None, STREAM_STATE_PARTITIONS),
    ({"type": "tail", "path": "/tmp/x.log"}, None, STREAM_STATE_PARTITIONS),
    ({"type": "stream", "key": "ev"}, 64, 64),
    ({"type": "stream", "key": "ev"}, 3, 3),
    ({"type": "text", "paths": ["x.txt"]}, None, Settings().state_partitions),
    ({"type": "text", "paths": ["x.txt"]}, 8, 8),
])
def test_a_streaming_job_defaults_to_fewer_state_partitions(
        source: dict[str, object], given: int | None, expected: int) -> None:
    """A streaming job not given state_partitions gets 8 (its small commits
    touch nearly every partition); a given value is kept; a batch job keeps
    the general default; the value survives a dump and parse (workers re-read
    the spec)."""
    settings = {} if given is None else {"state_partitions": given}
    spec = parse_spec({"name": "j", "source": source, "pipeline": [{"op": "count"}],
                       "settings": settings})
    assert spec.settings.state_partitions == expected
    assert parse_spec(spec.model_dump()).settings.state_partitions == expected


@pytest.mark.parametrize("bad", ["a b", "x}y", "{job}", "-x", ".x", "a\n", "a/b", "é", "",
                                 "q" * 101])
def test_job_ids_workers_would_skip_are_refused(bad: str) -> None:
    # a worker skips any other id it finds in rs:jobs, so a job under one waited for ever
    assert not is_job_id(bad)
    with pytest.raises(UsageError, match=r"only letters, digits"):
        check_job_id(bad, "--job")
    data = yaml.safe_load((ROOT / "examples" / "window_join.yaml").read_text())
    with pytest.raises(UsageError, match=r"graph id .*only letters"):
        build(parse_graph(data), bad)


def test_a_generated_id_is_a_job_id_however_long_the_name() -> None:
    for name in ("w", "w" * 77, "w" * 78, "w" * MAX_JOB_ID):
        job_id = new_id(name)
        assert is_job_id(job_id) and check_job_id(job_id) == job_id, job_id
        assert job_id.startswith(name[:70])
    assert is_job_id("q" * MAX_JOB_ID) and is_job_id("a.b_c-1")


CSV = {"op": "flat_map", "fn": "parse_csv", "args": {"columns": ["kind", "size"]}}


@pytest.mark.parametrize("later, needle", [
    ({"op": "key_by", "fn": "field", "args": {"name": "colour"}},
     "pipeline.1.args.name: 'colour' is not a column of the parse_csv at pipeline.0 "
     "(kind, size)"),
    ({"op": "map", "fn": "select", "args": {"columns": ["kind", "wt"]}},
     "pipeline.1.args.columns: 'wt' is not a column"),
    ({"op": "filter", "fn": "equals", "args": {"name": "Kind", "value": "x"}},
     "pipeline.1.args.name: 'Kind' is not a column"),
])
def test_a_csv_column_the_parser_does_not_give_is_refused(later: dict[str, object],
                                                          needle: str) -> None:
    """Every row would have failed at run time (a KeyError per record)."""
    with pytest.raises(UsageError) as err:
        plan(spec([CSV, later, {"op": "count"}]))
    assert str(err.value).startswith(needle), str(err.value)


def test_csv_columns_are_followed_through_filters_and_not_past_reshaping() -> None:
    eq = {"op": "filter", "fn": "equals", "args": {"name": "kind", "value": "a"}}
    with pytest.raises(UsageError, match="pipeline.2.args.name: 'nope'"):
        plan(spec([CSV, eq, {"op": "key_by", "fn": "field", "args": {"name": "nope"}},
                   {"op": "count"}]))
    ok = [CSV, eq, {"op": "key_by", "fn": "field", "args": {"name": "size"}}, {"op": "count"}]
    assert plan(spec(ok)).stages  # the real columns pass
    # after a map that may reshape the rows nothing is assumed
    plan(spec([CSV, {"op": "map", "fn": "identity"},
               {"op": "key_by", "fn": "field", "args": {"name": "anything"}}, {"op": "count"}]))
    for example in ("signs_app1.yaml", "signs_app2.yaml"):
        assert plan(load_spec(ROOT / "examples" / example)).stages
