"""Connecting to Redis from a URL, and checking that the server fits."""

from __future__ import annotations

import logging

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from rainstorm.errors import ServerError

log = logging.getLogger(__name__)

MIN_VERSION = (7, 0, 0)


def connect(url: str, *, retries: int = 5) -> redis.Redis:
    """A client for ``url`` (redis://, rediss://, unix://; user:password allowed).

    Replies are bytes (payloads are binary).  Connection errors are retried
    with exponential backoff, so a short Redis restart is ridden out.
    """
    try:
        return redis.Redis.from_url(
            url,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
            health_check_interval=30,
        )
    except ValueError as exc:
        raise ServerError(f"invalid Redis URL {url!r}: {exc}") from None


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
