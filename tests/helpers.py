"""Helpers for end-to-end tests: specs, worker processes, bounded waits."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from rainstorm import keys
from rainstorm.spec import JobSpec, parse_spec

ROOT = Path(__file__).resolve().parent.parent


def wordcount_spec(fn: str = "split_words", **settings: Any) -> JobSpec:
    batch_bytes = settings.pop("batch_bytes", 4096)
    return parse_spec({
        "name": "wc",
        "source": {"type": "text", "batch_bytes": batch_bytes},
        "pipeline": [{"op": "flat_map", "fn": fn}, {"op": "count"}],
        "settings": settings,
    })


def start_worker(url: str, job: str, **env: str) -> subprocess.Popen[bytes]:
    e = dict(os.environ, RAINSTORM_REDIS=url, RAINSTORM_ALLOW_MODULES="tests", **env)
    return subprocess.Popen(
        [sys.executable, "-m", "rainstorm", "worker", "--job", job, "--burst"],
        cwd=ROOT, env=e, stdin=subprocess.DEVNULL,
    )


def wait_for(cond: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.01) -> Any:
    """Poll ``cond`` until truthy; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(every_s)


def pending_of(r: redis.Redis, job: str, consumer: str, streams: list[str]) -> list[str]:
    ids: list[str] = []
    for s in streams:
        for row in r.xpending_range(s, keys.group(0), "-", "+", 1000, consumername=consumer):
            ids.append(row["message_id"].decode())
    return ids


def consumers_of(r: redis.Redis, stream: str, stage: int = 0) -> dict[str, int]:
    return {c["name"].decode(): c["pending"] for c in r.xinfo_consumers(stream, keys.group(stage))}


def counters(r: redis.Redis, job: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in r.hgetall(keys.counters(job)).items()}


def streaming_banner(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """(Redis URL, job id) from the first stderr line of `rainstorm run` of a
    streaming job ("streaming job <id> on <url>: runs until cancelled ...")."""
    assert proc.stderr is not None
    first = proc.stderr.readline()
    assert "streaming job" in first, first + proc.stderr.read()[-2000:]
    where = first.split(" on ", 1)[1].split(": runs until", 1)[0]
    return where, first.split()[2]
