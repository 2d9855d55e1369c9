"""The README says what the code is: its module map is generated from the
package tree (tools/module_map.py) and its Redis key table lists exactly the
keys of keys.py's docstring table, in the same order."""

from __future__ import annotations

import re
from pathlib import Path

from tools import module_map

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_module_map_is_current() -> None:
    held = module_map.in_readme(README)
    assert held is not None, f"README.md lost its {module_map.BEGIN!r} marker"
    assert held == module_map.render(), (
        f"README.md's module map is stale (a module was added, moved or its docstring "
        f"changed): run `{module_map.COMMAND}`")


def test_every_module_has_a_summary() -> None:
    missing = [str(p.relative_to(ROOT)) for p in (ROOT / "rainstorm").rglob("*.py")
               if not module_map.summary(p)]
    assert missing == [], f"modules without a docstring (the map's line): {missing}"


def test_summary_is_the_first_sentence(tmp_path: Path) -> None:
    mod = tmp_path / "m.py"
    mod.write_text('"""Counters (e.g. rows) of\n:class:`a.B` and ``x``.  More.\n\nBody."""\n')
    assert module_map.summary(mod) == "Counters (e.g. rows) of `a.B` and `x`"
    (tmp_path / "empty.py").write_text("x = 1\n")
    assert module_map.summary(tmp_path / "empty.py") == ""


def test_a_long_summary_is_cut_at_a_clause() -> None:
    assert module_map.shortened("short", 10) == "short"
    assert module_map.shortened("The loop: every second look at all", 20) == "The loop"
    assert module_map.shortened("one, two, three, four, five", 20) == "one, two, three …"


def test_rewriting_replaces_only_the_map() -> None:
    text = f"intro\n{module_map.BEGIN}\nold map\n{module_map.END}\noutro\n"
    new = module_map.rewritten(text)
    assert new.startswith("intro\n") and new.endswith(f"{module_map.END}\noutro\n")
    assert module_map.in_readme(new) == module_map.render()


def test_readme_key_table_is_keys_py_table() -> None:
    doc = (ROOT / "rainstorm" / "keys.py").read_text(encoding="utf-8")
    documented = re.findall(r"^``(rs:[^`]+)``", doc, re.MULTILINE)
    in_readme = re.findall(r"^\| `(rs:[^`]+)` \|", README, re.MULTILINE)
    assert documented and in_readme == documented, (
        "README.md's Redis key table must list keys.py's docstring table, in its order")
