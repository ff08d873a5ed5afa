"""Topic-based notifications: the Subscriptions R4 Backport IG (``Parameters`` status), R4B and R5
(``SubscriptionStatus``). The status is the Bundle's first entry; each notification event names its
focus, which may have an entry of its own (full-resource) or not (id-only; empty payloads name none).

What the specification requires and we insist on: the status names its subscription (1..1 in every
version), an event-notification or query-event carries events (R5's sst-1; servers that leave the
events out but send the resources are tolerated, one event per resource), a focus with an entry is the
entry's resource (same type, id and, when both say, version).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from fhir_smartflow.events import PayloadContent, ResourceEvent
from fhir_smartflow.fhir.notifications.entries import entry_index, entry_interaction, find_entry
from fhir_smartflow.fhir.notifications.model import (
    EVENT_TYPES,
    NOTIFICATION_TYPES,
    Notification,
    NotificationError,
    ParseContext,
    as_counter,
    optional_string,
    param_value,
    reference_of,
    resource_identity,
    shown,
    version_of,
)
from fhir_smartflow.refs import parse_reference

_COUNTER_KEYS = (
    "valueString",
    "valueInteger64",
    "valueUnsignedInt",
    "valuePositiveInt",
    "valueInteger",
    "valueDecimal",
)
_STATUS_NAMES = frozenset({"subscription", "type", "notification-event", "events-since-subscription-start"})


@dataclass
class StatusEvent:
    number: int | None
    timestamp: str | None
    focus: str | None
    additional_context: tuple[str, ...]


@dataclass
class Status:
    kind: str
    subscription: str | None
    topic: str | None
    status: str | None
    events_since_start: int | None
    events: list[StatusEvent]
    style: str


def looks_like_status(parameters: dict[str, Any]) -> bool:
    params = parameters.get("parameter")
    if not isinstance(params, list):
        return False
    return any(isinstance(p, dict) and isinstance(p.get("name"), str) and p["name"] in _STATUS_NAMES for p in params)


def parse_status(resource: dict[str, Any], where: str, ctx: ParseContext) -> Status:
    if resource.get("resourceType") == "Parameters":
        status = _parse_parameters_status(resource, where, ctx)
    else:
        status = _parse_subscription_status(resource, where, ctx)
    if status.subscription is None:
        raise NotificationError(400, f"{where}: the status names no subscription (required)")
    ctx.check_url(status.subscription, f"{where}: subscription")
    ref = parse_reference(status.subscription)
    if ref is None or ref.resource_type != "Subscription":
        raise NotificationError(400, f"{where}: subscription {shown(status.subscription)} is not a Subscription")
    return status


def _check_kind(kind: Any, where: str) -> str:
    if kind not in NOTIFICATION_TYPES:
        if kind is None:
            raise NotificationError(400, f"{where} is missing: one of {', '.join(NOTIFICATION_TYPES)} is required")
        raise NotificationError(400, f"{where} {shown(kind)} is not one of {', '.join(NOTIFICATION_TYPES)}")
    return str(kind)


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise NotificationError(400, f"{where} must be a list, got {shown(value)}")
    return value


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise NotificationError(400, f"{where} must be an object, got {shown(value)}")
    return value


def _named(value: Any, where: str) -> tuple[dict[str, Any], str]:
    """A Parameters parameter or part: the object and its ``name`` (a string)."""
    param = _object(value, where)
    name = param.get("name")
    if not isinstance(name, str):
        raise NotificationError(400, f"{where}.name must be a string, got {shown(name)}")
    return param, name


def _parse_subscription_status(resource: dict[str, Any], where: str, ctx: ParseContext) -> Status:
    kind = _check_kind(resource.get("type"), f"{where}: SubscriptionStatus.type")
    raw_events = _list(resource.get("notificationEvent"), f"{where}: SubscriptionStatus.notificationEvent")
    ctx.check_event_count(len(raw_events))
    events = []
    for i, raw in enumerate(raw_events):
        at = f"{where}: notificationEvent[{i}]"
        item = _object(raw, at)
        context = tuple(
            r
            for j, c in enumerate(_list(item.get("additionalContext"), f"{at}.additionalContext"))
            if (r := reference_of(c, f"{at}.additionalContext[{j}]"))
        )
        events.append(
            StatusEvent(
                number=as_counter(item.get("eventNumber"), f"{at}.eventNumber"),
                timestamp=optional_string(item.get("timestamp"), f"{at}.timestamp"),
                focus=reference_of(item.get("focus"), f"{at}.focus"),
                additional_context=context,
            )
        )
    return Status(
        kind=kind,
        subscription=reference_of(resource.get("subscription"), f"{where}: SubscriptionStatus.subscription"),
        topic=optional_string(resource.get("topic"), f"{where}: SubscriptionStatus.topic"),
        status=optional_string(resource.get("status"), f"{where}: SubscriptionStatus.status"),
        events_since_start=as_counter(
            resource.get("eventsSinceSubscriptionStart"), f"{where}: SubscriptionStatus.eventsSinceSubscriptionStart"
        ),
        events=events,
        style="r4b",
    )


def _parse_parameters_status(resource: dict[str, Any], where: str, ctx: ParseContext) -> Status:
    params = _list(resource.get("parameter"), f"{where}: Parameters.parameter")
    values: dict[str, Any] = {}
    events: list[StatusEvent] = []
    for i, raw in enumerate(params):
        at = f"{where}: parameter[{i}]"
        param, name = _named(raw, at)
        if name == "notification-event":
            ctx.check_event_count(len(events) + 1)
            events.append(_parse_event_parts(param.get("part"), at, ctx))
        elif name == "subscription":
            values[name] = reference_of(param.get("valueReference"), f"{at} (subscription)")
        elif name == "topic":
            values[name] = optional_string(param_value(param, "valueCanonical", "valueUri", "valueString"), at)
        elif name in {"status", "type"}:
            values[name] = optional_string(param_value(param, "valueCode", "valueString"), at)
        elif name == "events-since-subscription-start":
            values[name] = as_counter(param_value(param, *_COUNTER_KEYS), f"{where}: {name}")
    return Status(
        kind=_check_kind(values.get("type"), f"{where}: parameter 'type'"),
        subscription=values.get("subscription"),
        topic=values.get("topic"),
        status=values.get("status"),
        events_since_start=values.get("events-since-subscription-start"),
        events=events,
        style="backport-r4",
    )


def _parse_event_parts(parts: Any, where: str, ctx: ParseContext) -> StatusEvent:
    number = timestamp = focus = None
    context: list[str] = []
    for j, raw in enumerate(_list(parts, f"{where}: notification-event part")):
        at = f"{where}.part[{j}]"
        part, name = _named(raw, at)
        if name == "event-number":
            number = as_counter(param_value(part, *_COUNTER_KEYS), f"{where}: event-number")
        elif name == "timestamp":
            value = param_value(part, "valueInstant", "valueDateTime", "valueDate", "valueString")
            timestamp = optional_string(value, f"{at} (timestamp)")
        elif name == "focus":
            focus = reference_of(part.get("valueReference"), f"{at} (focus)")
        elif name == "additional-context":
            ref = reference_of(part.get("valueReference"), f"{at} (additional-context)")
            if ref:
                context.append(ref)
    return StatusEvent(number=number, timestamp=timestamp, focus=focus, additional_context=tuple(context))


def notification_from_status(status: Status, entries: list[dict[str, Any]], ctx: ParseContext) -> Notification:
    base = {
        "kind": status.kind,
        "style": status.style,
        "subscription": status.subscription,
        "topic": status.topic,
        "status": status.status,
        "events_since_start": status.events_since_start,
    }
    if status.kind not in EVENT_TYPES:
        return Notification(**base)  # type: ignore[arg-type]
    if not status.events:
        events, contexts = _events_without_status_entries(status, entries, ctx)
    else:
        index = entry_index(entries)
        events = [_focus_event(item, i, index, status.topic, ctx) for i, item in enumerate(status.events)]
        contexts = [item.additional_context for item in status.events]
    for i, refs in enumerate(contexts):
        for ref in refs:
            ctx.check_url(ref, f"notification event {i + 1}: additional-context")
    return Notification(**base, events=tuple(events), additional_context=tuple(contexts))  # type: ignore[arg-type]


def _focus_event(
    item: StatusEvent, i: int, index: dict[str, list[dict[str, Any]]], topic: str | None, ctx: ParseContext
) -> ResourceEvent:
    where = f"notification event {i + 1}"
    common: dict[str, Any] = {"topic": topic, "event_number": item.number, "timestamp": item.timestamp}
    if item.focus is None:
        return ctx.event("", None, payload_content="empty", **common)
    ref = None if item.focus.startswith("urn:") else ctx.focus(item.focus, f"{where}: focus")
    entry = find_entry(index, item.focus, ref)
    resource = entry.get("resource") if entry else None
    if isinstance(resource, dict):
        rtype, rid = resource_identity(resource, f"{where}: the focus' entry")
        if ref is not None and (ref.resource_type, ref.id) != (rtype, rid):
            named = f"{ref.resource_type}/{ref.id}"
            raise NotificationError(400, f"{where}: focus names {named} but its entry is {rtype}/{rid}")
        version = version_of(resource)
        if ref is not None and ref.version and version and ref.version != version:
            raise NotificationError(
                400, f"{where}: focus names version {shown(ref.version)} but its entry is version {shown(version)}"
            )
        ref = ref or parse_reference(f"{rtype}/{rid}")
    if ref is None:
        raise NotificationError(400, f"{where}: focus {shown(item.focus)} names no entry of this Bundle")
    interaction = entry_interaction(entry)
    # A delete has no resource to send or fetch; an entry without its resource is fetched later.
    full = entry is not None and (isinstance(resource, dict) or interaction != "delete")
    content: PayloadContent = "full-resource" if full else "id-only"
    return ctx.event(
        ref.resource_type,
        ref.id,
        resource=resource if isinstance(resource, dict) else None,
        version_id=version_of(resource) or ref.version,
        interaction=interaction,
        payload_content=content,
        **common,
    )


def _events_without_status_entries(
    status: Status, entries: list[dict[str, Any]], ctx: ParseContext
) -> tuple[list[ResourceEvent], list[tuple[str, ...]]]:
    """Servers that omit notification-event but send the resources: one event per resource entry."""
    ctx.check_event_count(len(entries))
    events: list[ResourceEvent] = []
    for i, entry in enumerate(entries):
        resource = entry.get("resource")
        if isinstance(resource, dict):
            event = ctx.resource_event(resource, f"Bundle.entry[{i + 1}]", entry_interaction(entry))
            events.append(dataclasses.replace(event, topic=status.topic))
    if not events:
        raise NotificationError(
            400,
            f"a {status.kind} must carry its events (notification-event / notificationEvent) or the resources "
            "that changed; this one names none",
        )
    return events, [() for _ in events]
