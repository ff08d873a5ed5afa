"""The object graph of one process (serve, worker, scheduler), built from `Settings`.

rq job functions get their collaborators from `current()`; the worker (or `serve` with its embedded
worker) calls `install()` once at start; in a plain `rq worker` the first job builds the service runtime
from the config. Nothing else is global.

Two shapes, told apart by their type:

- `Runtime` (`build_runtime`): the ingest core — queue, dedupe, gap tracking, dispatch — with stand-ins
  (recording dispatcher, pass-through fetch) for what is not given;
- `ServiceRuntime` (`build_service_runtime`): the whole service. The engine pipeline dispatches, and the
  write-back target, executor, scheduler and follow-up planner are there for the follow-up jobs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import redis

from fhir_smartflow.config import ConfigError, Settings, load_settings
from fhir_smartflow.connections import Keys, connect
from fhir_smartflow.metrics import Metrics
from fhir_smartflow.queueing import EventQueue, queue_for
from fhir_smartflow.worker.seams import (
    Dispatcher,
    GapRecovery,
    LoggingGapRecovery,
    PassThroughFetcher,
    RecordingDispatcher,
    ResourceFetcher,
)

if TYPE_CHECKING:  # the ingest-only runtime (and the webhook importing utc_now) loads none of these
    from fhir_smartflow.engine.interfaces import ContextSource
    from fhir_smartflow.engine.loader import LoadError
    from fhir_smartflow.engine.model import Engine
    from fhir_smartflow.engine.plan import Plan
    from fhir_smartflow.fhir.client import FhirClient
    from fhir_smartflow.fhir.target import WriteBackTarget
    from fhir_smartflow.scheduling.scheduler import RqScheduler
    from fhir_smartflow.worker.execute import PlanExecutor
    from fhir_smartflow.worker.pipeline import EnginePipeline

log = logging.getLogger(__name__)


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Runtime:
    """The ingest core every process has."""

    settings: Settings
    redis: redis.Redis
    keys: Keys
    metrics: Metrics
    queue: EventQueue
    dispatcher: Dispatcher
    fetcher: ResourceFetcher
    gap_recovery: GapRecovery
    clock: Callable[[], datetime] = utc_now


class PlanFollowup(Protocol):
    """What plans a due follow-up: ``engine.followups.plan_followup``."""

    def __call__(
        self,
        engine: Engine,
        kind: str,
        payload: dict[str, Any],
        task: dict[str, Any] | None,
        context: ContextSource,
        settings: Settings,
        now: datetime,
        discharged: bool = False,
    ) -> Plan: ...


@dataclass(kw_only=True)
class ServiceRuntime(Runtime):
    """The whole service: the engine pipeline dispatches; the follow-up jobs use the rest."""

    dispatcher: EnginePipeline
    target: WriteBackTarget
    executor: PlanExecutor
    scheduler: RqScheduler
    context: Callable[[], ContextSource]  # a fresh caching ContextSource per use (reads for planning)
    plan_followup: PlanFollowup

    @property
    def engine(self) -> Engine:
        """The loaded flows (the pipeline's: a reload replaces them there)."""
        return self.dispatcher.engine


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
    from fhir_smartflow.channels import load_channels
    from fhir_smartflow.delivery.deliverer import ChannelDeliverer
    from fhir_smartflow.engine.followups import plan_followup
    from fhir_smartflow.fhir.client import FhirClient
    from fhir_smartflow.fhir.device import with_service_device
    from fhir_smartflow.flowfiles import load_engine
    from fhir_smartflow.scheduling.scheduler import build_scheduler
    from fhir_smartflow.worker.context import CachingContextSource, ClientResourceFetcher, StaticCache
    from fhir_smartflow.worker.execute import PlanExecutor
    from fhir_smartflow.worker.history import RunHistory
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
    settings = with_service_device(settings)  # every reference names the server-assigned Device id
    target = _write_back_target(settings, conn, client, core.metrics)
    engine = load_engine(settings)
    deliverer = ChannelDeliverer(settings, load_channels(settings), conn, core.keys, core.metrics)
    executor = PlanExecutor(
        target, conn, core.keys, settings, deliverer=deliverer, scheduler=scheduler, metrics=core.metrics, clock=clock
    )
    static = StaticCache()  # Questionnaire titles, Practitioner names: shared by this process's events

    def context() -> ContextSource:
        return CachingContextSource(client, static)

    pipeline = EnginePipeline(
        engine,
        settings,
        RedisPriorState(conn, core.keys, fields=engine.prior_fields()),
        lambda _event: context(),
        executor,
        conn,
        core.keys,
        history=RunHistory.from_settings(settings, conn),
        metrics=core.metrics,
        clock=clock,
    )
    return ServiceRuntime(
        settings=settings,
        redis=conn,
        keys=core.keys,
        metrics=core.metrics,
        queue=core.queue,
        dispatcher=pipeline,
        fetcher=ClientResourceFetcher(client, settings, conn, core.keys),
        gap_recovery=ClientGapRecovery(client, settings, conn, core.queue, metrics=core.metrics, clock=clock),
        clock=clock,
        target=target,
        executor=executor,
        scheduler=scheduler,
        context=context,
        plan_followup=plan_followup,
    )


def reload_engine(rt: ServiceRuntime) -> list[LoadError]:
    """Load the flow files again (SIGHUP); on any error keep the running flows and return the errors."""
    from fhir_smartflow.flowfiles import EngineLoadError, load_engine

    try:
        engine = load_engine(rt.settings)
    except EngineLoadError as exc:
        return list(exc.errors)
    rt.dispatcher.engine = engine
    return []


def _write_back_target(settings: Settings, conn: redis.Redis, client: FhirClient, metrics: Metrics) -> WriteBackTarget:
    if settings.fhir.writeback == "openemr":
        from fhir_smartflow.openemr.factory import build_openemr_target

        return build_openemr_target(settings, conn, metrics, session=client.session)  # one connection pool
    from fhir_smartflow.fhir.writeback import FhirWriteBack

    return FhirWriteBack.from_settings(client, settings, conn)


def current_service() -> ServiceRuntime:
    """The installed runtime when it is the whole service (what the follow-up jobs need)."""
    rt = current()
    if not isinstance(rt, ServiceRuntime):
        raise RuntimeError(
            "this job needs the whole service runtime (flows, write-back, scheduler), but the process runs "
            'the ingest-only one ([engine] dispatch = "record", or a worker not started by `fhir-smartflow worker`)'
        )
    return rt


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
