from __future__ import annotations

from pathlib import Path

import pytest

from rainstorm.errors import UsageError
from rainstorm.plan import plan
from rainstorm.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]
WC = ROOT / "examples" / "wordcount.yaml"


def test_set_overrides_typed_values() -> None:
    spec = load_spec(WC, ["settings.parallelism=5", "source.batch_bytes=65536",
                          "pipeline.0.fn=lower", "pipeline.0.op=map", "settings.wait_aof=true"])
    assert spec.settings.parallelism == 5 and spec.source.batch_bytes == 65536
    assert spec.settings.wait_aof is True
    assert plan(spec).stages[0].ops[0].fn == "lower"


@pytest.mark.parametrize("assignment, needle", [
    ("settings.parallelism=zero", "settings.parallelism"),
    ("pipeline.7.fn=x", "pipeline.7 is not an index"),
    ("novalue", "expected key=value"),
    ("name.x=1", "name is not a mapping"),
    ("sink.type=file", "a file sink needs a path"),
])
def test_bad_overrides_name_the_field(assignment: str, needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        load_spec(WC, [assignment])
