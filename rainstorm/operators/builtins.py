"""Built-in record functions, usable by name from YAML specs.

Each takes the record (and keyword args from the spec's ``args``).  A
function may also offer a ``block`` variant that works on a whole decoded
text batch at once (``split_words``: ``text.split()`` equals splitting every
line), which the fused chain uses on stage 0 when it is the first operator.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from rainstorm.operators import csvops


def split_words(line: str) -> list[str]:
    """Exactly ``str.split()``: runs of whitespace separate words, no case folding."""
    return line.split()


def split_words_block(text: str) -> list[str]:
    return text.split()


def identity(record: Any) -> Any:
    return record


def lower(record: str) -> str:
    return record.lower()


def upper(record: str) -> str:
    return record.upper()


def strip(record: str) -> str:
    return record.strip()


def nonempty(record: Any) -> bool:
    return bool(record)


def length(record: Any) -> int:
    return len(record)


def first_char(record: str) -> str:
    return record[:1]


def one(_record: Any) -> int:
    return 1


def pair_key(record: Any) -> Any:
    return record[0]


def pair_value(record: Any) -> Any:
    return record[1]


def tab_key(line: str) -> str:
    """Hadoop streaming: the key is the text before the first tab."""
    return line.split("\t", 1)[0]


def tab_value(line: str) -> str:
    parts = line.split("\t", 1)
    return parts[1] if len(parts) > 1 else ""


def make_grep(pattern: str) -> Callable[[str], bool]:
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a string (a regular expression), got {pattern!r}")
    try:
        rx = re.compile(pattern)
    except (re.error, OverflowError, RecursionError) as exc:  # refused at validation
        raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None
    return lambda line: rx.search(line) is not None


def make_split(sep: str | None = None) -> Callable[[str], list[str]]:
    if sep is not None and (not isinstance(sep, str) or not sep):
        raise ValueError(f"sep must be a non-empty string (or absent: any whitespace), "
                         f"got {sep!r}")
    return lambda line: line.split(sep)


def make_const(value: Any) -> Callable[[Any], Any]:
    return lambda _record: value


# name -> (plain function, or factory taking the spec's args)
PLAIN: dict[str, Callable[..., Any]] = {
    "split_words": split_words,
    "identity": identity,
    "lower": lower,
    "upper": upper,
    "strip": strip,
    "nonempty": nonempty,
    "length": length,
    "first_char": first_char,
    "one": one,
    "pair_key": pair_key,
    "pair_value": pair_value,
    "tab_key": tab_key,
    "tab_value": tab_value,
}
FACTORIES: dict[str, Callable[..., Callable[..., Any]]] = {
    "grep": make_grep,
    "split": make_split,
    "const": make_const,
    "parse_csv": csvops.make_parse_csv,
    "select": csvops.make_select,
    "field": csvops.make_field,
    "equals": csvops.make_equals,
}
BLOCK: dict[str, Callable[[str], Iterable[Any]]] = {"split_words": split_words_block}


def names() -> list[str]:
    return sorted([*PLAIN, *FACTORIES])
