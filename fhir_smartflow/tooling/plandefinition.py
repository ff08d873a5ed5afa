"""``export plandefinition``: a flow as an R4 PlanDefinition (workflow-definition) other FHIR tools can read.

Mapping: flow trigger → ``action.trigger`` (named-event); condition → ``action.condition`` (applicability,
text/fhirpath); due N after the event → ``timingDuration``; due on another anchor or before → the same
duration plus a ``textEquivalent`` naming the anchor; reminder → a child action ``relatedAction``
before-start of its parent; owner → ``participant``; send-form → ``definitionCanonical`` = the Questionnaire.
"""

from __future__ import annotations

import re
from typing import Any

from fhir_smartflow.config import Settings
from fhir_smartflow.engine.action_types import ACTION_TYPES
from fhir_smartflow.engine.identifiers import flow_urn
from fhir_smartflow.engine.model import Action, Duration, Flow, Owner
from fhir_smartflow.tooling.flowdocs import describe_due

UCUM = "http://unitsofmeasure.org"
_UCUM_CODES = {"minutes": "min", "hours": "h", "days": "d", "weeks": "wk"}
PLAN_TYPE = "http://terminology.hl7.org/CodeSystem/plan-definition-type"
ACTION_TYPE = "http://terminology.hl7.org/CodeSystem/action-type"
SMARTFLOW_ACTION_TYPE = "urn:fhir-smartflow:action-type"


def _duration(d: Duration) -> dict[str, Any]:
    return {"value": d.amount, "unit": d.unit, "system": UCUM, "code": _UCUM_CODES[d.unit]}


def _participant(owner: Owner | None, settings: Settings) -> list[dict[str, Any]]:
    if owner is None:
        return []
    if owner.kind == "patient":
        return [{"type": "patient"}]
    if owner.kind == "role":
        coding = settings.roles.get(owner.value, "")
        system, _, code = coding.partition("|")
        role: dict[str, Any] = {"text": owner.value}
        if code:
            role["coding"] = [{"system": system, "code": code}]
        return [{"type": "practitioner", "role": role}]
    # practitioner / group: the reference goes in role.text (R4 participant has no reference).
    return [{"type": "practitioner", "role": {"text": f"{owner.kind}: {owner.value}"}}]


def _action(flow: Flow, action: Action, settings: Settings) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": action.slug,
        "title": action.name,
        "code": [{"coding": [{"system": SMARTFLOW_ACTION_TYPE, "code": action.type}]}],
        "type": {"coding": [{"system": ACTION_TYPE, "code": "create"}]},
        "trigger": [{"type": "named-event", "name": flow.trigger}],
    }
    notes = []
    if action.template:
        notes.append(f"template {action.template}")
    if action.methods:
        notes.append(f"methods {', '.join(action.methods)}")
    if notes:
        out["description"] = "; ".join(notes)
    if flow.condition:
        out["condition"] = [
            {"kind": "applicability", "expression": {"language": "text/fhirpath", "expression": flow.condition}}
        ]
    if action.due:
        out["timingDuration"] = _duration(action.due.duration)
        out["textEquivalent"] = f"Due {describe_due(action.due, action.weekend)}"
    participants = _participant(action.owner, settings)
    if participants:
        out["participant"] = participants
    if ACTION_TYPES[action.type].form:
        out["definitionCanonical"] = action.item
    if action.reminder:
        out["action"] = [
            {
                "id": f"{action.slug}-reminder",
                "title": f"Reminder: {action.name}",
                "relatedAction": [
                    {
                        "actionId": action.slug,
                        "relationship": "before-start",
                        "offsetDuration": _duration(action.reminder),
                    }
                ],
            }
        ]
    return out


def _computer_name(text: str) -> str:
    words = re.findall(r"[A-Za-z0-9]+", text)
    name = "".join(w[:1].upper() + w[1:] for w in words) or "Flow"
    return name if name[0].isalpha() else f"Flow{name}"


def plan_definition(flow: Flow, settings: Settings) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "PlanDefinition",
        "id": flow.id,
        "url": flow_urn(flow.id),
        "identifier": [{"system": settings.fhir.identifier_system, "value": f"flow/{flow.id}"}],
        "version": flow.version,
        "name": _computer_name(flow.id),
        "title": flow.name,
        "type": {"coding": [{"system": PLAN_TYPE, "code": "workflow-definition", "display": "Workflow Definition"}]},
        "status": "active" if flow.enabled else "draft",
        "action": [_action(flow, a, settings) for a in flow.actions],
    }
    if flow.description:
        resource["description"] = flow.description.strip()
    return resource
