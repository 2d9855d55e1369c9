"""Shared fixtures: one real embedded server for the session, flushed per test."""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from rainstorm import lua
from rainstorm.local.server import EmbeddedRedis
from rainstorm.samples import generate_lines

ROOT = Path(__file__).resolve().parent.parent
pytest_plugins = ["tests.compose_redis"]  # srv, admin: Valkey with the compose file's ACL
os.environ.setdefault("RAINSTORM_ALLOW_MODULES", "tests")
# the spec-signing key of the suite: submit signs with it, spawned workers inherit it
os.environ.setdefault("RAINSTORM_SECRET", "rainstorm-test-suite-key-0123456789abcdef")


LEVELS = ("unit", "integration", "e2e")  # one per test, from its directory under tests/


def level_of(path: Path) -> str | None:
    """The level marker of a test file: the name of its directory under tests/."""
    try:
        parts = path.resolve().relative_to(ROOT / "tests").parts
    except ValueError:  # not under tests/
        return None
    return parts[0] if len(parts) > 1 and parts[0] in LEVELS else None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        level = level_of(item.path)
        if level is not None:
            item.add_marker(level)


@pytest.fixture(scope="session")
def server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as srv:
        yield srv


@pytest.fixture
def r(server: EmbeddedRedis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(server.url)
    client.flushall()
    lua.load_library(client)
    yield client
    client.flushall()
    client.close()


@pytest.fixture
def url(r: redis.Redis, server: EmbeddedRedis) -> str:
    """The server URL, with the database already flushed."""
    return server.url


def write_corpus(dir_: Path, n_files: int = 3, kb: int = 60, seed: int = 1) -> list[Path]:
    dir_.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n_files):
        p = dir_ / f"f{i}.txt"
        lines = generate_lines(kb * 1000, seed=seed + i)
        p.write_text("\n".join(lines) + "\n", encoding="utf-8")
        paths.append(p)
    return paths


def reference_wordcount(paths: list[Path]) -> Counter[str]:
    """Independent computation: Python's own str.split over each file."""
    c: Counter[str] = Counter()
    for p in paths:
        with open(p, encoding="utf-8", errors="replace", newline="") as fh:
            for line in fh:
                c.update(line.split())
    return c


@pytest.fixture
def corpus(tmp_path: Path) -> list[Path]:
    return write_corpus(tmp_path / "corpus")


@pytest.fixture
def rng() -> random.Random:
    return random.Random(1234)
