"""Connecting to Redis from a URL, and checking that the server fits."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from rainstorm.errors import ServerError, UsageError

log = logging.getLogger(__name__)

MIN_VERSION = (7, 0, 0)
T = TypeVar("T")

# start-up waits this long for an unreachable Redis (restarting, not up yet)
DEFAULT_CONNECT_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_ENV = "RAINSTORM_CONNECT_TIMEOUT"
CONNECT_HINT = f"wait longer with --connect-timeout SECONDS or {CONNECT_TIMEOUT_ENV}"
# a server that accepts the connection but does not answer the handshake in
# this long is not a usable Redis (an HTTP port, a stalled process)
HANDSHAKE_TIMEOUT_S = 5.0

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
    # called through Any: redis-py before 8.2 leaves Sentinel() untyped, 8.2 types it
    sentinel: Any = cast(Any, Sentinel)(nodes, socket_timeout=2.0)
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


def check_server(r: redis.Redis, where: str = "Redis") -> str:
    """Refuse servers rainstorm cannot run on; return a short description.

    A server that is down (refused, loading, timing out while connecting)
    raises one of REDIS_DOWN, for the caller to wait out (``open_checked``);
    every other problem is a ServerError naming it, on one line."""
    info = _handshake(r, where)
    name = "valkey" if "valkey_version" in info else "redis"
    version = str(info.get("valkey_version") or info.get("redis_version", "0"))
    if name == "redis" and info and parse_version(version) < MIN_VERSION:
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
    return f"{name} {version}" if info else f"{name} (version unknown: INFO not permitted)"


def _handshake(r: redis.Redis, where: str) -> dict[str, Any]:
    """INFO server (an empty dict if this user may not run INFO), with every
    answer that is not an outage turned into one ServerError line."""
    try:
        try:
            return dict(r.info("server"))
        except redis.exceptions.NoPermissionError:
            r.ping()  # a restricted user: logging in and answering is all we can check
            return {}
    except redis.AuthenticationError as exc:
        raise ServerError(f"{where} refused the credentials: {exc}") from None
    except redis.TimeoutError as exc:
        if "connecting" in str(exc):
            raise  # no answer to the connect itself: down or not up yet, wait
        raise ServerError(
            f"{where} accepted the connection but did not answer within "
            f"{HANDSHAKE_TIMEOUT_S:g} s: is it a Redis server (or a stopped one)?"
        ) from None
    except redis.exceptions.InvalidResponse as exc:
        raise ServerError(f"{where} does not speak the Redis protocol ({exc}): is the URL "
                          "pointing at a Redis server?") from None
    except redis.ResponseError as exc:
        raise ServerError(f"{where} refused the connection: {exc}") from None


def connect_timeout_s(given: float | None = None) -> float:
    """How long start-up waits for an unreachable Redis: ``given``, else
    $RAINSTORM_CONNECT_TIMEOUT, else DEFAULT_CONNECT_TIMEOUT_S (seconds)."""
    if given is not None:
        return max(given, 0.0)
    raw = os.environ.get(CONNECT_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_CONNECT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not value >= 0 or math.isinf(value):
        raise UsageError(f"{CONNECT_TIMEOUT_ENV} must be a number of seconds >= 0, got {raw!r}")
    return value


def wait_out_outage(fn: Callable[[], T], limit_s: float, what: str,
                    hint: str = CONNECT_HINT) -> T:
    """``fn()``, retried with backoff while Redis is down, for up to ``limit_s``
    seconds; then one ServerError line, ending in ``hint`` (what to do about
    it; "": nothing).  Wrong credentials are not waited out."""
    start = time.monotonic()
    warned = False
    while True:
        try:
            return fn()
        except redis.AuthenticationError as exc:
            raise ServerError(f"{what} refused the credentials: {exc}") from None
        except REDIS_DOWN as exc:
            waited = time.monotonic() - start
            if waited >= limit_s:
                raise ServerError(
                    f"cannot reach {what} (tried for {waited:.0f} s): {str(exc).rstrip('.')}"
                    + (f"; {hint}" if hint else "")) from None
            if not warned:
                warned = True
                log.warning("%s unavailable (%s); retrying for up to %.0f s", what, exc, limit_s)
            time.sleep(min(outage_backoff_s(waited), max(limit_s - waited, 0.01)))


def open_checked(url: str, *, wait_s: float | None = None) -> tuple[redis.Redis, str]:
    """``connect(url)`` after ``check_server`` accepted the server: returns the
    client and the server's description.

    The check runs on a probe client with HANDSHAKE_TIMEOUT_S socket timeouts,
    so a port that is not Redis fails within seconds.  A Redis that is down
    or not up yet is waited for, with backoff, up to ``wait_s`` seconds
    (default: ``connect_timeout_s()``), like the steady state rides out an
    outage; then it fails with one line."""
    r = connect(url)
    where = f"Redis at {redact(url)}"
    probe = _probe_client(url)
    try:
        desc = wait_out_outage(lambda: check_server(probe, where), connect_timeout_s(wait_s), where)
    finally:
        probe.close()
    return r, desc


def _probe_client(url: str) -> redis.Redis:
    if url.startswith(SENTINEL_SCHEME):
        return connect(url, retries=0)  # Sentinel clients have their own timeouts
    return redis.Redis.from_url(url, socket_timeout=HANDSHAKE_TIMEOUT_S,
                                socket_connect_timeout=HANDSHAKE_TIMEOUT_S,
                                retry=Retry(NoBackoff(), 0))
