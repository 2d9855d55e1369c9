"""Remote inputs (URLs in source.paths, read through fsspec) against a real
HTTP server started here (tests/http_files.py) and the real Redis: a word
count over URLs with both transports equals collections.Counter over the
same files; splits are ranged reads, lines crossing split boundaries
counted once; a server without Range support falls back to bytes (auto) or
is refused (split); a file changed on the server after submit is
dead-lettered naming it; every mistake is one UsageError line."""

from __future__ import annotations

import json
import math
import os
import socket
from collections import Counter
from pathlib import Path

import pytest
import redis

from rainstorm import keys
from rainstorm.errors import UsageError
from rainstorm.local.run import RunOptions, prepare
from rainstorm.monitor.deadletters import dead_letters
from rainstorm.sources.inputs import resolve_inputs
from rainstorm.sources.remote import RemoteFile
from rainstorm.testing import run_in_process
from rainstorm.worker import Worker, WorkerOptions
from rainstorm.worker.loop import BURST_OVER
from tests.conftest import reference_wordcount, write_corpus
from tests.helpers import Driven, counters, submit, wordcount_spec
from tests.http_files import serving


def _corpus(root: Path) -> list[Path]:
    paths = write_corpus(root / "data", n_files=3, kb=12)
    # no trailing newline, a CRLF line, a line longer than a split
    (root / "data" / "odd.txt").write_bytes(b"x y\r\n" + b"long " * 500 + b"\nlast no newline")
    return [*paths, root / "data" / "odd.txt"]


@pytest.mark.parametrize("transport", ["auto", "split", "bytes"])
def test_wordcount_over_http_urls_equals_counter(url: str, tmp_path: Path,
                                                 transport: str) -> None:
    paths = _corpus(tmp_path)
    with serving(tmp_path) as srv:
        urls = [f"{srv.url}/data/{p.name}" for p in paths]
        spec = wordcount_spec(batch_bytes=1024, parallelism=2)
        spec = spec.model_copy(update={"source": spec.source.model_copy(
            update={"transport": transport})})
        report = run_in_process(spec, RunOptions(redis_url=url, workers=2, inputs=tuple(urls),
                                                 job_id=f"http-{transport}"))
        ranged = srv.ranged
    assert Counter(report.result) == reference_wordcount(paths)
    assert report.status.total_bytes == sum(p.stat().st_size for p in paths)
    stored = json.loads(redis.Redis.from_url(url).get(keys.spec(report.job_id)) or b"{}")
    chosen = "bytes" if transport == "bytes" else "split"
    assert stored["source"]["transport"] == chosen  # auto: split, as workers reach URLs
    splits = sum(math.ceil(p.stat().st_size / 1024) for p in paths)
    if chosen == "split":  # one ranged read per split, a few more for lines past its end
        assert splits <= ranged <= 3 * splits
    else:
        assert ranged == 0  # the coordinator streamed each file once


def test_a_directory_url_and_a_file_url_resolve_with_version_markers(tmp_path: Path) -> None:
    paths = _corpus(tmp_path)
    (tmp_path / "data" / ".hidden").write_text("never\n")
    with serving(tmp_path) as srv:
        listed = resolve_inputs([f"{srv.url}/data/", f"{srv.url}/data/odd.txt"])
    assert all(isinstance(f, RemoteFile) for f in listed)
    assert [str(f) for f in listed] == [f"{srv.url}/data/{p.name}" for p in sorted(paths)]
    for f, p in zip(listed, sorted(paths), strict=True):
        assert isinstance(f, RemoteFile)
        assert f.size == p.stat().st_size and f"{p.stat().st_mtime_ns}" in f.version
        assert f.version_id > 0


def test_memory_and_file_urls_glob_and_list_directories(url: str, tmp_path: Path) -> None:
    """Any fsspec filesystem: memory:// (in this process, where the
    in-process workers run) globbed and listed, file:// read by splits."""
    import fsspec

    mem = fsspec.filesystem("memory")
    lines = ["the cat sat", "on the mat", "the end"]
    for i, line in enumerate(lines):
        mem.pipe_file(f"/rs-test/in/part-{i}.txt", (line + "\n").encode())
    mem.pipe_file("/rs-test/in/sub/deep.txt", b"deep words\n")
    try:
        spec = wordcount_spec(batch_bytes=1024)
        glob = run_in_process(spec, RunOptions(redis_url=url, inputs=(
            "memory://rs-test/in/part-*.txt",), job_id="mem-glob"))
        assert Counter(glob.result) == Counter(" ".join(lines).split())
        tree = run_in_process(spec, RunOptions(redis_url=url, inputs=("memory://rs-test/in",),
                                               job_id="mem-dir"))
        assert Counter(tree.result) == Counter(" ".join([*lines, "deep words"]).split())
    finally:
        mem.rm("/rs-test", recursive=True)
    paths = _corpus(tmp_path)
    local = run_in_process(wordcount_spec(batch_bytes=1024), RunOptions(
        redis_url=url, inputs=(f"file://{tmp_path}/data",), job_id="file-url"))
    assert Counter(local.result) == reference_wordcount(sorted(paths))


