"""``export plandefinition``: a flow as an R4 PlanDefinition (workflow-definition) other FHIR tools can read.

Mapping:
- trigger → ``action.trigger`` named-event (the trigger name). A flow condition is written against the
  trigger's resource: on a Patient trigger it is an applicability ``condition`` (the Patient is the
  subject an engine applies it to); on any other resource (a QuestionnaireResponse, ...) an engine applying
  it to the Patient would always get empty, so the trigger becomes a data event (data-added /
  data-modified per the mapping's interactions) on that resource type, named as the trigger, with the
  condition as ``trigger.condition`` (R4: evaluated with the triggering resource as context).
- due N after the event → ``timingDuration``; due before, or on another anchor (the appointment start,
  admission, ...) → ``timingDateTime`` whose value is the ``cqf-relativeDateTime`` extension: the anchor
  (target type and path), the relationship (before-start, after-end, ...) and the offset. ``textEquivalent``
  spells it out.
- recurrence (daily / weekly / monthly, count, until) → ``timingTiming`` (the due after each occurrence is
  its ``repeat.duration``); a cron recurrence has no Timing form and is only in ``textEquivalent``.
- reminder → a child action with ``relatedAction`` before-end of its parent (the parent ends at its due).
- owner → ``participant``: patient; a role as a practitioner with the role's configured code; a
  practitioner; a CareTeam or Group (R4 ActionParticipantType has no code for them) with the R5 type
  (``careteam``, ``group``) and the reference in cross-version extensions. A send-form is filled in by
  the patient: it always has the patient participant. ``definitionCanonical`` = the Questionnaire.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from fhir_smartflow.config import Settings
from fhir_smartflow.engine.action_types import ACTION_TYPES
from fhir_smartflow.engine.identifiers import flow_urn
from fhir_smartflow.engine.model import Action, Due, Duration, Flow, MappingRule, Owner, Recurring
from fhir_smartflow.tooling.flowdocs import describe_due, describe_duration, describe_recurring

UCUM = "http://unitsofmeasure.org"
UCUM_CODES = {"minutes": "min", "hours": "h", "days": "d", "weeks": "wk"}
PLAN_TYPE = "http://terminology.hl7.org/CodeSystem/plan-definition-type"
WORKFLOW_DEFINITION = ("workflow-definition", "Workflow Definition")
ACTION_TYPE = "http://terminology.hl7.org/CodeSystem/action-type"
CREATE = ("create", "Create")
SMARTFLOW_ACTION_TYPE = "urn:fhir-smartflow:action-type"
RELATIVE_DATE_TIME = "http://hl7.org/fhir/StructureDefinition/cqf-relativeDateTime"
R5_PARTICIPANT_TYPE = "http://hl7.org/fhir/5.0/StructureDefinition/extension-PlanDefinition.action.participant.type"
R5_PARTICIPANT_REFERENCE = (
    "http://hl7.org/fhir/5.0/StructureDefinition/extension-PlanDefinition.action.participant.typeReference"
)
# mapping interaction -> R4 trigger-type of a data event
_DATA_TRIGGERS = {"create": "data-added", "update": "data-modified"}
# anchor -> (resource type, path, which end of it, readable name): the cqf-relativeDateTime target
_ANCHOR_TARGETS: dict[str, tuple[str, str, str, str]] = {
    "appointment_start": ("Appointment", "start", "start", "the appointment"),
    "first_kept_appointment": ("Appointment", "start", "start", "the patient's first kept appointment"),
    "admission": ("Encounter", "period", "start", "the admission encounter"),
    "discharge": ("Encounter", "period", "end", "the discharge encounter"),
    "insurance_effective": ("Coverage", "period", "start", "the patient's primary active coverage"),
}
_EVERY = {"daily": "d", "weekly": "wk", "monthly": "mo"}


def _duration(d: Duration) -> dict[str, Any]:
    return {"value": d.amount, "unit": d.unit, "system": UCUM, "code": UCUM_CODES[d.unit]}


def _relative_due(due: Due, trigger_types: Sequence[str]) -> dict[str, Any]:
    """``_timingDateTime``: the due as ``amount unit before|after`` the anchor."""
    if due.anchor == "event":
        rtype = trigger_types[0] if len(trigger_types) == 1 else "Resource"
        rtype, path, end, name = rtype, "meta.lastUpdated", "start", "the resource of the trigger event"
    else:
        rtype, path, end, name = _ANCHOR_TARGETS[due.anchor]
    parts = [
        {"url": "target", "valueReference": {"type": rtype, "display": name}},
        {"url": "targetPath", "valueString": path},
        {"url": "relationship", "valueCode": f"{due.direction}-{end}"},
        {"url": "offset", "valueDuration": _duration(due.duration)},
    ]
    return {"extension": [{"url": RELATIVE_DATE_TIME, "extension": parts}]}


def _timing(recurring: Recurring, due: Due | None) -> dict[str, Any] | None:
    """``timingTiming`` of a daily / weekly / monthly series; None for cron (Timing cannot say it)."""
    if recurring.cron or recurring.every not in _EVERY:
        return None
    repeat: dict[str, Any] = {"frequency": 1, "period": 1, "periodUnit": _EVERY[recurring.every]}
    if recurring.count is not None:
        repeat["count"] = recurring.count
    if recurring.until is not None:
        repeat["boundsPeriod"] = {"end": recurring.until.isoformat()}
    if due is not None and (due.anchor, due.direction) == ("event", "after"):  # due after each occurrence
        repeat["duration"] = due.amount
        repeat["durationUnit"] = UCUM_CODES[due.unit]
    return {"repeat": repeat}


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
    reference = {"url": R5_PARTICIPANT_REFERENCE, "valueReference": {"reference": owner.value}}
    target = owner.value.partition("/")[0]
    if target in _R4_PARTICIPANT_TYPES:
        return [{"extension": [reference], "type": _R4_PARTICIPANT_TYPES[target], "role": {"text": owner.value}}]
    # R4 ActionParticipantType has no code for it (a Group, a CareTeam, ...): R5's code, on the primitive.
    return [
        {
            "extension": [reference],
            "_type": {"extension": [{"url": R5_PARTICIPANT_TYPE, "valueCode": target.lower()}]},
            "role": {"text": owner.value},
        }
    ]


# R4 ActionParticipantType by the reference's resource type; R5 adds careteam, group, organization, ...
_R4_PARTICIPANT_TYPES = {
    "Patient": "patient",
    "Practitioner": "practitioner",
    "PractitionerRole": "practitioner",
    "RelatedPerson": "related-person",
    "Device": "device",
}


def _triggers(flow: Flow, rules: Sequence[MappingRule]) -> tuple[list[dict[str, Any]], bool]:
    """The action's triggers, and whether the condition went into them (else: action.condition)."""
    named = [{"type": "named-event", "name": flow.trigger}]
    if not flow.condition or not rules or all(r.resource == "Patient" for r in rules):
        return named, False
    condition = {"language": "text/fhirpath", "expression": flow.condition}
    triggers = [
        {"type": _DATA_TRIGGERS[i], "name": flow.trigger, "data": [{"type": r.resource}], "condition": condition}
        for r in rules
        for i in r.interactions
    ]
    return triggers, True


