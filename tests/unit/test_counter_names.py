"""Counter names have one owner: rainstorm/protocol/counters.py.

The FUNCTION library cannot import Python, so its counter writes are read
from rainstorm/lua/rainstorm.lua here; the documented lists (keys.py's
docstring, the README's key table, protocol/counters.py's own table) must
name exactly the defined set, and no doc may name an undefined counter.
"""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from rainstorm import keys
from rainstorm.monitor import StageCounts
from rainstorm.protocol import counters
from rainstorm.protocol.counters import NAMES, StageCounter

ROOT = Path(__file__).resolve().parents[2]
LUA = ROOT / "rainstorm" / "lua" / "rainstorm.lua"

# how rainstorm.lua names the field of a counters-hash command
_LITERAL = re.compile(r"'s0:([a-z_:0-9.]+)'")  # 's0:emitted'
_STAGE = re.compile(r"'s' \.\. stage \.\. ':([a-z_:0-9.]+)'")  # 's' .. stage .. ':rejected'
_PREFIXED = re.compile(r"p \.\. '([a-z_:0-9.]+)'")  # p .. 'committed' (p = 's' .. stage .. ':')
# a field that comes from Python (ARGV) or from a variable set by one of the forms above
_PASSED = re.compile(r"(emit_field|max_field|args\[[^\]]+\])")
_CALL = re.compile(r"redis\.call\('(HINCRBY|HSET|HGET)', counters, ([^,)]+)")
_BUCKETS = "lat:<le>"  # how the docs name the latency buckets


def lua_counter_names(text: str) -> set[str]:
    """Every counter name ``text`` (a Lua library) writes or reads; ValueError
    for a counters-hash command whose field this test cannot read (a new way
    of naming a counter must be taught here, not slip past)."""
    names: set[str] = set()
    for line in text.splitlines():
        code = line.split("--", 1)[0]
        for _cmd, arg in _CALL.findall(code):
            arg = arg.strip()
            if not (_LITERAL.fullmatch(arg) or _STAGE.fullmatch(arg) or _PREFIXED.fullmatch(arg)
                    or _PASSED.fullmatch(arg)):
                raise ValueError(f"cannot read the counter field {arg!r} in: {line.strip()}")
        for form in (_LITERAL, _STAGE, _PREFIXED):  # in a call or kept in a variable
            names.update(form.findall(code))
    return names


def undefined(names: set[str]) -> set[str]:
    return names - NAMES


def test_every_counter_the_lua_library_writes_is_defined() -> None:
    names = lua_counter_names(LUA.read_text())
    assert {"emitted", "loaded_bytes", "committed", "commits", "rejected", "dead",
            "dead_records", "requeued", "bytes_in", "max_event_us"} <= names  # it was read
    assert undefined(names) == set()


@pytest.mark.parametrize("planted", [
    "redis.call('HINCRBY', counters, p .. 'comitted', n_in)",
    "redis.call('HINCRBY', counters, 's0:emited', n)",
    "redis.call('HINCRBY', counters, 's' .. stage .. ':dead_letter', 1)",
])
def test_a_planted_undefined_name_is_caught(planted: str) -> None:
    text = LUA.read_text() + "\n" + planted + "\n"
    assert len(undefined(lua_counter_names(text))) == 1


def test_a_counter_named_in_a_new_way_is_not_skipped() -> None:
    with pytest.raises(ValueError, match="cannot read"):
        lua_counter_names("redis.call('HINCRBY', counters, prefix .. name, 1)")


def _documented(text: str) -> set[str]:
    """Counter names in ``text`` (quoted in backticks, with or without ``s<i>:``/``s0:``),
    the latency buckets as one name."""
    out = set()
    for tok in re.findall(r"``?([^`]+)``?", text):
        name = re.sub(r"^s(<i>|0):", "", tok.strip())
        if re.fullmatch(r"lat:<[^>]+>", name):
            name = _BUCKETS
        out.add(name)
    return out


def _defined() -> set[str]:
    return {c.value for c in StageCounter} | {_BUCKETS}


def _between(text: str, start: str, end: str) -> str:
    body = text.split(start, 1)[1]
    return body.split(end, 1)[0]


def test_the_keys_docstring_lists_every_counter() -> None:
    row = _between(keys.__doc__ or "", "``rs:{job}:counters``", "``rs:{job}:s<i>:p<k>``")
    assert _documented(row) - {"<name>"} == _defined()


def test_the_readme_key_table_lists_every_counter() -> None:
    row = next(line for line in (ROOT / "README.md").read_text().splitlines()
               if line.startswith("| `rs:{job}:counters`"))
    row = row.split("|")[3].split("Every name is defined")[0]
    assert _documented(row) == _defined()


def test_the_schema_table_lists_every_counter() -> None:
    doc = counters.__doc__ or ""
    lines = doc.splitlines()
    rulers = [i for i, line in enumerate(lines) if re.fullmatch(r"=+( +=+)+", line)]
    body = lines[rulers[1] + 1:rulers[2]]  # the rows: under the header's ruler
    first_col = {line.split()[0] for line in body if line.startswith("``")}
    assert _documented(" ".join(first_col)) - {"<name>"} == _defined()


def test_no_doc_names_an_undefined_counter() -> None:
    texts = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
             *sorted((ROOT / "rainstorm").rglob("*.py"))]
    bad = {}
    for path in texts:
        for m in re.finditer(r"`s(?:<i>|[0-9]+):([^`]+)`", path.read_text()):
            name = m.group(1)
            if re.fullmatch(r"lat:<[^>]+>", name) or name.startswith("//"):  # s3://: a URL
                continue
            if name not in NAMES and name not in ("<name>", "p<k>"):
                bad[f"{path.relative_to(ROOT)}: s?:{name}"] = True
    assert not bad, sorted(bad)


def test_the_reader_has_one_attribute_per_plain_counter() -> None:
    attrs = {f.name for f in fields(StageCounts)} - {"index", "latency"}
    assert attrs == {c.value for c in StageCounter if not c.value.startswith("lat:")}


def test_field_names() -> None:
    assert counters.field(3, StageCounter.DEAD_RECORDS) == "s3:dead_records"
    assert keys.counter_field(0, StageCounter.LAT_COUNT) == "s0:lat:count"
    assert counters.latency_field(1, 0.5) == "s1:lat:0.5"
    assert counters.latency_field(1, float("inf")) == "s1:lat:inf"
    assert counters.parse("s12:lat:25") == (12, "lat:25")
    assert counters.parse("s01:x") is None and counters.parse("total") is None
    assert len(counters.BUCKET_NAMES) == len(counters.LATENCY_BUCKETS_MS) + 1
