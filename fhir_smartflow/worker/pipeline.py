"""The worker's Dispatcher: prior state → triggers → once-claims → discharge check → plan → execute.

Per event: read the prior state, match triggers, and for each trigger claim its once_key (SET NX;
a retry of the same trigger event finds its own claim and goes on), keep the discharge marker
(set on patient.discharged, cleared on patient.admitted), plan, execute, record history. The prior
state is written last, so a failure before it leaves the transition to fire again on the job's
retry (execution is idempotent by identifiers).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import redis

from fhir_smartflow.config import Settings
from fhir_smartflow.connections import Keys
from fhir_smartflow.engine.interfaces import ContextSource
from fhir_smartflow.engine.model import Engine
from fhir_smartflow.engine.plan import Plan, TriggerEvent
from fhir_smartflow.engine.planner import plan
from fhir_smartflow.engine.triggers import match_triggers
from fhir_smartflow.events import ResourceEvent
from fhir_smartflow.metrics import Metrics
from fhir_smartflow.worker.discharge import DischargeMarkers
from fhir_smartflow.worker.execute import ExecutionResult, Executor
from fhir_smartflow.worker.prior import PriorState

log = logging.getLogger(__name__)

ONCE_TTL_SECONDS = 10 * 365 * 24 * 3600  # "once per patient, ever" — ten years is ever enough


class History(Protocol):
    def record(self, plan: Plan, result: ExecutionResult | None = None) -> str: ...


def utc_now() -> datetime:
    return datetime.now(UTC)


class EnginePipeline:
    """Implements the Dispatcher protocol (worker/seams.py)."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        prior: PriorState,
        context_factory: Callable[[ResourceEvent], ContextSource],
        executor: Executor,
        redis: redis.Redis,
        keys: Keys,
        history: History | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.prior = prior
        self.context_factory = context_factory
        self.executor = executor
        self.redis = redis
        self.keys = keys
        self.history = history
        self.metrics = metrics
        self.clock = clock
        self.discharges = DischargeMarkers(redis, keys)

    def dispatch(self, event: ResourceEvent) -> list[Plan]:
        """Run every flow this event triggers; returns the executed plans (for callers and tests)."""
        if not event.resource_id:
            return []
        previous = self.prior.get(event.resource_type, event.resource_id)
        triggers = match_triggers(self.engine, event, previous)
        plans: list[Plan] = []
        context: ContextSource | None = None
        for trigger in triggers:
            if trigger.once_key and not self._claim_once(trigger):
                log.info("trigger %s already fired once for %s: skipped", trigger.trigger, trigger.once_key)
                continue
            context = context or self.context_factory(event)
            self.discharges.track(trigger)
            discharged = self._is_discharged(trigger, context)
            result_plan = plan(self.engine, trigger, context, self.settings, self.clock(), discharged=discharged)
            if not result_plan.runs:
                continue  # e.g. an admission with no flow on it: nothing to execute or record
            result = self.executor.execute(result_plan)
            if self.history is not None:
                self.history.record(result_plan, result)
            self._count(result_plan)
            log.info(
                "trigger %s on %s: %d flow run(s), %d action(s)",
                trigger.trigger,
                event.reference,
                len(result_plan.runs),
                len(result_plan.actions),
            )
            plans.append(result_plan)
        if event.resource is not None and event.interaction != "delete":
            self.prior.put(event.resource_type, event.resource_id, event.resource)
        return plans

    def _claim_once(self, trigger: TriggerEvent) -> bool:
        key = self.keys.once(trigger.once_key or "")
        if self.redis.set(key, trigger.id, nx=True, ex=ONCE_TTL_SECONDS):
            return True
        owner = self.redis.get(key)
        # The same trigger event retried (the job failed after claiming): go on, execution is idempotent.
        return owner is not None and owner.decode() == trigger.id

    def _is_discharged(self, trigger: TriggerEvent, context: ContextSource) -> bool:
        if not trigger.patient:
            return False
        if not any(f.enabled and f.stops_at_discharge for f in self.engine.flows_for(trigger.trigger)):
            return False  # nobody asks: save the reads
        event = trigger.event

        def read_patient(reference: str) -> dict[str, Any] | None:
            return event.resource if event.reference == reference else context.read(reference)

        return self.discharges.is_discharged(trigger.patient, read_patient)

    def _count(self, result_plan: Plan) -> None:
        if self.metrics is None:
            return
        for run in result_plan.runs:
            self.metrics.inc("flow_runs", result="ran" if run.ran else "skipped")
