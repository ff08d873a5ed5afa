"""``simulate``: the mapping → planner path on one resource, with no FHIR server and no Redis.

Context (Patient, Coverage, Practitioner, ...) comes from files (resources or Bundles) held in a
``MemoryContext``. The report lists the triggers matched, each flow's result and reason, and every
action of the plan: resources that would be written (with their R4B validation result), messages with
their rendered text, follow-ups with their instants; the event time the `event` anchor uses and where it
comes from (the resource's meta.lastUpdated, not ``--at``), and what each run left out and why (a reminder
already past, a role nobody holds).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from fhir_smartflow.config import Settings
from fhir_smartflow.engine.anchors import AnchorMissing, event_source
from fhir_smartflow.engine.model import Engine
from fhir_smartflow.engine.plan import CancelGroup, Deliver, PatchTask, Plan, PlanAction, Schedule, WriteResource
from fhir_smartflow.engine.planner import plan as make_plan
from fhir_smartflow.engine.triggers import match_triggers
from fhir_smartflow.engine.validation import ResourceInvalid, validate_resource
from fhir_smartflow.events import ResourceEvent
from fhir_smartflow.instants import format_instant
from fhir_smartflow.refs import parse_reference


class InputError(ValueError):
    """An input file is missing, not JSON, or not a FHIR resource."""


def read_resource_file(path: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a JSON file ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        raise InputError(f"{path}: not a FHIR resource (no resourceType)")
    return data


def _unbundle(resource: dict[str, Any]) -> list[dict[str, Any]]:
    if resource.get("resourceType") == "Bundle":
        return [e["resource"] for e in resource.get("entry") or [] if isinstance(e.get("resource"), dict)]
    return [resource]


def _references(value: Any) -> Iterable[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "reference" and isinstance(item, str):
                yield item
            else:
                yield from _references(item)
    elif isinstance(value, list):
        for item in value:
            yield from _references(item)


def _scalars(value: Any) -> Iterable[str]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _scalars(item)
    elif isinstance(value, list):
        for item in value:
            yield from _scalars(item)
    elif isinstance(value, str | int | float | bool):
        yield str(value).lower() if isinstance(value, bool) else str(value)


def _has_token(concepts: Any, wanted: list[str]) -> bool:
    """A CodeableConcept (or a list of them) has one of the ``system|code`` (or bare code) tokens."""
    codings = [c for concept in concepts or [] for c in (concept or {}).get("coding") or []]
    for token in wanted:
        system, _, code = token.rpartition("|")
        if any(c.get("code") == code and (not system or c.get("system") == system) for c in codings):
            return True
    return False


class MemoryContext:
    """A ContextSource over resources given up front (files, Bundles). Search matching is lenient: a
    parameter matches when its value (or one of its comma-separated values) is a reference the resource
    holds, or a value under that top-level element; ``_id`` and ``identifier=system|value`` are exact;
    other ``_`` parameters (``_sort``, ``_count``, ...) are ignored."""

    def __init__(self, resources: Iterable[dict[str, Any]]) -> None:
        self.resources: dict[str, dict[str, Any]] = {}
        for resource in resources:
            for item in _unbundle(resource):
                if item.get("id"):
                    self.resources[f"{item['resourceType']}/{item['id']}"] = item

    def read(self, reference: str) -> dict[str, Any] | None:
        parsed = parse_reference(reference)
        return self.resources.get(f"{parsed.resource_type}/{parsed.id}") if parsed else None

    def search(self, resource_type: str, params: dict[str, str]) -> list[dict[str, Any]]:
        found = [r for key, r in sorted(self.resources.items()) if key.startswith(f"{resource_type}/")]
        return [r for r in found if all(self._param(r, k, str(v)) for k, v in params.items())]

    @staticmethod
    def _param(resource: dict[str, Any], name: str, value: str) -> bool:
        name = name.split(":")[0]
        if name == "_id":
            return resource.get("id") == value
        if name.startswith("_"):
            return True
        wanted = value.split(",")
        if name == "role" and resource.get("resourceType") == "PractitionerRole":
            return _has_token(resource.get("code"), wanted)  # the `role` search parameter is PractitionerRole.code
        if name == "identifier":
            pairs = {f"{i.get('system', '')}|{i.get('value', '')}" for i in resource.get("identifier") or []}
            values = {i.get("value") for i in resource.get("identifier") or []}
            return any(w in pairs or w in values for w in wanted)
        refs = set(_references(resource))
        if any(w in refs or any(r.endswith(f"/{w}") for r in refs) for w in wanted if "/" in w):
            return True
        return any(w in set(_scalars(resource.get(name))) for w in wanted)


def _event(resource: dict[str, Any], previous: dict[str, Any] | None, at: datetime) -> ResourceEvent:
    return ResourceEvent(
        subscription="simulate",
        resource_type=resource["resourceType"],
        resource_id=resource.get("id"),
        received_at=format_instant(at, "auto"),
        version_id=(resource.get("meta") or {}).get("versionId"),
        interaction="update" if previous is not None else None,
        resource=resource,
        source="simulate",
    )


def describe_action(action: PlanAction) -> dict[str, Any]:
    if isinstance(action, WriteResource):
        try:
            validate_resource(action.resource)
            problems: list[str] = []
        except ResourceInvalid as exc:
            problems = exc.problems
        return {
            "kind": "write",
            "action": action.action,
            "resource_type": action.resource_type,
            "identifier": action.identifier,
            "valid": not problems,
            "problems": problems,
            "resource": action.resource,
        }
    if isinstance(action, Deliver):
        return {
            "kind": "message",
            "action": action.action,
            "channel": action.channel,
            "recipient": action.recipient,
            "subject": action.subject,
            "body": action.body,
            "identifier": action.identifier,
        }
    if isinstance(action, Schedule):
        return {
            "kind": "schedule",
            "action": action.action,
            "schedule": action.kind,
            "at": format_instant(action.at, "auto"),
            "identifier": action.identifier,
        }
    if isinstance(action, CancelGroup):
        return {
            "kind": "cancel",
            "reason": action.reason,
            "group": action.group,
            "patient": action.patient,
            "flows": list(action.flows),
        }
    if isinstance(action, PatchTask):
        return {
            "kind": "patch-task",
            "action": action.action,
            "identifier": action.identifier,
            "status": action.status,
            "business_status": action.business_status,
        }
    return {"kind": type(action).__name__}


def _describe_plan(engine: Engine, plan: Plan) -> dict[str, Any]:
    trigger = plan.trigger
    try:
        event_at, event_from = event_source(trigger)
    except AnchorMissing as exc:
        event_at, event_from = None, str(exc)
    return {
        "trigger": trigger.trigger,
        "id": trigger.id,
        "patient": trigger.patient,
        # The `event` anchor (and every resource's time) is this, not --at: --at is only "now".
        "event_time": format_instant(event_at, "auto"),
        "event_time_source": event_from,
        "parameters": dict(trigger.parameters),
        "once_per": trigger.once_key,
        "flows": [
            {
                "id": run.flow_id,
                "version": run.flow_version,
                "ran": run.ran,
                "reason": run.reason,
                "group": run.group,
                "actions": [describe_action(a) for a in run.actions],
                "notes": list(run.notes),
            }
            for run in plan.runs
        ],
        "no_flows": not engine.flows_for(trigger.trigger),
    }


def simulate(
    engine: Engine,
    settings: Settings,
    resource: dict[str, Any],
    previous: dict[str, Any] | None,
    context: MemoryContext,
    at: datetime,
    discharged: bool = False,
) -> dict[str, Any]:
    """The whole dry run as a JSON-able report."""
    event = _event(resource, previous, at)
    context.resources.setdefault(f"{resource['resourceType']}/{resource.get('id')}", resource)
    triggers = match_triggers(engine, event, previous)
    plans = [make_plan(engine, t, context, settings, at, discharged=discharged) for t in triggers]
    described = [_describe_plan(engine, p) for p in plans]
    invalid = sum(
        1 for p in described for f in p["flows"] for a in f["actions"] if a["kind"] == "write" and not a["valid"]
    )
    return {
        "resource": event.reference or event.resource_type,
        "previous": previous is not None,
        "at": format_instant(at, "auto"),
        "triggers": described,
        "invalid_resources": invalid,
    }


def format_report(report: dict[str, Any]) -> str:
    """Human-readable report: triggers, flows, then each action in full."""
    out = [
        f"Resource {report['resource']} at {report['at']} ({'with' if report['previous'] else 'no'} previous version)"
    ]
    if not report["triggers"]:
        out.append("No trigger matched: no mapping fires for this change, so no flow would run.")
        return "\n".join(out) + "\n"
    for trig in report["triggers"]:
        out.append("")
        out.append(f"Trigger {trig['trigger']}  (patient {trig['patient'] or '-'}; id {trig['id']})")
        out.append(
            f"  event time {trig['event_time'] or '-'}, from {trig['event_time_source']} "
            "(due dates anchored on the event count from it; --at is only 'now')"
        )
        if trig["once_per"]:
            out.append("  fires once per patient: only the first time for this patient")
        if not trig["flows"]:
            out.append("  no flow uses this trigger")
        for flow in trig["flows"]:
            state = "RUNS" if flow["ran"] else "does not run"
            out.append(f"  Flow {flow['id']} v{flow['version']}: {state} — {flow['reason']}")
            for action in flow["actions"]:
                out += ["    " + line for line in _format_action(action)]
            out += [f"    - left out: {note}" for note in flow.get("notes") or []]
    return "\n".join(out) + "\n"


def _format_action(a: dict[str, Any]) -> list[str]:
    kind = a["kind"]
    if kind == "write":
        validity = "valid R4B" if a["valid"] else "INVALID: " + "; ".join(a["problems"])
        lines = [f"- write {a['resource_type']} ({validity}) identifier {a['identifier']}"]
        lines += ["    " + line for line in json.dumps(a["resource"], indent=2, sort_keys=True).splitlines()]
        return lines
    if kind == "message":
        lines = [f"- message via {a['channel']} to {a['recipient']}"]
        if a.get("subject"):
            lines.append(f"    subject: {a['subject']}")
        lines += ["    | " + line for line in (a.get("body") or "").splitlines()]
        return lines
    if kind == "schedule":
        return [f"- {a['schedule']} follow-up at {a['at']} ({a['action']})"]
    if kind == "cancel":
        return [f"- cancel open tasks: {a['reason']}"]
    if kind == "patch-task":
        return [f"- update task {a['identifier']}: status {a['status']}, business status {a['business_status']}"]
    return [f"- {kind}"]
