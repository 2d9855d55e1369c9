"""Dataset.window(): tumbling and sliding event-time counts per key, against
plain Python over the same timestamped records (no record is late: the
watermark's delay covers the whole input, so the reference is exact)."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from rainstorm import Dataset


def user_of(line: str) -> str:
    return line.split()[0]


def ts_of(line: str) -> float:
    return float(line.split()[1])


@pytest.mark.parametrize("size, slide", [(10.0, None), (20.0, 5.0)])
def test_windowed_count_by_key(tmp_path: Path, size: float, slide: float | None) -> None:
    rng = random.Random(7)
    lines = [f"u{rng.randrange(5)} {rng.uniform(0, 200):.3f}" for _ in range(3000)]
    (tmp_path / "events.txt").write_text("\n".join(lines) + "\n")
    got = dict(Dataset.read_text(str(tmp_path / "events.txt"))
               .key_by(user_of)
               .window(size, slide_s=slide, time=ts_of, max_delay_s=1000)
               .count_by_key()
               .collect(workers=2, allow_modules=["tests"]))
    step = slide or size
    expected: Counter[str] = Counter()
    for line in lines:
        user, t = user_of(line), ts_of(line)
        start = (t // step) * step
        while start > t - size:  # every window [start, start + size) holding t
            expected[f"{start:g}|{user}"] += 1
            start -= step
    assert got == dict(expected)
