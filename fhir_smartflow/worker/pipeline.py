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
from dataclasses import dataclass, field
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
from fhir_smartflow.worker.execute import ExecutionResult, Executor, Prewritten
from fhir_smartflow.worker.prior import PriorState

log = logging.getLogger(__name__)

ONCE_TTL_SECONDS = 10 * 365 * 24 * 3600  # "once per patient, ever" — ten years is ever enough


@dataclass
class Dispatch:
    """One event's dispatch in progress: the triggers it matched, and those not yet planned, in order."""

    event: ResourceEvent
    triggers: list[TriggerEvent]
    context: ContextSource | None = None
    remaining: list[TriggerEvent] = field(init=False)

    def __post_init__(self) -> None:
        self.remaining = list(self.triggers)

    @property
    def patients(self) -> set[str | None]:
        """Every matched trigger's patient (None for a trigger without one)."""
        return {trigger.patient for trigger in self.triggers}


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
        return self.complete(self.match(event))

    # The steps of `dispatch`, for a batch job that writes several events' first resources in one
    # transaction (worker/write_groups.py): match, plan the first trigger, complete.
    def match(self, event: ResourceEvent) -> Dispatch:
        """Read the prior state and match the triggers: nothing is written."""
        if not event.resource_id:
            return Dispatch(event, [])
        previous = self.prior.get(event.resource_type, event.resource_id)
        return Dispatch(event, match_triggers(self.engine, event, previous))

    def plan_next(self, step: Dispatch) -> Plan | None:
        """Claim and plan the next trigger with something to run (None when none is left): its once
        claim, discharge marker and plan, not its execution."""
        while step.remaining:
            trigger = step.remaining.pop(0)
            if trigger.once_key and not self._claim_once(trigger):
                log.info("trigger %s already fired once for %s: skipped", trigger.trigger, trigger.once_key)
                continue
            step.context = step.context or self.context_factory(step.event)
            self.discharges.track(trigger)
            discharged = self._is_discharged(trigger, step.context)
            result_plan = plan(self.engine, trigger, step.context, self.settings, self.clock(), discharged=discharged)
            if result_plan.runs:
                return result_plan  # an admission with no flow on it, say, has nothing to execute or record
        return None

    def complete(self, step: Dispatch, planned: Plan | None = None, prewritten: Prewritten | None = None) -> list[Plan]:
        """Execute ``planned`` (the plan `plan_next` made, if any; its writes may be in ``prewritten``)
        and every trigger after it, then write the prior state."""
        plans: list[Plan] = []
        current = planned or self.plan_next(step)
        while current is not None:
            result = self.executor.execute(current, prewritten)
            if self.history is not None:
                self.history.record(current, result)
            self._count(current)
            log.info(
                "trigger %s on %s: %d flow run(s), %d action(s)",
                current.trigger.trigger,
                step.event.reference,
                len(current.runs),
                len(current.actions),
            )
            plans.append(current)
            current = self.plan_next(step)
        event = step.event
        if event.resource_id and event.resource is not None and event.interaction != "delete":
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
