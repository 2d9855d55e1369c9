"""The KEYS/ARGV contract comments of rainstorm.lua against the Python
layouts that build each call (rainstorm.lua.contract), so neither side can
change without the other; and the version and caps Python reads from it."""

from __future__ import annotations

import re

import pytest

from rainstorm import lua
from rainstorm.errors import ProtocolError
from rainstorm.lua.contract import COMMIT, LAYOUTS, Layout
from rainstorm.lua.library import library_source

SECTION = re.compile(r"^-- (rainstorm_\w+)[ :(]", re.MULTILINE)
LINE = re.compile(r"^-- (KEYS|ARGV)\[(\d+)\] = (\w+)", re.MULTILINE)


def contract_comments(source: str) -> dict[str, dict[str, list[str]]]:
    """Per function, the names of its fixed KEYS and ARGV, in index order,
    from its section (checking the indices run 1, 2, 3...)."""
    starts = [(m.start(), m.group(1)) for m in SECTION.finditer(source)]
    out: dict[str, dict[str, list[str]]] = {}
    for (start, name), end in zip(starts, [s for s, _ in starts[1:]] + [len(source)],
                                  strict=True):
        block = source[start:end]
        found: dict[str, list[str]] = {"KEYS": [], "ARGV": []}
        for kind, idx, field in LINE.findall(block):
            assert int(idx) == len(found[kind]) + 1, f"{name}: {kind}[{idx}] out of order"
            found[kind].append(field)
        assert name not in out, f"{name} documented twice"
        out[name] = found
    return out


def test_every_function_has_a_layout_matching_its_comment() -> None:
    source = library_source()
    registered = set(re.findall(r"function_name = '(rainstorm_\w+)'|"
                                r"register_function\('(rainstorm_\w+)'", source))
    names = {a or b for a, b in registered}
    documented = contract_comments(source)
    assert names == set(documented) == {lay.function for lay in LAYOUTS}
    for lay in LAYOUTS:
        assert documented[lay.function] == {"KEYS": list(lay.keys), "ARGV": list(lay.argv)}, \
            lay.function


def test_the_check_catches_a_drift() -> None:
    source = library_source().replace("-- ARGV[3] = n_in ", "-- ARGV[3] = n_inputs ")
    assert contract_comments(source)[COMMIT.function]["ARGV"][2] == "n_inputs"
    commit_meta = "-- KEYS[3] = meta          rs:{job}:meta\n-- KEYS[4..3+n_in]"
    assert library_source().count(commit_meta) == 1  # rainstorm_commit's, alone
    swapped = library_source().replace(commit_meta, commit_meta.replace("[3]", "[9]"))
    with pytest.raises(AssertionError, match="out of order"):
        contract_comments(swapped)


def test_layout_build_is_the_only_order() -> None:
    lay = Layout("f", ("a", "b"), ("x",))
    assert lay.build({"a": "ka", "b": "kb"}, {"x": 1}, ["k3"], [2, 3]) == (
        ["ka", "kb", "k3"], [1, 2, 3])
    with pytest.raises(ProtocolError, match="not"):
        lay.build({"b": "kb", "a": "ka"}, {"x": 1})


def test_version_and_caps_come_from_the_lua_source() -> None:
    source = library_source()
    assert f"local LIB_VERSION = '{lua.LIB_VERSION}'" in source
    for name, value in vars(lua.LIMITS).items():
        assert re.search(rf"^local MAX_{name.upper()} = {value}\b", source, re.MULTILINE), name
    # caps comfortably above what rainstorm sends (spec.Settings bounds)
    assert lua.LIMITS.inputs >= 1024 and lua.LIMITS.outputs >= 1024  # parallelism <= 1024
    assert lua.LIMITS.load >= 256  # batch_entries <= 256
    assert lua.LIMITS.bytes >= (16 << 20) + (4 << 20)  # one batch_bytes chunk + a 4 MiB call
