"""The package layout is the architecture: imports point down the layers.

Read from the source with ``ast`` (nothing is imported), so a new back-edge
or cycle fails here with the offending import named.  Lazy imports inside
functions count too: a cycle hidden in a function is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "rainstorm"

# Lowest first.  A module may import modules of its own layer or of a lower
# one, never of a higher one.  Modules of one layer must not form a cycle.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("errors", "replies", "procs", "overrides", "keys", "protocol", "samples",
              "pages", "heap", "native")),
    ("model", ("signing", "spec_signature", "spec", "plan", "job", "graph")),
    ("pure operators, lua, connection", ("operators", "lua", "connection")),
    ("shared state and readers", ("state", "window_close", "lease", "durability", "latency",
                                  "graphstore",
                                  "monitor",
                                  "jobstore")),
    ("sources", ("sources",)),
    ("coordinator and worker", ("coordinator", "worker")),
    ("operations", ("ops",)),
    ("local runtime", ("local",)),
    ("applications", ("apps",)),
    ("entry points", ("cli", "testing", "__main__", "__init__")),
]

# Rooms of one layer that must not import each other.
INDEPENDENT = [("coordinator", "worker"), ("operators", "lua"), ("operators", "connection")]

# Operators are pure: no Redis client, no Lua, no connection handling.
PURE = {"operators": ("redis", "rainstorm.lua", "rainstorm.connection", "rainstorm.keys")}


def _modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = p.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _lazy_names() -> dict[str, str]:
    """Names ``rainstorm/__init__`` hands out by importing them (eagerly, under
    TYPE_CHECKING or lazily in ``__getattr__``): name -> the module they come
    from.  ``from rainstorm import Dataset`` is an import of that module."""
    out = {}
    for node in ast.walk(ast.parse(MODULES["__init__"].read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rainstorm."):
            for alias in node.names:
                out[alias.asname or alias.name] = node.module or ""
    return out


# what ``rainstorm/__init__`` defines itself, importable from any layer
TOP_OWN = {"__version__"}


def _imports(name: str, path: Path, source: str | None = None) -> list[tuple[str, int]]:
    """(imported module, line) for every import in ``path`` (or in ``source``
    as if it were ``path``), relative to the package.  A name taken from the
    top package is an import of the module it comes from."""
    is_pkg = path.name == "__init__.py"
    pkg = [] if name == "__init__" else name.split(".") if is_pkg else name.split(".")[:-1]
    text = path.read_text() if source is None else source
    lazy = _lazy_names()
    out: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(text, str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
                full = "rainstorm." + mod if mod else "rainstorm"
            else:
                full = node.module or ""
            for alias in node.names:
                cand = f"{full}.{alias.name}"
                if cand.removeprefix("rainstorm.") in MODULES:
                    out.append((cand, node.lineno))
                elif full == "rainstorm" and alias.name in lazy:
                    out.append((lazy[alias.name], node.lineno))
                elif not (full == "rainstorm" and alias.name in TOP_OWN):
                    out.append((full, node.lineno))
        elif isinstance(node, ast.Import):
            out.extend((a.name, node.lineno) for a in node.names)
    return out


def _room(mod: str) -> str:
    return mod.split(".")[0]


def _layer(mod: str) -> int:
    room = _room(mod)
    for i, (_, rooms) in enumerate(LAYERS):
        if room in rooms:
            return i
    raise AssertionError(f"rainstorm.{mod} is in no layer: add its package to LAYERS")


def _edges_of(name: str, path: Path, source: str | None = None) -> list[tuple[str, str, int]]:
    """(module, imported rainstorm module, line) for the imports of one module."""
    edges = []
    for target, line in _imports(name, path, source):
        if target == "rainstorm":
            target = "rainstorm.__init__"
        if target.startswith("rainstorm."):
            t = target.removeprefix("rainstorm.")
            if t != name:
                edges.append((name, t, line))
    return edges


def _internal_edges() -> list[tuple[str, str, int]]:
    return [e for name, path in MODULES.items() for e in _edges_of(name, path)]


def _upward(edges: list[tuple[str, str, int]]) -> list[str]:
    """The edges that run up the layers, as messages."""
    return [f"rainstorm/{MODULES[src].relative_to(ROOT)}:{line} imports rainstorm.{dst} "
            f"({LAYERS[_layer(src)][0]} -> {LAYERS[_layer(dst)][0]})"
            for src, dst, line in edges if _layer(dst) > _layer(src)]


def test_every_module_has_a_layer() -> None:
    for name in MODULES:
        _layer(name)


def test_imports_point_down_the_layers() -> None:
    bad = _upward(_internal_edges())
    assert not bad, "imports running up the layers:\n" + "\n".join(bad)


@pytest.mark.parametrize("a,b", INDEPENDENT)
def test_independent_rooms(a: str, b: str) -> None:
    bad = [f"rainstorm.{s} imports rainstorm.{d}" for s, d, _ in _internal_edges()
           if {_room(s), _room(d)} == {a, b}]
    assert not bad, "\n".join(bad)


def test_operators_are_pure() -> None:
    bad = []
    for name, path in MODULES.items():
        banned = PURE.get(_room(name), ())
        for target, line in _imports(name, path):
            if any(target == b or target.startswith(b + ".") for b in banned):
                bad.append(f"rainstorm.{name}:{line} imports {target}")
    assert not bad, "operators must not touch Redis:\n" + "\n".join(bad)


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for src, dst, _ in _internal_edges():
        if dst in graph:
            graph[src].add(dst)
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_check_can_fail() -> None:
    """The cycle finder finds a planted cycle, and a planted upward import is seen."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]
    assert _layer("cli") > _layer("worker.loop") > _layer("operators.chain") > _layer("keys")


@pytest.mark.parametrize("planted,target", [
    ("from rainstorm import Dataset\n", "apps.dataset"),  # lazily loaded by rainstorm/__init__
    ("from rainstorm.apps.dataset import Dataset\n", "apps.dataset"),
    ("from ...apps import mapreduce\n", "apps.mapreduce"),
    ("import rainstorm\n", "__init__"),
    ("def f():\n    from rainstorm.cli import main\n", "cli"),
])
def test_a_planted_upward_import_is_reported(planted: str, target: str) -> None:
    """An ops module importing the applications, fed through the same
    edge-finding code as the real source, is reported."""
    name = "ops.dashboard.metrics"
    edges = _edges_of(name, MODULES[name], planted)
    assert [d for _, d, _ in edges] == [target]
    (bad,) = _upward(edges)
    assert f"imports rainstorm.{target}" in bad and "operations -> " in bad


def test_the_top_package_own_names_are_allowed() -> None:
    name = "worker.loop"
    assert _edges_of(name, MODULES[name], "from rainstorm import __version__\n") == []
    assert _edges_of(name, MODULES[name], "from rainstorm import keys\n") == \
        [(name, "keys", 1)]


def test_relative_imports_in_the_top_package() -> None:
    """Inside rainstorm/__init__.py, ``.`` is the package itself."""
    init = MODULES["__init__"]
    assert _imports("__init__", init, "from .apps.dataset import Dataset\n") == \
        [("rainstorm.apps.dataset", 1)]
    assert _imports("__init__", init, "from . import keys\n") == [("rainstorm.keys", 1)]
