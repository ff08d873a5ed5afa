"""The object graph of one process (serve, worker), built from `Settings`.

rq job functions get their collaborators from `current()`; the worker (or `serve` with its embedded
worker) calls `install()` once at start. Nothing else is global. The lead adds fields (FHIR client,
engine, scheduler, ...) as those parts land.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import redis
import rq

from fhir_smartflow.config import Settings, load_settings
from fhir_smartflow.connections import Keys, connect
from fhir_smartflow.engine.interfaces import Dispatcher
from fhir_smartflow.ingest.queueing import make_queue
from fhir_smartflow.ingest.seams import (
    GapRecovery,
    LoggingGapRecovery,
    PassThroughFetcher,
    RecordingDispatcher,
    ResourceFetcher,
)
from fhir_smartflow.metrics import Metrics


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Runtime:
    settings: Settings
    redis: redis.Redis
    keys: Keys
    metrics: Metrics
    queue: rq.Queue
    dispatcher: Dispatcher
    fetcher: ResourceFetcher
    gap_recovery: GapRecovery
    clock: Callable[[], datetime] = utc_now


def build_runtime(
    settings: Settings,
    redis_conn: redis.Redis | None = None,
    *,
    dispatcher: Dispatcher | None = None,
    fetcher: ResourceFetcher | None = None,
    gap_recovery: GapRecovery | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> Runtime:
    """Build the runtime; anything not given gets its default (recording dispatcher, pass-through fetch)."""
    conn = redis_conn if redis_conn is not None else connect(settings)
    prefix = settings.redis.key_prefix
    return Runtime(
        settings=settings,
        redis=conn,
        keys=Keys(prefix),
        metrics=Metrics(conn, prefix),
        queue=make_queue(conn, settings.redis.queue, prefix),
        dispatcher=dispatcher or RecordingDispatcher(conn, prefix),
        fetcher=fetcher or PassThroughFetcher(),
        gap_recovery=gap_recovery or LoggingGapRecovery(),
        clock=clock,
    )


_lock = threading.Lock()
_installed: Runtime | None = None


def install(rt: Runtime | None) -> None:
    """Make ``rt`` the process's runtime (None uninstalls; tests do that)."""
    global _installed
    with _lock:
        _installed = rt


def current() -> Runtime:
    """The installed runtime; a plain `rq worker` without our command builds one from the config."""
    global _installed
    with _lock:
        if _installed is None:
            _installed = build_runtime(load_settings())
        return _installed
