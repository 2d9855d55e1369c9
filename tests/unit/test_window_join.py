"""The windowed join's built-ins without Redis (join_side, side_field,
window_join), and the example spec; the join itself runs in
tests/integration/test_window_join.py."""

from __future__ import annotations

import pytest
import yaml

from rainstorm.errors import UsageError
from rainstorm.graph import build, parse_graph
from rainstorm.operators.chain_errors import Rejected
from rainstorm.operators.resolve import resolve
from rainstorm.operators.window_join import make_window_join
from tests.helpers import ROOT


def test_window_join_builtins_refuse_what_they_cannot_read() -> None:
    join = make_window_join("full")
    pairs = join(["10|ann", [["left", 1], ["right", 2], ["left", 3]]])
    assert sorted(pairs) == [("ann", (1, 2), 10), ("ann", (3, 2), 10)]
    assert join(["12.5|{\"a\": 1}", [["right", 2]]]) == [('{"a": 1}', (None, 2), 12.5)]
    with pytest.raises(Rejected, match="window_join reads"):
        join(["ann", [["left", 1]]])  # no window start
    with pytest.raises(Rejected, match="window_join reads"):
        join(["10|ann", [["middle", 1]]])
    for fn, args in (("window_join", {"how": "outer"}), ("join_side", {"side": "up"}),
                     ("side_field", {"name": 3})):
        with pytest.raises(UsageError, match=f"bad args for built-in {fn!r}"):
            resolve(fn, args, (), "pipeline.0.fn")
    tag = resolve("join_side", {"side": "left", "key": "user"}, (), "p")
    assert tag({"user": "ann", "ts": "1"}) == ("ann", ["left", {"user": "ann", "ts": "1"}])
    with pytest.raises(Rejected, match="no field 'user'"):
        tag({"ts": "1"})
    assert resolve("join_side", {"side": "right"}, (), "p")(["k", 5]) == ("k", ["right", 5])


def test_the_example_is_a_valid_graph() -> None:
    data = yaml.safe_load((ROOT / "examples" / "window_join.yaml").read_text())
    assert [s.name for s in build(parse_graph(data), "x").steps] == \
        ["left", "right", "joined", "pairs"]
