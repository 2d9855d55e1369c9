"""Connecting to Redis from a URL, and checking that the server fits."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from rainstorm.errors import ServerError

log = logging.getLogger(__name__)

MIN_VERSION = (7, 0, 0)

# errors meaning "Redis is restarting, loading, or failing over": wait and retry
REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError)


def outage_backoff_s(waited_s: float) -> float:
    """How long to sleep before the next try, ``waited_s`` into an outage."""
    return min(0.05 * 2 ** min(waited_s, 5), 1.0)


SENTINEL_SCHEME = "redis+sentinel://"


def connect(url: str, *, retries: int = 2) -> redis.Redis:
    """A client for ``url``: redis://, rediss:// (TLS), unix://, each with an
    optional user:password@, or redis+sentinel://[user:password@]h1:p1,h2:p2/name
    to follow the primary that Sentinels name through failovers.

    Replies are bytes (payloads are binary).  A connection error is retried a
    couple of times here; longer outages are the callers' business (worker
    and coordinator loops wait them out), so a dead server is noticed fast.
    """
    retry = Retry(ExponentialBackoff(cap=0.25, base=0.05), retries)
    if url.startswith(SENTINEL_SCHEME):
        return _sentinel_client(url, retry)
    try:
        return redis.Redis.from_url(
            url,
            retry=retry,
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
            health_check_interval=30,
        )
    except ValueError as exc:
        raise ServerError(f"invalid Redis URL {url!r}: {exc}") from None


def _sentinel_client(url: str, retry: Retry) -> redis.Redis:
    parts = urlsplit(url)
    name = parts.path.strip("/")
    hosts = parts.netloc.rpartition("@")[2]
    try:
        nodes = [(h.rpartition(":")[0], int(h.rpartition(":")[2])) for h in hosts.split(",")]
    except ValueError:
        nodes = []
    if not name or not nodes or any(not h for h, _ in nodes):
        raise ServerError(
            f"invalid Sentinel URL {url!r}: expected redis+sentinel://host:port,host:port/name"
        )
    auth = {"username": unquote(parts.username) if parts.username else None,
            "password": unquote(parts.password) if parts.password else None}
    sentinel: Any = Sentinel(nodes, socket_timeout=2.0)  # type: ignore[no-untyped-call]
    client: redis.Redis = sentinel.master_for(
        name, retry=retry, retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        socket_timeout=10.0, **auth,
    )
    return client


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and logs)."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def parse_version(text: str) -> tuple[int, int, int]:
    parts = (text.split(".") + ["0", "0"])[:3]
    try:
        return (int(parts[0]), int(parts[1]), int(parts[2]))
    except ValueError:
        return (0, 0, 0)


def check_server(r: redis.Redis) -> str:
    """Refuse servers rainstorm cannot run on; return a short description."""
    try:
        info = r.info("server")
    except redis.AuthenticationError as exc:
        raise ServerError(f"Redis refused the credentials: {exc}") from None
    except redis.ConnectionError as exc:
        raise ServerError(f"cannot reach Redis: {exc}") from None
    name = "valkey" if "valkey_version" in info else "redis"
    version = str(info.get("valkey_version") or info.get("redis_version", "0"))
    if name == "redis" and parse_version(version) < MIN_VERSION:
        raise ServerError(
            f"Redis {version} is too old: rainstorm needs Redis >= 7.0 (FUNCTIONs, XAUTOCLAIM)"
        )
    try:
        policy = r.config_get("maxmemory-policy").get("maxmemory-policy", "noeviction")
    except redis.ResponseError:
        policy = "noeviction"  # CONFIG may be forbidden to this user
    if policy not in ("noeviction", b"noeviction"):
        raise ServerError(
            f"maxmemory-policy is {policy!r}: rainstorm needs 'noeviction' "
            "(an evicting Redis silently drops stream entries)"
        )
    return f"{name} {version}"
