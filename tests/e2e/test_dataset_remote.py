"""A Dataset run on a given Redis with remote workers only (workers=0):
the script process coordinates, `rainstorm worker` processes compute,
inline functions travel signed."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from rainstorm import Dataset
from tests.conftest import reference_wordcount, write_corpus
from tests.helpers import stop_all, worker

KEY = "remote-dataset-secret-0123456789"


def test_remote_workers_only(tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAINSTORM_SECRET", KEY)
    paths = write_corpus(tmp_path / "in", n_files=2, kb=30)
    procs = [worker(url, RAINSTORM_SECRET=KEY) for _ in range(2)]  # elsewhere, in principle
    try:
        minimum = 3  # a closure: pickled and signed
        got = dict(Dataset.read_text(str(tmp_path / "in" / "*.txt"))
                   .flat_map(str.split)
                   .filter(lambda w: len(w) >= minimum)
                   .map(lambda w: (w, 1))
                   .reduce_by_key(lambda a, b: a + b)
                   .collect(redis_url=url, workers=0, timeout_s=60))
    finally:
        stop_all(procs)
    ref = reference_wordcount(paths)
    assert got == {w: n for w, n in ref.items() if len(w) >= minimum}
    assert Counter(got) != Counter()
