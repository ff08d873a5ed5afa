"""The object graph of one process (serve, worker, scheduler), built from `Settings`.

rq job functions get their collaborators from `current()`; the worker (or `serve` with its embedded
worker) calls `install()` once at start; in a plain `rq worker` the first job builds the service runtime
from the config. Nothing else is global.

`build_runtime` builds the ingest core with stand-ins (recording dispatcher, pass-through fetch);
`build_service_runtime` builds the whole service: FHIR client, write-back target, engine, executor,
deliverer, scheduler and run history, with the engine pipeline as the dispatcher.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
import rq

from fhir_smartflow.config import ConfigError, Settings, load_settings
from fhir_smartflow.connections import Keys, connect
from fhir_smartflow.engine.interfaces import Deliverer, Dispatcher, PriorState, WriteBackTarget
from fhir_smartflow.metrics import Metrics
from fhir_smartflow.queueing import queue_for
from fhir_smartflow.worker.seams import (
    GapRecovery,
    LoggingGapRecovery,
    PassThroughFetcher,
    RecordingDispatcher,
    ResourceFetcher,
)

log = logging.getLogger(__name__)


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
    # The full service (build_service_runtime); None in the ingest-only runtime.
    fhir: Any = None  # FhirClient
    target: WriteBackTarget | None = None
    engine: Any = None  # engine.model.Engine
    prior: PriorState | None = None
    scheduler: Any = None  # scheduling.scheduler.RqScheduler
    deliverer: Deliverer | None = None
    executor: Any = None  # engine.execute.PlanExecutor
    history: Any = None  # history.RunHistory

    @property
    def context(self) -> Any:
        """A fresh per-use caching ContextSource over the FHIR client (reads for planning)."""
        from fhir_smartflow.worker.context import CachingContextSource

        return CachingContextSource(self.fhir) if self.fhir is not None else self.target


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
        queue=queue_for(conn, settings.redis),
        dispatcher=dispatcher or RecordingDispatcher(conn, prefix),
        fetcher=fetcher or PassThroughFetcher(),
        gap_recovery=gap_recovery or LoggingGapRecovery(),
        clock=clock,
    )


def build_service_runtime(settings: Settings, redis_conn: redis.Redis | None = None) -> Runtime:
    """The whole service for one process; ``[engine] dispatch = "record"`` keeps the ingest-only core."""
    from smartflow_channels.base import load_channels

    from fhir_smartflow.delivery.deliverer import ChannelDeliverer
    from fhir_smartflow.fhir.client import FhirClient
    from fhir_smartflow.flowfiles import load_engine
    from fhir_smartflow.scheduling.scheduler import build_scheduler
    from fhir_smartflow.worker.context import CachingContextSource, ClientResourceFetcher, StaticCache
    from fhir_smartflow.worker.execute import PlanExecutor
    from fhir_smartflow.worker.pipeline import EnginePipeline
    from fhir_smartflow.worker.prior import RedisPriorState
    from fhir_smartflow.worker.recovery import ClientGapRecovery

    conn = redis_conn if redis_conn is not None else connect(settings)
    core = build_runtime(settings, conn)
    if settings.engine.dispatch == "record":
        return core
    scheduler = build_scheduler(settings, conn)
    clock = scheduler.clock  # the test clock when [scheduler] test_clock is on, else system time
    client = FhirClient.from_settings(settings, metrics=core.metrics)
    target = _write_back_target(settings, conn, client, core.metrics)
    engine = load_engine(settings)
    prior = RedisPriorState(conn, core.keys, fields=engine.prior_fields())
    deliverer = ChannelDeliverer(settings, load_channels(settings), conn, core.keys, core.metrics)
    executor = PlanExecutor(
        target, conn, core.keys, settings, deliverer=deliverer, scheduler=scheduler, metrics=core.metrics, clock=clock
    )
    history = _run_history(settings, conn)
    static = StaticCache()  # Questionnaire titles, Practitioner names: shared by this process's events
    pipeline = EnginePipeline(
        engine,
        settings,
        prior,
        lambda _event: CachingContextSource(client, static),
        executor,
        conn,
        core.keys,
        history=history,
        metrics=core.metrics,
        clock=clock,
    )
    return dataclasses.replace(
        core,
        dispatcher=pipeline,
        fetcher=ClientResourceFetcher(client, settings, conn, core.keys),
        gap_recovery=ClientGapRecovery(client, settings, conn, core.queue, metrics=core.metrics, clock=clock),
        clock=clock,
        fhir=client,
        target=target,
        engine=engine,
        prior=prior,
        scheduler=scheduler,
        deliverer=deliverer,
        executor=executor,
        history=history,
    )


def reload_engine(rt: Runtime) -> list[Any]:
    """Load the flow files again (SIGHUP); on any error keep the running flows and return the errors."""
    from fhir_smartflow.flowfiles import EngineLoadError, load_engine

    try:
        engine = load_engine(rt.settings)
    except EngineLoadError as exc:
        return list(exc.errors)
    rt.engine = engine
    if hasattr(rt.dispatcher, "engine"):  # the EnginePipeline
        rt.dispatcher.engine = engine
    return []


def _write_back_target(settings: Settings, conn: redis.Redis, client: Any, metrics: Metrics) -> WriteBackTarget:
    if settings.fhir.writeback == "openemr":
        from fhir_smartflow.openemr.factory import build_openemr_target

        return build_openemr_target(settings, conn, metrics, session=client.session)  # one connection pool
    from fhir_smartflow.fhir.writeback import FhirWriteBack

    return FhirWriteBack.from_settings(client, settings, conn)


def _run_history(settings: Settings, conn: redis.Redis) -> Any:
    from fhir_smartflow.worker.history import RunHistory

    return RunHistory.from_settings(settings, conn)


_lock = threading.Lock()
_installed: Runtime | None = None


def install(rt: Runtime | None) -> None:
    """Make ``rt`` the process's runtime (None uninstalls; tests do that)."""
    global _installed
    with _lock:
        _installed = rt


def current() -> Runtime:
    """The installed runtime. A plain `rq worker` pointed at our queue has none (our `worker` and `serve`
    install one): its first job builds the whole service from the config (``$SMARTFLOW_CONFIG``), so it
    runs the flows like ours. Raises `ConfigError` when that config has no ``[redis] url`` (the runtime
    would talk to an in-process queue, not the worker's Redis); the job then fails, saying so."""
    global _installed
    with _lock:
        if _installed is None:
            _installed = _runtime_for_plain_rq_worker(load_settings())
        return _installed


def _runtime_for_plain_rq_worker(settings: Settings) -> Runtime:
    if settings.embedded_queue:
        raise ConfigError(
            "[redis] url",
            "a plain `rq worker` runs our jobs only with SMARTFLOW_CONFIG naming a config whose [redis] url is "
            "the worker's Redis (or run `fhir-smartflow worker`)",
        )
    log.warning(
        "no runtime installed (a plain `rq worker`?): building the service from the config; follow-ups fire "
        "only where `fhir-smartflow worker` or `fhir-smartflow scheduler` runs"
    )
    return build_service_runtime(settings)
