"""Fixtures for the ACL and security tests: Valkey started with
docker-compose.yml's own command line (its password, the `worker` ACL user,
maxmemory), once per test module; loaded as a pytest plugin by
tests/conftest.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from rainstorm import lua
from tests.composefile import TEST_ENV, LocalRedis, load_compose, local_env

COMPOSE = load_compose(TEST_ENV)


def service_url(service: str, srv: LocalRedis) -> str:
    """The Redis URL the compose file gives ``service``, pointed at ``srv``."""
    return local_env(COMPOSE["services"][service], srv.port)["RAINSTORM_REDIS"]


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    server = LocalRedis(COMPOSE["services"]["redis"], tmp_path_factory.mktemp("compose-redis"))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def admin(srv: LocalRedis) -> Iterator[redis.Redis]:
    """The coordinator's connection (the compose file's default-user URL),
    on a flushed server with the library loaded."""
    client = redis.Redis.from_url(service_url("coordinator", srv))
    client.flushall()
    lua.load_library(client)
    yield client
    client.close()
