"""Operators used by the tests (imported by workers: allowlist 'tests')."""

from __future__ import annotations

import os
import time

POISON = "POISON"
HOLD = "HOLDLINE"


def slow_split(line: str) -> list[str]:
    """str.split, slowly: RAINSTORM_TEST_SLOW_MS per line (default 2)."""
    time.sleep(float(os.environ.get("RAINSTORM_TEST_SLOW_MS", "2")) / 1000)
    return line.split()


def boom_on_poison(line: str) -> list[str]:
    if POISON in line:
        raise ValueError(f"poisoned line: {line[:40]!r}")
    return line.split()


def swap_case_key(pair: tuple[str, str]) -> tuple[str, str]:
    key, word = pair
    return key.swapcase(), word


def dedupe_batch(records: list[str]) -> list[str]:
    """A map_partitions function: the batch's distinct records, in order."""
    return list(dict.fromkeys(records))


def lower_words(line: str) -> list[str]:
    return line.lower().split()


def wc_map(line: str) -> list[tuple[str, int]]:
    return [(w, 1) for w in line.split()]


def wc_reduce(key: str, values: list[int]) -> list[str]:
    return [f"{key}\t{sum(int(v) for v in values)}"]


def wc_map_boom_on_poison(line: str) -> list[tuple[str, int]]:
    """wc_map, raising on a line that holds POISON (its entry is dead-lettered)."""
    if POISON in line:
        raise ValueError(f"poisoned line: {line[:40]!r}")
    return wc_map(line)


def wc_reduce_boom_on_poison(key: str, values: list[int]) -> list[str]:
    """wc_reduce, raising on the key POISON (its partition is dead-lettered)."""
    if key == POISON:
        raise ValueError("poisoned key")
    return wc_reduce(key, values)


def slow_wc_reduce(key: str, values: list[int]) -> list[str]:
    time.sleep(0.002)
    return wc_reduce(key, values)


def wc_combine(key: str, values: list[int]) -> list[int]:
    """A combiner: a batch's ones for a word become one partial count."""
    return [sum(int(v) for v in values)]


def flaky_split(line: str) -> list[str]:
    """str.split, except: a line containing HOLD waits (at most 60 s) while
    the file $RAINSTORM_TEST_HOLD exists, and a line containing POISON raises
    while the file $RAINSTORM_TEST_POISON exists (the cause 'fixed' = removed)."""
    if HOLD in line:
        deadline = time.monotonic() + 60
        while os.path.exists(os.environ.get("RAINSTORM_TEST_HOLD", "/nonexistent")):
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
    if POISON in line and os.path.exists(os.environ.get("RAINSTORM_TEST_POISON", "/none")):
        raise ValueError(f"poisoned line: {line[:40]!r}")
    return line.split()


def slow_user(record: dict[str, str]) -> str:
    """A key function: record['user'], slowly (RAINSTORM_TEST_SLOW_MS per record, default 2)."""
    time.sleep(float(os.environ.get("RAINSTORM_TEST_SLOW_MS", "2")) / 1000)
    return record["user"]


def slow_pair(record: tuple[object, object]) -> tuple[object, object]:
    """The record, slowly: RAINSTORM_TEST_SLOW_MS per record (default 2)."""
    time.sleep(float(os.environ.get("RAINSTORM_TEST_SLOW_MS", "2")) / 1000)
    return record


def wc_map_text_values(line: str) -> list[tuple[str, str]]:
    """A mapper whose values are not numbers (``--combiner sum`` refuses them)."""
    return [(w, "one") for w in line.split()]


def chatty_split(line: str) -> list[str]:
    """split_words that prints every line it gets, as debugging code does."""
    print(f"chatty: {line[:20]}")
    return line.split()


def as_list_key(line: str) -> list[str]:
    """A key_by function that returns a list: no record can be counted (unhashable)."""
    return [line]


def wc_reduce_pairs(key: str, values: list[int]) -> list[tuple[str, int]]:
    """wc_reduce's total as a (key, total) pair: written as ``key<TAB>total``."""
    return [(key, sum(int(v) for v in values))]


def total_and_calls(key: str, values: list[int]) -> list[str]:
    """A reducer saying how many values it was given along with their sum."""
    return [f"{key}\t{sum(values)}\t{len(values)}"]
