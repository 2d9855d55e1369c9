"""File sources loaded as splits, against the real server: the loader adds
small descriptors (no input byte goes through Redis), workers read the
ranges, the result is exact; a file changed after submit is dead-lettered
with a reason naming it."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
import redis

from rainstorm import keys
from rainstorm.local.run import RunOptions, prepare
from rainstorm.monitor.deadletters import dead_letters
from rainstorm.protocol.counters import StageCounter
from rainstorm.protocol.entries import SPLIT_MAGIC, data_of, split_of, uid_of
from rainstorm.sources.loader import Loader
from rainstorm.spec import parse_spec
from rainstorm.testing import run_in_process
from rainstorm.worker import Worker, WorkerOptions
from rainstorm.worker.loop import BURST_OVER
from tests.conftest import reference_wordcount, write_corpus
from tests.helpers import Driven, counters, submit, wait_for, wordcount_spec


def test_the_loader_adds_descriptors_and_workers_count_exactly(r: redis.Redis,
                                                               tmp_path: Path) -> None:
    paths = write_corpus(tmp_path / "in", n_files=3, kb=40)
    (tmp_path / "in" / "empty.txt").write_bytes(b"")
    inputs = [str(p) for p in paths] + [str(tmp_path / "in" / "empty.txt")]
    job, files = prepare(wordcount_spec(batch_bytes=4096, parallelism=2), inputs, "splits",
                         shared_fs=True)
    assert job.splits
    submit(r, job, files)
    loader = Loader(r, job)
    wait_for(lambda: loader.step().done, 10, "the loader to finish")
    rows = [f for st in job.streams(0) for _, f in r.xrange(st)]
    sizes = [p.stat().st_size for p in paths]
    assert len(rows) == sum(math.ceil(s / 4096) for s in sizes)
    for f in rows:
        payload = data_of(f)
        assert payload.startswith(SPLIT_MAGIC) and len(payload) < 64
        split = split_of(payload)
        assert split is not None and uid_of(f).decode() == split.uid
    assert counters(r, job.id).stage(0).loaded_bytes == sum(sizes)  # progress as with bytes
    driven = Driven(r, job, timeout_s=60)
    assert Worker(r, WorkerOptions(job=job.id, block_ms=10)).run(burst=True) == BURST_OVER
    assert Counter(driven.result(60)) == reference_wordcount(paths)
    assert counters(r, job.id).stage(0).bytes_in == sum(sizes)


def test_a_file_changed_after_submit_is_dead_lettered_naming_it(r: redis.Redis,
                                                                tmp_path: Path) -> None:
    paths = write_corpus(tmp_path / "in", n_files=2, kb=10)
    job, files = prepare(wordcount_spec(batch_bytes=4096, skip_bad_records=True),
                         [str(p) for p in paths], "changed", shared_fs=True)
    submit(r, job, files)
    size_then = paths[1].stat().st_size
    with paths[1].open("a") as fh:  # appended to after submit
        fh.write("late words\n")
    driven = Driven(r, job, timeout_s=60)
    assert Worker(r, WorkerOptions(job=job.id, block_ms=10)).run(burst=True) == BURST_OVER
    result = Counter(driven.result(60))
    assert result == reference_wordcount(paths[:1])  # never mixed: the changed file not read
    dead = dead_letters(r, job.id, None)
    assert len(dead) == math.ceil(size_then / 4096)  # each of its splits, once
    want = f"input {paths[1]} changed after submit ("
    assert all(want in d.error and "\n" not in d.error for d in dead), dead[0].error
    assert {d.uid.split(":")[0] for d in dead} == {"1"}
    assert counters(r, job.id).stage(0).dead_letters == len(dead)


def test_in_process_runs_use_splits(r: redis.Redis, url: str, tmp_path: Path) -> None:
    """rainstorm.testing's workers share our filesystem: auto is split."""
    p = tmp_path / "t.txt"
    p.write_text("a b\r\nb é\n\n" + "long " * 400 + "\nlast line no newline")
    spec = parse_spec({"name": "t", "source": {"paths": [str(p)], "batch_bytes": 1024},
                       "pipeline": [{"op": "flat_map", "fn": "split_words"}, {"op": "count"}]})
    report = run_in_process(spec, RunOptions(redis_url=url, workers=2))
    want = Counter("a b b é last line no newline".split() + ["long"] * 400)
    assert Counter(report.result) == want
    assert report.status.total_bytes == p.stat().st_size
    stored = json.loads(r.get(keys.spec(report.job_id)) or b"{}")
    assert stored["source"]["transport"] == "split"


def test_a_stage0_text_entry_in_a_split_job_is_read_as_text(r: redis.Redis,
                                                            tmp_path: Path) -> None:
    """A requeued dead text record is raw text, not a descriptor: it runs."""
    p = tmp_path / "t.txt"
    p.write_text("x y\n")
    job, files = prepare(wordcount_spec(), [str(p)], "mixed", shared_fs=True)
    submit(r, job, files)
    stream = job.streams(0)[0]
    r.xadd(stream, {"u": "requeued-1", "d": "z z\n"})
    r.hincrby(keys.counters(job.id), keys.counter_field(0, StageCounter.EMITTED), 1)
    driven = Driven(r, job, timeout_s=60)
    assert Worker(r, WorkerOptions(job=job.id, block_ms=10)).run(burst=True) == BURST_OVER
    assert Counter(driven.result(60)) == Counter({"x": 1, "y": 1, "z": 2})


