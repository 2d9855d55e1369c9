"""The Dataset API with real worker processes: the default embedded server,
`rainstorm run script.py`; (results against plain Python run in-process:
tests/integration/test_dataset_in_process.py);
signed inline functions; forged or unsigned pickles dead-lettered, never run."""

from __future__ import annotations

import base64
import json
import os
import pickle
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis

from rainstorm import Dataset, keys, signing
from rainstorm.coordinator.progress import read_status
from rainstorm.errors import IncompleteResult, JobFailed, UsageError
from rainstorm.job import Job
from rainstorm.local.pool import LocalWorkers
from rainstorm.sources.inputs import resolve_inputs
from rainstorm.spec import parse_spec
from tests.conftest import write_corpus
from tests.helpers import ROOT, drive, submit

KEY = "e2e-dataset-secret-0123456789abcdef"
RUN: dict[str, Any] = {"workers": 2, "timeout_s": 60}


@pytest.fixture(autouse=True)
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAINSTORM_SECRET", KEY)
    monkeypatch.delenv("RAINSTORM_SECRET_FILE", raising=False)
    monkeypatch.delenv("RAINSTORM_REDIS", raising=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_corpus(tmp_path_factory.mktemp("dataset") / "corpus", n_files=3, kb=30)


def glob_of(files: list[Path]) -> str:
    return str(files[0].parent / "*.txt")


def words_of(files: list[Path]) -> list[str]:
    return [w for p in files for line in p.read_text(encoding="utf-8").split("\n")
            for w in line.split()]


def text(files: list[Path]) -> Dataset:
    return Dataset.read_text(glob_of(files), batch_bytes=4096)


def shout(word: str) -> str:
    """A module-level function of an importable module: sent as module:function."""
    return word.upper() + "!"


def test_default_is_an_embedded_server(files: list[Path]) -> None:
    assert text(files).flat_map(str.split).count(workers=1, timeout_s=60) == len(words_of(files))


def test_reduce_by_key_over_records_that_are_not_pairs_fails_naming_one(
        tmp_path: Path) -> None:
    """reduce_by_key straight over lines (a forgotten map to pairs), on the
    default embedded server: IncompleteResult naming the record and why, since
    that server (and `rainstorm dlq`) is gone when it is raised.  A line 'a b'
    was once taken for the pair ('a', ' '): a result, silently wrong."""
    f = tmp_path / "in.txt"
    f.write_text("a b\nc a\n")
    with pytest.raises(IncompleteResult) as err:
        Dataset.read_text(str(f)).with_settings(max_deliveries=1).reduce_by_key(
            lambda a, b: a + b).collect(**RUN)
    text = str(err.value)
    assert "result INCOMPLETE: 2 dead letters" in text and "\n" not in text, text
    assert "; the first: " in text and "expected a (key, value) pair, got str '" in text, text


# -- rainstorm run script.py --------------------------------------------------------

SCRIPT = '''
import json, sys
from rainstorm import Dataset

min_len = int(sys.argv[2])

def initial(w):  # defined in __main__: pickled by value
    return w[0]

counts = (Dataset.read_text(sys.argv[1], batch_bytes=4096).flat_map(str.split)
          .filter(lambda w: len(w) >= min_len).key_by(initial).count_by_key())
print("RESULT " + json.dumps(dict(counts.collect())))
'''


def test_rainstorm_run_script(files: list[Path], tmp_path: Path, url: str) -> None:
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("RAINSTORM_REDIS", "RAINSTORM_SECRET")}
    res = subprocess.run([sys.executable, "-m", "rainstorm", "run", str(script), "--workers", "2",
                          glob_of(files), "5"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env=dict(env, RAINSTORM_SECRET=KEY))
    assert res.returncode == 0, res.stderr
    out = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")]
    assert len(out) == 1
    assert json.loads(out[0][7:]) == Counter(w[0] for w in words_of(files) if len(w) >= 5)
    # without a key: on its embedded server, with its own random key
    res = subprocess.run([sys.executable, "-m", "rainstorm", "run", str(script),
                          glob_of(files), "5"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    again = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")]
    assert len(again) == 1 and json.loads(again[0][7:]) == json.loads(out[0][7:])  # any order
    # on a given Redis with remote workers only: the shared key is needed; one
    # line, exit status 2, nothing ran
    res = subprocess.run([sys.executable, "-m", "rainstorm", "run", str(script), "--redis", url,
                          "--workers", "0", glob_of(files), "5"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 2 and "RESULT" not in res.stdout
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "RAINSTORM_SECRET" in err[0], res.stderr


# -- the submitter without a key; forged and unsigned pickles on workers --------------

def test_missing_key_on_the_submitter_is_one_line(files: list[Path], url: str, r: redis.Redis,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAINSTORM_SECRET")
    threshold = 3
    ds = text(files).filter(lambda line: len(line) > threshold)
    with pytest.raises(UsageError) as info:
        ds.count(redis_url=url, **RUN)
    msg = str(info.value)
    assert "\n" not in msg and "RAINSTORM_SECRET" in msg and "module.function" not in msg
    assert msg.startswith("pipeline.0.fn (filter): ")
    assert r.dbsize() == 0  # nothing was submitted
    # an importable function needs no key
    assert text(files).flat_map(str.split).map(shout).count(redis_url=url, **RUN) == \
        len(words_of(files))


class _Touch:
    """Unpickling this creates a file: proof that a payload was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (Path(self.path),))


def _evil_fn(kind: str, marker: Path) -> str:
    payload = pickle.dumps(_Touch(marker))
    if kind == "unsigned":
        return "pickle:boom:" + base64.urlsafe_b64encode(payload).decode()
    if kind == "forged":  # valid base64, a MAC made with another key
        return signing.sign(payload, b"attacker-guess-0123456789", "boom")
    return signing.sign(payload, KEY.encode(), "boom")  # "no-key": right MAC, keyless workers


@pytest.mark.parametrize("kind, reason", [
    ("forged", "operator pipeline.0.fn: signature check failed (RAINSTORM_SECRET differs?)"),
    ("unsigned", "operator pipeline.0.fn: pickled function is not signed"),
])
def test_bad_pickles_are_dead_lettered_never_unpickled(
        files: list[Path], url: str, r: redis.Redis, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, kind: str, reason: str) -> None:
    marker = tmp_path / "unpickled"
    spec = parse_spec({"name": "evil", "source": {"type": "text", "batch_bytes": 4096},
                       "pipeline": [{"op": "map", "fn": _evil_fn(kind, marker)},
                                    {"op": "count"}]})
    job = Job.build(f"evil-{kind}", spec)
    submit(r, job, resolve_inputs([glob_of(files)]))  # directly: no submitter-side checks
    pool = LocalWorkers(2, url, job.id, ("tests",))
    try:
        result = drive(r, job, timeout_s=60)  # must not hang
    finally:
        pool.stop()
    assert result == {}
    assert not marker.exists()
    st = read_status(r, job)
    s0 = st.stages[0]
    assert s0.emitted > 0 and s0.dead == s0.emitted and s0.committed == 0
    dlq: Any = r.xrange(keys.dlq(job.id))
    assert len(dlq) == s0.emitted
    errors = {f[b"error"].decode() for _, f in dlq}
    assert len(errors) == 1 and next(iter(errors)).startswith(reason), errors
    assert not r.hkeys(keys.refusals(job.id))  # dead letters, not a refusal


def test_keyless_workers_refuse_the_job_and_unpickle_nothing(
        files: list[Path], url: str, r: redis.Redis, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers without a key cannot verify the spec's signature: they refuse the job."""
    marker = tmp_path / "unpickled"
    spec = parse_spec({"name": "evil", "source": {"type": "text", "batch_bytes": 4096},
                       "pipeline": [{"op": "map", "fn": _evil_fn("no-key", marker)},
                                    {"op": "count"}]})
    job = Job.build("evil-no-key", spec)
    submit(r, job, resolve_inputs([glob_of(files)]))
    monkeypatch.delenv("RAINSTORM_SECRET")  # the forked workers have no key
    pool = LocalWorkers(2, url, job.id, ("tests",))
    try:
        with pytest.raises(JobFailed, match="has no RAINSTORM_SECRET"):
            drive(r, job, timeout_s=60)
    finally:
        pool.stop()
    assert not marker.exists()
    assert read_status(r, job).stages[0].committed == 0


def test_reduce_function_signed_with_another_key_dead_letters_the_aggregate_stage(
        files: list[Path], url: str, r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = text(files).flat_map(str.split).key_by(len).repartition(2).reduce_by_key(
        lambda a, b: a + b)
    job = Job.build("evil-reduce", ds.spec())  # signed with KEY: the coordinator folds with it
    other = "another-worker-key-0123456789"
    # the spec itself signed with the workers' key (or they would refuse the job)
    submit(r, job, resolve_inputs([glob_of(files)]), key=other.encode())
    monkeypatch.setenv("RAINSTORM_SECRET", other)
    pool = LocalWorkers(2, url, job.id, ("tests",))  # forked with the other key
    monkeypatch.setenv("RAINSTORM_SECRET", KEY)
    try:
        assert drive(r, job, timeout_s=60) == {}
    finally:
        pool.stop()
    s0, s1 = read_status(r, job).stages
    assert s0.dead == 0 and s0.committed == s0.emitted > 0  # stage 0 ran: nothing pickled
    assert s1.emitted > 0 and s1.dead == s1.emitted and s1.committed == 0
    errors = {f[b"error"].decode() for _, f in r.xrange(keys.dlq(job.id))}  # type: ignore[union-attr]
    assert errors == {"operator pipeline.3.combiner: signature check failed "
                      "(RAINSTORM_SECRET differs?)"}


# -- the everyday API with worker processes (results read while the server runs) -------

def test_sort_by_and_part_files_with_worker_processes(files: list[Path], tmp_path: Path) -> None:
    words = words_of(files)
    ds = text(files).flat_map(str.split)
    assert ds.sort_by(lambda w: (-len(w), w), num_partitions=3).collect(**RUN) == \
        sorted(words, key=lambda w: (-len(w), w))
    out = tmp_path / "counts"
    ds.count_by_value().with_settings(state_partitions=3).save(out, parts=True, **RUN)
    assert sorted(os.listdir(out)) == ["_SUCCESS", "part-00000", "part-00001", "part-00002"]
    got = [json.loads(line) for p in out.glob("part-*") for line in p.read_text().splitlines()]
    assert dict(got) == Counter(words)
