"""`--set key=value`: override spec fields without editing the file.

Keys are dotted paths into the spec (``settings.parallelism=4``,
``pipeline.1.args.pattern=^GET``, ``source.batch_bytes=65536``); values are
parsed as YAML scalars (``4`` is an int, ``true`` a bool, ``a,b`` a string).
The spec is validated after the overrides, so a bad value is reported with
the field's name like any other spec error.
"""

from __future__ import annotations

from typing import Any

import yaml

from rainstorm.errors import UsageError


def parse_assignment(text: str) -> tuple[list[str], Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"--set {text!r}: expected key=value, e.g. settings.parallelism=4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply(data: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """Return ``data`` with every ``key=value`` applied (lists by index)."""
    for text in assignments:
        path, value = parse_assignment(text)
        node: Any = data
        for i, part in enumerate(path):
            last = i == len(path) - 1
            where = ".".join(path[: i + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise UsageError(f"--set {text!r}: {where} is not an index of the list "
                                     f"(0..{len(node) - 1})")
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
            else:
                raise UsageError(f"--set {text!r}: {'.'.join(path[:i])} is not a mapping")
    return data