def test_a_commit_above_the_soft_size_is_split_and_later_batches_shrink(
        r: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Distinct keys only (each 4 KiB split commits a delta of about its own
    size): with an 8 KiB soft cap and 8 entries a batch, the first batch is
    committed in parts (recomputed), the next ones read fewer entries; no
    commit of several entries is above the cap, and the count is exact."""
    from rainstorm import lua
    from rainstorm.worker import step

    monkeypatch.setattr(step, "COMMIT_SOFT_BYTES", 8192)
    sizes: list[tuple[int, int]] = []
    real_commit = lua.commit

    def observed(r_: redis.Redis, req: lua.CommitRequest) -> lua.CommitResult:
        sizes.append((len(req.inputs), lua.commit_size(req)))
        return real_commit(r_, req)

    monkeypatch.setattr(step.lua, "commit", observed)  # (the real call, sizes noted)
    src = tmp_path / "in"
    src.mkdir()
    words = [f"id{i:07d}" for i in range(12_000)]  # 120 KB: ~30 splits of distinct keys
    (src / "ids.txt").write_text("\n".join(words) + "\n")
    job, files = prepare(wordcount_spec(batch_bytes=4096, batch_entries=8), [str(src / "ids.txt")],
                         "softcap", shared_fs=True)
    submit(r, job, files)
    driven = Driven(r, job, timeout_s=60)
    assert Worker(r, WorkerOptions(job=job.id, block_ms=10)).run(burst=True) == BURST_OVER
    assert Counter(driven.result(60)) == Counter(words)
    assert sizes and all(size <= 8192 for n, size in sizes if n > 1), sizes
    assert max(n for n, _ in sizes) < 8 and len(sizes) >= 30, sizes  # split, then shrunk


def _observe(monkeypatch: pytest.MonkeyPatch, cap: int
             ) -> tuple[list[tuple[int, int]], list[int]]:
    """The soft cap set to ``cap``; (inputs, bytes) of every commit call and
    the number of entries of every computation, noted as they happen."""
    from rainstorm import lua
    from rainstorm.worker import batch, step

    monkeypatch.setattr(step, "COMMIT_SOFT_BYTES", cap)
    commits: list[tuple[int, int]] = []
    computed: list[int] = []
    real_commit, real_build = lua.commit, batch.StageRunner.build

    def observed(r_: redis.Redis, req: lua.CommitRequest) -> lua.CommitResult:
        commits.append((len(req.inputs), lua.commit_size(req)))
        return real_commit(r_, req)

    def build(self: batch.StageRunner, entries: list[batch.Entry], *a: object, **kw: object
              ) -> lua.CommitRequest:
        computed.append(len(entries))
        return real_build(self, entries, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(step.lua, "commit", observed)  # (the real calls, sizes noted)
    monkeypatch.setattr(batch.StageRunner, "build", build)
    return commits, computed


def test_a_large_batch_entries_starts_small_and_grows_only_with_room(
        r: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """batch_entries 32 over splits whose words repeat (a commit's delta
    hardly grows with its entries): the first batch reads FIRST_ENTRIES, later
    ones grow while their commits stay under half the cap; no entry is
    computed twice and the count is exact.  Over splits of distinct ids
    (each delta as large as its split) with the same cap, no commit of several
    entries is above the cap, and only the first batch is computed a second
    time (in parts of the size its commit showed fit, not in halves).  (8 state
    partitions: a commit's fixed part, ~270 bytes of keys and tokens per
    partition, stays small beside the 16 KB cap.)"""
    from rainstorm.worker import step

    commits, computed = _observe(monkeypatch, 16384)
    src = tmp_path / "in"
    src.mkdir()
    lines = [" ".join(f"w{(i * 7 + j) % 40}" for j in range(20)) for i in range(3000)]
    (src / "words.txt").write_text("\n".join(lines) + "\n")  # ~300 KB: ~75 splits
    job, files = prepare(wordcount_spec(batch_bytes=4096, batch_entries=32, state_partitions=8),
                         [str(src / "words.txt")], "grows", shared_fs=True)
    submit(r, job, files)
    driven = Driven(r, job, timeout_s=60)
    assert Worker(r, WorkerOptions(job=job.id, block_ms=10)).run(burst=True) == BURST_OVER
    assert Counter(driven.result(60)) == Counter(w for ln in lines for w in ln.split())
    assert commits[0][0] <= step.FIRST_ENTRIES < max(n for n, _ in commits), commits
    assert sum(computed) == sum(n for n, _ in commits), (computed, commits)  # none twice

    commits.clear()
    computed.clear()
    ids = [f"id{i:07d}" for i in range(20_000)]  # ~200 KB of distinct keys: ~50 splits
    (src / "ids.txt").write_text("\n".join(ids) + "\n")
    job, files = prepare(wordcount_spec(batch_bytes=4096, batch_entries=32, state_partitions=8),
                         [str(src / "ids.txt")], "dense", shared_fs=True)
    submit(r, job, files)
    driven = Driven(r, job, timeout_s=60)
    assert Worker(r, WorkerOptions(job=job.id, block_ms=10)).run(burst=True) == BURST_OVER
    assert Counter(driven.result(60)) == Counter(ids)
    assert all(size <= 16384 for n, size in commits if n > 1), commits
    # only the first batch (FIRST_ENTRIES read from each of the 2 streams,
    # run FIRST_ENTRIES at a time) is computed a second time, in parts
    assert sum(computed) <= sum(n for n, _ in commits) + step.FIRST_ENTRIES, repr(computed)
