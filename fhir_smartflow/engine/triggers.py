"""Mappings → triggers: which named triggers one resource change fires.

A mapping fires when the interaction matches, ``when`` is true on the new state, and ``previous``
is true on the prior state (or no prior state is known and ``previous_missing`` allows it). The
prior state is what makes a transition (booked → noshow) fire once and not on every later update.

Delete events fire nothing: a deleted resource has no new state for ``when`` to read, and no
shipped trigger means "deleted" (a cancelled appointment is an update to status cancelled). The
pipeline still forgets nothing on delete: the prior state simply stays until its TTL.
"""

from __future__ import annotations

import logging
from typing import Any

from fhir_smartflow.engine.fhirpath import FhirPathError, evaluate, first_string, is_true
from fhir_smartflow.engine.model import Engine, MappingRule
from fhir_smartflow.engine.plan import TriggerEvent
from fhir_smartflow.events import ResourceEvent

log = logging.getLogger(__name__)


def infer_interaction(event: ResourceEvent, previous: dict[str, Any] | None) -> str:
    """Classic notifications carry no interaction: no prior state and version 1 (or none) → create."""
    if event.interaction:
        return event.interaction
    if previous is None and event.version_id in (None, "", "1"):
        return "create"
    return "update"


def event_marker(event: ResourceEvent) -> str:
    """``v{versionId}`` when known, else the event's own dedupe marker (docs/internals.md)."""
    if event.version_id:
        return f"v{event.version_id}"
    return event.dedupe_key().split("|", 2)[-1]


def trigger_id(trigger: str, event: ResourceEvent) -> str:
    focus = event.reference or event.resource_type
    return f"{trigger}|{focus}|{event_marker(event)}"


def match_triggers(engine: Engine, event: ResourceEvent, previous: dict[str, Any] | None) -> list[TriggerEvent]:
    """Every trigger this event fires (only those some enabled flow or the lifecycle cares about)."""
    if event.interaction == "delete" or event.resource is None:
        return []
    interaction = infer_interaction(event, previous)
    wanted = engine.wanted_triggers()
    fired: dict[str, TriggerEvent] = {}
    for rule in engine.mappings_for(event.resource_type):
        if rule.trigger in fired or rule.trigger not in wanted or interaction not in rule.interactions:
            continue
        try:
            matched = _matches(engine, rule, event.resource, previous)
        except FhirPathError as exc:
            log.warning("mapping %s on %s failed: %s", rule.trigger, event.reference, exc)
            continue
        if matched:
            fired[rule.trigger] = _trigger_event(engine, rule, event)
    return list(fired.values())


def _matches(engine: Engine, rule: MappingRule, resource: dict[str, Any], previous: dict[str, Any] | None) -> bool:
    if rule.when and not is_true(evaluate(engine.path(rule.when), resource)):
        return False
    if rule.previous:
        if previous is None:
            return rule.previous_missing
        return is_true(evaluate(engine.path(rule.previous), previous))
    return True


def _trigger_event(engine: Engine, rule: MappingRule, event: ResourceEvent) -> TriggerEvent:
    resource = event.resource or {}
    patient = None
    if rule.patient:
        try:
            patient = first_string(evaluate(engine.path(rule.patient), resource))
        except FhirPathError as exc:
            log.warning("patient expression of %s on %s failed: %s", rule.trigger, event.reference, exc)
    if patient and not patient.startswith("Patient/"):
        patient = None
    parameters: dict[str, str] = {}
    for name, expression in sorted(rule.parameters.items()):
        try:
            value = first_string(evaluate(engine.path(expression), resource))
        except FhirPathError:
            value = None
        if value is not None:
            parameters[name] = value
    once_key = f"{rule.trigger}|{patient}" if rule.once_per == "patient" and patient else None
    return TriggerEvent(
        trigger=rule.trigger,
        event=event,
        id=trigger_id(rule.trigger, event),
        patient=patient,
        parameters=parameters,
        once_key=once_key,
    )
