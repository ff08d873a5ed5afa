"""Small in-memory fakes of other helpers' Protocols (WriteBackTarget, Executor, planner) for unit tests
of the scheduling jobs. The real components replace them in the lead's end-to-end tests."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fhir_smartflow.engine.plan import Plan, Schedule, TriggerEvent, WriteResource
from fhir_smartflow.engine.recurrence import next_occurrence, recurring_from_dict
from fhir_smartflow.events import ResourceEvent
from fhir_smartflow.fhir.target import WriteBackTarget

SYSTEM = "urn:fhir-smartflow:id"


class FakeTarget(WriteBackTarget):
    """WriteBackTarget in memory (``find_by_identifier``: the base class's, a search by identifier)."""

    identifier_system = SYSTEM

    def __init__(self) -> None:
        self.store: dict[str, dict[str, Any]] = {}
        self._next = 1

    def create(self, resource: dict[str, Any], identifier: str) -> dict[str, Any]:
        found = self.find_by_identifier(resource["resourceType"], identifier)
        if found is not None:
            return found
        resource = copy.deepcopy(resource)
        resource.setdefault("id", str(self._next))
        self._next += 1
        self.store[f"{resource['resourceType']}/{resource['id']}"] = resource
        return resource

    def put(self, resource: dict[str, Any]) -> dict[str, Any]:
        self.store[f"{resource['resourceType']}/{resource['id']}"] = copy.deepcopy(resource)
        return resource

    def read(self, reference: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.store.get(reference))

    def update(self, resource: dict[str, Any]) -> dict[str, Any]:
        return self.put(resource)

    def search(self, resource_type: str, params: dict[str, str]) -> list[dict[str, Any]]:
        out = []
        for ref, res in self.store.items():
            if not ref.startswith(resource_type + "/"):
                continue
            if "status" in params and res.get("status") != params["status"]:
                continue
            if "group-identifier" in params:
                group = res.get("groupIdentifier", {})
                if f"{group.get('system')}|{group.get('value')}" != params["group-identifier"]:
                    continue
            if "identifier" in params and not any(
                f"{i.get('system')}|{i.get('value')}" == params["identifier"] for i in res.get("identifier", [])
            ):
                continue
            out.append(copy.deepcopy(res))
        return out


@dataclass
class FakeExecutor:
    """Executor protocol: records plans; writes to the target and hands Schedules to the scheduler."""

    target: Any = None
    scheduler: Any = None
    plans: list[Plan] = field(default_factory=list)
    withdrawn: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    fail_times: int = 0

    def execute(self, plan: Plan) -> None:
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


def task(identifier: str, status: str = "requested", group: str = "g1", patient: str = "Patient/1") -> dict:
    return {
        "resourceType": "Task",
        "id": identifier.replace("/", "-"),
        "status": status,
        "intent": "order",
        "identifier": [{"system": SYSTEM, "value": identifier}],
        "groupIdentifier": {"system": SYSTEM, "value": group},
        "for": {"reference": patient},
        "instantiatesUri": "urn:fhir-smartflow:flow:checkin:1#weekly-check-in",
    }


def _trigger(kind: str, payload: dict[str, Any], now: datetime) -> TriggerEvent:
    event = ResourceEvent("scheduler", "Task", None, now.isoformat(), source="replay")
    return TriggerEvent(trigger=f"followup.{kind}", event=event, id=f"{kind}|{payload.get('task_identifier')}")


class FakePlanner:
    """plan_followup: reminder -> a Communication; recurrence -> next Task + next Schedule (count-limited)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = []

    def plan_followup(self, engine, kind, payload, task_, context, settings, now, discharged=False) -> Plan:
        from fhir_smartflow.engine.plan import FlowRun

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
        return Plan(trigger=_trigger(kind, payload, now), runs=(run,))
