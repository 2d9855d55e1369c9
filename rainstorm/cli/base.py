"""What every command shares: the one-line errors and exit codes, the Redis
options (``--redis``, ``--connect-timeout``) as one object, and ``@shared``,
the one decorator that adds them."""

from __future__ import annotations

import functools
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click
import redis

from rainstorm.cli.show import printable
from rainstorm.errors import RainstormError
from rainstorm.procs import interrupt

F = TypeVar("F", bound=Callable[..., Any])


class Failure(click.ClickException):
    """A one-line error, exit status 1."""

    def show(self, file: Any = None) -> None:
        click.echo(printable(f"rainstorm: error: {self.message}"), err=True)


class UsageFailure(Failure):
    """A user mistake, exit status 2 (like click's own usage errors)."""

    exit_code = 2


class Incomplete(Failure):
    """The result is printed but misses dead-lettered input: exit status 3."""

    exit_code = 3

    def show(self, file: Any = None) -> None:
        click.echo(printable(f"rainstorm: {self.message}"), err=True)


def fail(message: str, code: int = 1) -> Failure:
    """The exception that prints ``message`` on one line and exits ``code``."""
    return {2: UsageFailure, 3: Incomplete}.get(code, Failure)(message)


@dataclass(frozen=True)
class RedisOptions:
    """``--redis URL`` (env RAINSTORM_REDIS) and ``--connect-timeout SECONDS``
    (None: env RAINSTORM_CONNECT_TIMEOUT, else the default)."""

    url: str | None = None
    connect_timeout_s: float | None = None

    def client(self) -> redis.Redis:
        """A checked client of ``url``, waiting for a Redis that is not up yet."""
        from rainstorm.connection import open_checked

        if not self.url:
            raise fail("no Redis given: pass --redis URL or set RAINSTORM_REDIS", 2)
        return open_checked(self.url, wait_s=self.connect_timeout_s)[0]


def _guarded(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(...)`` with RainstormError and Redis errors as one-line messages."""
    try:
        return fn(*args, **kwargs)
    except RainstormError as exc:
        raise fail(str(exc), exc.exit_code) from None
    except redis.AuthenticationError as exc:
        raise fail(f"Redis refused the credentials: {exc}") from None
    except redis.exceptions.NoPermissionError as exc:
        raise fail(f"the Redis user may not do this: {exc} (see the README's ACL "
                   "section)") from None
    except redis.ConnectionError as exc:
        raise fail(f"cannot reach Redis: {exc}") from None


_redis_url = click.option(
    "--redis", "redis_url", envvar="RAINSTORM_REDIS", metavar="URL",
    help="redis://[user:password@]host:port/db, rediss://…, unix:///path (env RAINSTORM_REDIS)",
)
_connect_timeout = click.option(
    "--connect-timeout", "connect_timeout_s", type=click.FloatRange(0), default=None,
    metavar="SECONDS",
    help="wait this long for a Redis that is down or not up yet, then fail "
         "(default 60; env RAINSTORM_CONNECT_TIMEOUT)",
)


def shared(*, redis: bool = True) -> Callable[[F], F]:
    """The decorator every command takes: errors become one line with an exit
    code; with ``redis``, the command also gets ``--redis`` and
    ``--connect-timeout``, passed to it as one ``conn: RedisOptions``."""

    def decorate(fn: F) -> F:
        if not redis:
            @functools.wraps(fn)
            def plain(*args: Any, **kwargs: Any) -> Any:
                return _guarded(fn, *args, **kwargs)

            return plain  # type: ignore[return-value]

        @functools.wraps(fn)
        def with_redis(*args: Any, redis_url: str | None = None,
                       connect_timeout_s: float | None = None, **kwargs: Any) -> Any:
            conn = RedisOptions(redis_url, connect_timeout_s)
            return _guarded(fn, *args, conn=conn, **kwargs)

        return _redis_url(_connect_timeout(with_redis))  # type: ignore[return-value]

    return decorate


# A signal handler: SIGTERM (and Ctrl-C) as KeyboardInterrupt, so ``finally``
# blocks clean up; recorded, so a loop that lost the exception still stops.
raise_interrupt = interrupt


def stop_on_signals() -> None:
    """SIGTERM and Ctrl-C raise KeyboardInterrupt (recorded, never lost), so
    that `finally` stops the embedded server and the workers."""
    signal.signal(signal.SIGTERM, raise_interrupt)
    signal.signal(signal.SIGINT, raise_interrupt)


json_option = click.option("--json", "as_json", is_flag=True, help="machine-readable output")
skip_bad_option = click.option(
    "--skip-bad-records", "skip_bad", is_flag=True, default=False,
    help="accept a result without the input that went to the dead-letter stream (a "
         "warning, exit 0; sets settings.skip_bad_records); without it such a batch job "
         "ends INCOMPLETE, exit status 3")
