"""In-memory stand-ins for the Protocols around the executor and the scheduling jobs (WriteBackTarget,
Executor, planner, Deliverer, Scheduler), the one in-memory ContextSource of the pure planner tests, and
a GapRecovery that records the gaps it is asked to recover.

They are inputs of unit tests, not replacements in end-to-end tests: those run the real components
against the sandbox (tests/test_e2e.py, tests/test_lifecycle_e2e.py, tests/test_writeback_*.py).
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fhir_smartflow.delivery.outcome import DeliveryOutcome
from fhir_smartflow.engine.plan import Deliver, FlowRun, Plan, Schedule, TriggerEvent, WriteResource
from fhir_smartflow.engine.recurrence import next_occurrence, recurring_from_dict
from fhir_smartflow.events import ResourceEvent
from fhir_smartflow.fhir.target import WriteBackTarget
from fhir_smartflow.scheduling.scheduler import Pending
from fhir_smartflow.worker.execute import Prewritten
from fhir_smartflow.worker.gaps import Gap
from tests.support.plans import SYSTEM, task


class MemoryTarget(WriteBackTarget):
    """A WriteBackTarget in memory with only the four basic operations (the optional ones are the base
    class's defaults): idempotent by business identifier (``identifier``, or ``meta.tag`` for Provenance)
    as the contract says. Searches by identifier, status (comma = OR) and group-identifier; other
    parameters are ignored. Set ``fail_update`` to make updates raise; ``put`` stores as given (setup)."""

    identifier_system = SYSTEM

    def __init__(self) -> None:
        self.resources: dict[str, dict[str, Any]] = {}
        self.ids = itertools.count(1)
        self.updates: list[dict[str, Any]] = []
        self.fail_update: Exception | None = None

    @staticmethod
    def _marks(resource: dict[str, Any]) -> list[tuple[str | None, str | None]]:
        tags = (resource.get("meta") or {}).get("tag") or []
        return [(i.get("system"), i.get("value")) for i in resource.get("identifier") or []] + [
            (t.get("system"), t.get("code")) for t in tags
        ]

    def _matches(self, resource: dict[str, Any], params: dict[str, str]) -> bool:
        if "identifier" in params:
            system, _, value = params["identifier"].partition("|")
            if (system, value) not in self._marks(resource):
                return False
        if "status" in params and resource.get("status") not in params["status"].split(","):
            return False
        if "group-identifier" in params:
            group = resource.get("groupIdentifier") or {}
            if f"{group.get('system')}|{group.get('value')}" != params["group-identifier"]:
                return False
        return True

    def search(self, resource_type: str, params: dict[str, str]) -> list[dict[str, Any]]:
        return [
            copy.deepcopy(r)
            for ref, r in self.resources.items()
            if ref.startswith(resource_type + "/") and self._matches(r, params)
        ]

    def create(self, resource: dict[str, Any], identifier: str) -> dict[str, Any]:
        found = self.find_by_identifier(resource["resourceType"], identifier)
        if found is not None:
            return found
        stored = copy.deepcopy(resource)
        stored.setdefault("id", str(next(self.ids)))
        stored["meta"] = {**(stored.get("meta") or {}), "versionId": "1"}
        self.resources[f"{stored['resourceType']}/{stored['id']}"] = stored
        return copy.deepcopy(stored)

    def put(self, resource: dict[str, Any]) -> dict[str, Any]:
        """Store as given (test setup: what the EHR holds)."""
        self.resources[f"{resource['resourceType']}/{resource['id']}"] = copy.deepcopy(resource)
        return resource

    def read(self, reference: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.resources.get(reference))

    def update(self, resource: dict[str, Any]) -> dict[str, Any]:
        if self.fail_update:
            raise self.fail_update
        self.updates.append(resource)
        return self.put(resource)


@dataclass
class FakeExecutor:
    """Executor protocol: records plans; writes to the target and hands Schedules to the scheduler."""

    target: Any = None
    scheduler: Any = None
    plans: list[Plan] = field(default_factory=list)
    withdrawn: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    fail_times: int = 0

    def execute(self, plan: Plan, prewritten: Prewritten | None = None) -> None:
        if self.fail_times:
            self.fail_times -= 1
            raise ConnectionError("FHIR server unavailable")
        self.plans.append(plan)
        for action in plan.actions:
            if isinstance(action, WriteResource) and self.target is not None:
                self.target.create(action.resource, action.identifier)
            elif isinstance(action, Schedule) and self.scheduler is not None:
                self.scheduler.schedule(action)

    def withdraw_delivery(self, payload: dict[str, Any], reason: str) -> bool:
        self.withdrawn.append((payload, reason))
        return True

    def actions(self) -> list[Any]:
        return [a for p in self.plans for a in p.actions]


def _followup_trigger(kind: str, payload: dict[str, Any], now: datetime) -> TriggerEvent:
    event = ResourceEvent("scheduler", "Task", None, now.isoformat(), source="replay")
    return TriggerEvent(trigger=f"followup.{kind}", event=event, id=f"{kind}|{payload.get('task_identifier')}")


class FakePlanner:
    """plan_followup: reminder -> a Communication; recurrence -> next Task + next Schedule (count-limited)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = []

    def plan_followup(self, engine, kind, payload, task_, context, settings, now, discharged=False) -> Plan:
        self.calls.append((kind, payload, task_))
        actions: list[Any] = []
        if kind == "reminder":
            ident = f"{payload['task_identifier']}/reminder"
            actions.append(WriteResource("Communication", ident, {"resourceType": "Communication"}))
        elif kind == "recurrence":
            occ = int(payload["occurrence"])
            ident = f"checkin/weekly/task/{occ}"
            actions.append(WriteResource("Task", ident, task(ident, group=payload["group"])))
            # The engine's convention: occurrence k is 0-based (0 = the trigger), count counts them all.
            rule = recurring_from_dict(payload["recurring"])
            start = datetime.fromisoformat(payload["start"])
            at = next_occurrence(rule, start, occ, settings.clinic.timezone)
            if at is not None:
                n = occ + 1
                actions.append(
                    Schedule(
                        at=at,
                        kind="recurrence",
                        identifier=f"checkin/weekly/recurrence/{n}",
                        payload={**payload, "occurrence": n, "occurrence_at": at.isoformat(), "task_identifier": ident},
                    )
                )
        run = FlowRun(payload.get("flow_id", ""), "1", payload.get("group", ""), True, "followup", tuple(actions))
        return Plan(trigger=_followup_trigger(kind, payload, now), runs=(run,))


class FakeDeliverer:
    """Deliverer protocol: answers a scripted outcome and records every call."""

    def __init__(self, *outcomes: DeliveryOutcome, raises: Exception | None = None) -> None:
        self.outcomes = list(outcomes) or [DeliveryOutcome("completed", provider_id="SM1")]
        self.calls: list[tuple[Deliver, dict | None, list[dict]]] = []
        self.raises = raises

    def deliver(self, action, recipient, consents, now):
        self.calls.append((action, recipient, consents))
        if self.raises:
            raise self.raises
        return self.outcomes[min(len(self.calls), len(self.outcomes)) - 1]


class FakeScheduler:
    """Scheduler protocol: records what it is asked."""

    def __init__(self) -> None:
        self.scheduled: list[Schedule] = []
        self.cancels: list[dict[str, Any]] = []

    def schedule(self, action: Schedule) -> None:
        self.scheduled.append(action)

    def reschedule(self, action: Schedule) -> bool:
        self.scheduled.append(action)
        return True

    def cancel(self, group=None, patient=None, flows=()) -> int:
        self.cancels.append({"group": group, "patient": patient, "flows": flows})
        return 0

    def pending_for(self, group=None, patient=None, flows=()) -> list[Pending]:
        return []


class FakeContext:
    """A ContextSource over a dict of resources; searches answer from the stored resources of the type,
    filtered by status (comma = OR), url, role and patient/beneficiary. Records what was asked."""

    def __init__(self, resources: list[dict[str, Any]] | None = None) -> None:
        self.resources = {f"{r['resourceType']}/{r['id']}": r for r in resources or []}
        self.reads: list[str] = []
        self.searched: list[tuple[str, dict[str, str]]] = []

    def read(self, reference: str) -> dict[str, Any] | None:
        self.reads.append(reference)
        return self.resources.get(reference)

    def search(self, resource_type: str, params: dict[str, str]) -> list[dict[str, Any]]:
        self.searched.append((resource_type, dict(params)))
        out = []
        for ref, resource in sorted(self.resources.items()):
            if not ref.startswith(resource_type + "/"):
                continue
            if "status" in params and resource.get("status") not in params["status"].split(","):
                continue
            if "url" in params and resource.get("url") != params["url"]:
                continue
            if "role" in params and not _has_role(resource, params["role"]):
                continue
            patient = params.get("patient") or params.get("beneficiary")
            if patient and patient not in str(resource):
                continue
            out.append(resource)
        return out


def _has_role(resource: dict[str, Any], system_code: str) -> bool:
    system, _, code = system_code.partition("|")
    return any(
        c.get("system") == system and c.get("code") == code
        for concept in resource.get("code") or []
        for c in concept.get("coding") or []
    )


class RecordingRecovery:
    """GapRecovery (worker/seams.py) that records the gaps it is asked to recover."""

    def __init__(self) -> None:
        self.gaps: list[Gap] = []

    def recover(self, subscription: str, gap: Gap) -> None:
        self.gaps.append(gap)