def _action(flow: Flow, action: Action, settings: Settings, rules: Sequence[MappingRule]) -> dict[str, Any]:
    triggers, condition_in_trigger = _triggers(flow, rules)
    out: dict[str, Any] = {
        "id": action.slug,
        "title": action.name,
        "code": [{"coding": [{"system": SMARTFLOW_ACTION_TYPE, "code": action.type}]}],
        "type": {"coding": [{"system": ACTION_TYPE, "code": CREATE[0], "display": CREATE[1]}]},
        "trigger": triggers,
    }
    notes = []
    if action.template:
        notes.append(f"template {action.template}")
    if action.methods:
        notes.append(f"methods {', '.join(action.methods)}")
    if notes:
        out["description"] = "; ".join(notes)
    if flow.condition and not condition_in_trigger:
        out["condition"] = [
            {"kind": "applicability", "expression": {"language": "text/fhirpath", "expression": flow.condition}}
        ]
    texts = []
    timing = _timing(action.recurring, action.due) if action.recurring else None
    if timing is not None:
        out["timingTiming"] = timing
    elif action.due and (action.due.anchor, action.due.direction) == ("event", "after"):
        out["timingDuration"] = _duration(action.due.duration)
    elif action.due:
        out["_timingDateTime"] = _relative_due(action.due, [r.resource for r in rules])
    if timing is not None and "duration" in timing["repeat"]:
        texts.append(f"Due {describe_duration(action.due.duration if action.due else None, 'after each occurrence')}")
    elif action.due:
        texts.append(f"Due {describe_due(action.due, action.weekend)}")
    if action.recurring:
        texts.append(f"Repeats {describe_recurring(action.recurring)}")
    if texts:
        out["textEquivalent"] = "; ".join(texts)
    form = ACTION_TYPES[action.type].form
    participants = [{"type": "patient"}] if form else []
    participants += [p for p in _participant(action.owner, settings) if p not in participants]
    if participants:
        out["participant"] = participants
    if form:
        out["definitionCanonical"] = action.item
    if action.reminder:
        out["action"] = [
            {
                "id": f"{action.slug}-reminder",
                "title": f"Reminder: {action.name}",
                "relatedAction": [
                    {
                        "actionId": action.slug,
                        "relationship": "before-end",
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


def plan_definition(flow: Flow, settings: Settings, mappings: Sequence[MappingRule] = ()) -> dict[str, Any]:
    """The PlanDefinition of ``flow``; ``mappings`` (the engine's) say which resources its trigger comes
    from, which decides where its condition goes."""
    rules = [m for m in mappings if m.trigger == flow.trigger]
    resource: dict[str, Any] = {
        "resourceType": "PlanDefinition",
        "id": flow.id,
        "url": flow_urn(flow.id),
        "identifier": [{"system": settings.fhir.identifier_system, "value": f"flow/{flow.id}"}],
        "version": flow.version,
        "name": _computer_name(flow.id),
        "title": flow.name,
        "type": {"coding": [{"system": PLAN_TYPE, "code": WORKFLOW_DEFINITION[0], "display": WORKFLOW_DEFINITION[1]}]},
        "status": "active" if flow.enabled else "draft",
        "action": [_action(flow, a, settings, rules) for a in flow.actions],
    }
    if flow.description:
        resource["description"] = flow.description.strip()
    return resource
