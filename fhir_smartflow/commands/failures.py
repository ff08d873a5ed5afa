"""Ordinary failures a command meets, answered in one line with the exit code docs/cli.md promises.

The CLI group (``cli.SmartflowGroup``) hands any exception a command lets through to ``explain``: a type
registered in ``FAILURES`` becomes ``(line, exit code)``; anything else is a bug and keeps its traceback.
A command therefore raises ``ConfigError`` (or lets a Redis connection error through) instead of
catching and printing it itself.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import redis

from fhir_smartflow.config import ConfigError, Settings

USAGE = 2  # usage or configuration error, or a service the command needs cannot be reached

Explain = Callable[[Exception, Settings | None], str]


def _config(exc: Exception, _settings: Settings | None) -> str:
    return f"configuration error: {exc}"


def _redis(exc: Exception, settings: Settings | None) -> str:
    if settings is not None and settings.redis.sentinels:
        # redis-py appends the whole client (pool, options) to "No master found": keep the first part.
        detail = str(exc).split(" : ", 1)[0]
        return (
            f"Redis unreachable through the sentinels {', '.join(settings.redis.sentinels)} "
            f"({type(exc).__name__}: {detail}): start them, or fix [redis] sentinels (SMARTFLOW_REDIS_SENTINELS)"
        )
    where = f" at {redacted_url(settings.redis.url)}" if settings is not None and settings.redis.url else ""
    return (
        f"Redis unreachable{where} ({type(exc).__name__}: {exc}): start Redis, or fix [redis] url (SMARTFLOW_REDIS_URL)"
    )


# Exception type -> (its one line, exit code). Looked up along the exception's MRO, nearest first.
FAILURES: dict[type[Exception], tuple[Explain, int]] = {
    ConfigError: (_config, USAGE),
    redis.ConnectionError: (_redis, USAGE),
    redis.TimeoutError: (_redis, USAGE),
}


def explain(exc: Exception, settings: Settings | None) -> tuple[str, int] | None:
    """The one line and exit code for ``exc``, or None when it is not an ordinary failure."""
    for cls in type(exc).__mro__:
        entry = FAILURES.get(cls)
        if entry is not None:
            describe, code = entry
            return describe(exc, settings), code
    return None


def redacted_url(url: str) -> str:
    """``url`` without its password (``redis://:secret@host`` -> ``redis://:***@host``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