def test_a_server_without_range_support_is_read_once_by_the_coordinator(
        url: str, tmp_path: Path) -> None:
    paths = _corpus(tmp_path)
    with serving(tmp_path, ranges=False) as srv:
        urls = tuple(f"{srv.url}/data/{p.name}" for p in paths)
        report = run_in_process(wordcount_spec(batch_bytes=1024),
                                RunOptions(redis_url=url, inputs=urls, job_id="norange"))
        assert Counter(report.result) == reference_wordcount(paths)
        stored = json.loads(redis.Redis.from_url(url).get(keys.spec(report.job_id)) or b"{}")
        assert stored["source"]["transport"] == "bytes"
        assert srv.gets <= len(paths) + 1  # one GET per file (and the probe)
        told = wordcount_spec().model_copy(update={"source": wordcount_spec().source.model_copy(
            update={"transport": "split"})})
        with pytest.raises(UsageError, match="ignores; use transport: bytes") as err:
            prepare(told, list(urls), "norange-split")
        assert "\n" not in str(err.value)


def test_remote_mistakes_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAINSTORM_URL_TIMEOUT_S", "1")
    (tmp_path / "a.txt").write_text("a\n")
    silent = socket.socket()  # accepts connections, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    with serving(tmp_path) as srv, silent:
        dead_port = _free_port()
        cases = {
            f"{srv.url}/missing.txt": f"input URL not found: {srv.url}/missing.txt",
            f"{srv.url}/*.csv": "input glob matches no file",
            f"http://127.0.0.1:{dead_port}/a.txt": "Cannot connect to host",
            f"http://127.0.0.1:{silent.getsockname()[1]}/a.txt": "no answer within 1 s",
            "nosuch://bucket/a.txt": "unknown scheme nosuch://",
            "s3://bucket/a.txt": "needs s3fs (pip install s3fs)",
        }
        for bad, want in cases.items():
            if bad.startswith("s3://") and _installed("s3fs"):
                continue
            with pytest.raises(UsageError) as err:
                prepare(wordcount_spec(), [bad], "bad")
            assert want in str(err.value) and "\n" not in str(err.value), (bad, err.value)


def test_a_file_changed_on_the_server_after_submit_is_dead_lettered(
        r: redis.Redis, tmp_path: Path) -> None:
    paths = write_corpus(tmp_path / "data", n_files=2, kb=10)
    with serving(tmp_path) as srv:
        urls = [f"{srv.url}/data/{p.name}" for p in paths]
        job, files = prepare(wordcount_spec(batch_bytes=4096, skip_bad_records=True), urls,
                             "changed-url")
        assert job.splits
        submit(r, job, files)
        size = paths[1].stat().st_size
        text = paths[1].read_bytes()  # rewritten in place, same size: only the ETag tells
        paths[1].write_bytes(text.replace(b"a", b"b").replace(b"e", b"a"))
        os.utime(paths[1], ns=(1, 1))
        assert paths[1].stat().st_size == size
        driven = Driven(r, job, timeout_s=60)
        assert Worker(r, WorkerOptions(job=job.id, block_ms=10)).run(burst=True) == BURST_OVER
        result = Counter(driven.result(60))
    assert result == reference_wordcount(paths[:1])  # never mixed: the changed file not read
    dead = dead_letters(r, job.id, None)
    assert len(dead) == math.ceil(size / 4096)  # each of its splits, once
    want = f"input {urls[1]} changed after submit (its version is now ETag="
    assert all(want in d.error and "\n" not in d.error for d in dead), dead[0].error
    assert {d.uid.split(":")[0] for d in dead} == {"1"}
    assert counters(r, job.id).stage(0).dead_letters == len(dead)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
