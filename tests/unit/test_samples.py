"""The generated corpus: the same bytes whether its files are written one by
one or by several processes side by side."""

from __future__ import annotations

from pathlib import Path

from rainstorm.samples import generate_lines, write_corpus


def test_parallel_corpus_has_the_same_bytes(tmp_path: Path) -> None:
    one = write_corpus(tmp_path / "one", 0.2, files=3, seed=5)
    two = write_corpus(tmp_path / "two", 0.2, files=3, seed=5, jobs=2)
    assert [p.read_bytes() for p in one] == [p.read_bytes() for p in two]
    # file i is seed + i alone (an independent generation of the same text)
    want = "\n".join(generate_lines(int(0.2 * 1_000_000 / 3), 5 + 1)) + "\n"
    assert two[1].read_text(encoding="utf-8") == want
    assert len({p.read_bytes() for p in two}) == 3
