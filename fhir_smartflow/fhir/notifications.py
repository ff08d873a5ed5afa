"""Notification parsing: (method, path, headers, raw body) → a `Notification` of `ResourceEvent`s.

Pure: no I/O, no clock (the caller passes ``received_at``). Accepts every shape real servers send:

- Subscriptions R4 Backport IG: ``Bundle`` (type ``history``) whose first entry is a ``Parameters`` status.
- R4B: ``Bundle`` (type ``history``) whose first entry is a ``SubscriptionStatus``.
- R5: ``Bundle`` (type ``subscription-notification``) whose first entry is a ``SubscriptionStatus``.
- Classic R4 rest-hook: empty body, the changed resource itself, or a ``Bundle`` of resources.
- HAPI FHIR: ``PUT|DELETE <endpoint>/<Type>/<id>`` (bare resource / no body).
- Medplum: ``POST`` of the bare resource with ``X-Medplum-Subscription`` / ``X-Medplum-Interaction``;
  a delete is ``{}`` plus ``X-Medplum-Deleted-Resource``.

Anything else raises `NotificationError` with the HTTP status (400 / 413 / 415) and what was wrong.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fhir_smartflow.events import Interaction, PayloadContent, ResourceEvent, content_hash
from fhir_smartflow.refs import RESOURCE_ID_RE, RESOURCE_TYPE_RE, parse_reference

NOTIFICATION_TYPES = ("handshake", "heartbeat", "event-notification", "query-status", "query-event")
# Notification kinds: the five status types above, plus classic rest-hook deliveries.
REST_HOOK = "rest-hook"
ACCEPTED_CONTENT_TYPES = ("application/fhir+json", "application/json")

_METHOD_INTERACTION: dict[str, Interaction] = {
    "POST": "create",
    "PUT": "update",
    "PATCH": "update",
    "DELETE": "delete",
}
_COUNTER_KEYS = (
    "valueString",
    "valueInteger64",
    "valueUnsignedInt",
    "valuePositiveInt",
    "valueInteger",
    "valueDecimal",
)


class NotificationError(Exception):
    """A delivery we cannot accept; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Notification:
    """One webhook delivery, normalized."""

    kind: str  # handshake | heartbeat | event-notification | query-status | query-event | rest-hook
    style: str  # backport-r4 | r4b | r5 | rest-hook | hapi | medplum
    events: tuple[ResourceEvent, ...] = ()
    subscription: str | None = None  # as the server names it: "Subscription/123", or Medplum's header value
    topic: str | None = None
    status: str | None = None  # the subscription's status (active, error, ...) when sent
    events_since_start: int | None = None
    # Per event (same order as ``events``): additional-context references sent with it.
    additional_context: tuple[tuple[str, ...], ...] = field(default=())

    @property
    def subscription_id(self) -> str | None:
        """The logical id of ``subscription`` ("Subscription/abc" → "abc")."""
        if not self.subscription:
            return None
        ref = parse_reference(self.subscription)
        return ref[1] if ref else self.subscription.rstrip("/").rsplit("/", 1)[-1] or None

    @property
    def is_status_only(self) -> bool:
        return self.kind in {"handshake", "heartbeat", "query-status"}


# --------------------------------------------------------------------------------------------- helpers


def _as_counter(value: Any, where: str) -> int | None:
    """Event numbers and counters: integer64 is a JSON string in R4B/R5, and R4 sends valueString."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise NotificationError(400, f"{where}: expected a number, got {value!r}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*\d+(\.0+)?\s*", value):
        number = int(value.strip().split(".")[0])
    else:
        raise NotificationError(400, f"{where}: expected a whole number, got {value!r}")
    if number < 0:
        raise NotificationError(400, f"{where}: must not be negative, got {value!r}")
    return number


def _param_value(param: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if key in param:
            return param[key]
    return None


def _reference_of(value: Any) -> str | None:
    if isinstance(value, Mapping):
        ref = value.get("reference")
        return ref if isinstance(ref, str) and ref else None
    return value if isinstance(value, str) and value else None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value.strip() if isinstance(value, str) else value
    return None


def _body_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()[:32]


def _version_of(resource: Mapping[str, Any] | None) -> str | None:
    meta = resource.get("meta") if isinstance(resource, Mapping) else None
    version = meta.get("versionId") if isinstance(meta, Mapping) else None
    return str(version) if version not in (None, "") else None


def check_content_type(headers: Mapping[str, str], body: bytes) -> None:
    """415 unless the body is empty or declared as FHIR JSON / JSON."""
    if not body.strip():
        return
    declared = (_header(headers, "Content-Type") or "").split(";", 1)[0].strip().lower()
    if declared not in ACCEPTED_CONTENT_TYPES:
        shown = declared or "none"
        raise NotificationError(
            415, f"unsupported content type {shown!r}: send application/fhir+json or application/json"
        )


def _load_json(body: bytes) -> Any:
    try:
        text = body.decode("utf-8-sig")  # FHIR JSON is UTF-8; tolerate a byte-order mark
    except UnicodeDecodeError:
        raise NotificationError(400, "body is not UTF-8 text") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise NotificationError(400, f"body is not valid JSON: {exc}") from None
    except RecursionError:  # a small body can nest deeper than the parser's stack: bad input, not a 500
        raise NotificationError(400, "body is nested too deeply to be a FHIR resource") from None


# --------------------------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class _Context:
    subscription: str
    received_at: str
    body_hash: str


def parse_notification(
    method: str,
    path_resource: str | None,
    headers: Mapping[str, str],
    body: bytes,
    *,
    subscription: str,
    received_at: str,
    delivery_id: str = "",
    max_body_bytes: int | None = None,
) -> Notification:
    """Parse one delivery.

    ``path_resource`` is the ``<Type>/<id>`` suffix servers like HAPI append to the endpoint, if any;
    ``subscription`` is the configured subscription the delivery authenticated as (it names the
    events); ``delivery_id`` makes bodiless deliveries distinct (they carry nothing to dedupe on).
    """
    if max_body_bytes is not None and len(body) > max_body_bytes:
        raise NotificationError(413, f"body is {len(body)} bytes; the limit is {max_body_bytes}")
    check_content_type(headers, body)
    method = method.upper()
    if not body.strip():
        # Nothing in the body to tell two deliveries apart: the delivery id does.
        marker = f"{method} {path_resource} {delivery_id}".encode()
        ctx = _Context(subscription, received_at, _body_hash(marker))
        data: Any = None
    else:
        ctx = _Context(subscription, received_at, _body_hash(body))
        data = _load_json(body)
        if not isinstance(data, dict):
            raise NotificationError(400, f"body must be a JSON object (a FHIR resource), got {type(data).__name__}")

    if path_resource:
        return _parse_path_delivery(method, path_resource, data, headers, ctx)
    if _header(headers, "X-Medplum-Subscription") or _header(headers, "X-Medplum-Deleted-Resource"):
        return _parse_medplum(data, headers, ctx)
    if method == "DELETE":
        raise NotificationError(400, "DELETE needs the resource in the path: <notify path>/<Type>/<id>")
    if data is None:
        # Classic rest-hook with payload "empty": something matching the criteria changed.
        event = _event(ctx, "", None, payload_content="empty")
        return Notification(kind=REST_HOOK, style="rest-hook", events=(event,), additional_context=((),))
    if not data:
        raise NotificationError(400, "body is an empty JSON object and no X-Medplum-Deleted-Resource header was sent")
    rtype = data.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        raise NotificationError(400, "body is not a FHIR resource: it has no resourceType")
    if rtype == "Bundle":
        return _parse_bundle(data, ctx)
    if rtype in {"SubscriptionStatus", "Parameters"}:
        # A bare status (no Bundle): tolerated for status-only notifications.
        status = _parse_status(data, "body")
        return _notification_from_status(status, [], "r4b" if rtype == "SubscriptionStatus" else "backport-r4", ctx)
    event = _resource_event(ctx, data, "body", interaction=None)
    return Notification(kind=REST_HOOK, style="rest-hook", events=(event,), additional_context=((),))


def _event(
    ctx: _Context,
    resource_type: str,
    resource_id: str | None,
    *,
    resource: dict[str, Any] | None = None,
    version_id: str | None = None,
    interaction: Interaction | None = None,
    payload_content: PayloadContent = "full-resource",
    topic: str | None = None,
    event_number: int | None = None,
    timestamp: str | None = None,
    body_hash: str | None = None,
) -> ResourceEvent:
    return ResourceEvent(
        subscription=ctx.subscription,
        resource_type=resource_type,
        resource_id=resource_id,
        received_at=ctx.received_at,
        topic=topic,
        event_number=event_number,
        version_id=version_id or _version_of(resource),
        interaction=interaction,
        resource=resource,
        timestamp=timestamp,
        payload_content=payload_content,
        body_hash=body_hash or ctx.body_hash,
    )


def _resource_event(
    ctx: _Context, resource: dict[str, Any], where: str, interaction: Interaction | None
) -> ResourceEvent:
    rtype, rid = resource.get("resourceType"), resource.get("id")
    if not isinstance(rtype, str) or not RESOURCE_TYPE_RE.match(rtype):
        raise NotificationError(400, f"{where}: resourceType {rtype!r} is not a FHIR resource type")
    if not isinstance(rid, str) or not RESOURCE_ID_RE.match(rid):
        raise NotificationError(400, f"{where}: {rtype} has no valid id (got {rid!r})")
    return _event(ctx, rtype, rid, resource=resource, interaction=interaction, body_hash=content_hash(resource))


def _parse_path_delivery(
    method: str, path_resource: str, data: dict[str, Any] | None, headers: Mapping[str, str], ctx: _Context
) -> Notification:
    """HAPI style: ``PUT|POST|DELETE <endpoint>/<Type>/<id>``."""
    ref = parse_reference(path_resource)
    if ref is None:
        raise NotificationError(400, f"path suffix {path_resource!r} is not <ResourceType>/<id>")
    rtype, rid, version = ref
    style = "medplum" if _header(headers, "X-Medplum-Subscription") else "hapi"
    if method == "DELETE":
        event = _event(ctx, rtype, rid, version_id=version, interaction="delete", payload_content="id-only")
        return Notification(kind=REST_HOOK, style=style, events=(event,), additional_context=((),))
    interaction = _medplum_interaction(headers)
    if not data:
        event = _event(ctx, rtype, rid, version_id=version, interaction=interaction, payload_content="id-only")
        return Notification(kind=REST_HOOK, style=style, events=(event,), additional_context=((),))
    event = _resource_event(ctx, data, "body", interaction)
    if (event.resource_type, event.resource_id) != (rtype, rid):
        raise NotificationError(
            400, f"body is {event.resource_type}/{event.resource_id} but the path names {rtype}/{rid}"
        )
    return Notification(kind=REST_HOOK, style=style, events=(event,), additional_context=((),))


def _medplum_interaction(headers: Mapping[str, str]) -> Interaction | None:
    value = (_header(headers, "X-Medplum-Interaction") or "").lower()
    if not value:
        return None
    if value not in {"create", "update", "delete"}:
        raise NotificationError(400, f"X-Medplum-Interaction must be create, update or delete, got {value!r}")
    return value  # type: ignore[return-value]


def _parse_medplum(data: dict[str, Any] | None, headers: Mapping[str, str], ctx: _Context) -> Notification:
    subscription = _header(headers, "X-Medplum-Subscription")
    deleted = _header(headers, "X-Medplum-Deleted-Resource")
    interaction = _medplum_interaction(headers)
    if deleted or interaction == "delete":
        ref = parse_reference(deleted or "")
        if ref is None and data and data.get("resourceType") and data.get("id"):
            ref = (str(data["resourceType"]), str(data["id"]), _version_of(data))
        if ref is None:
            raise NotificationError(400, f"X-Medplum-Deleted-Resource {deleted!r} is not <ResourceType>/<id>")
        event = _event(ctx, ref[0], ref[1], version_id=ref[2], interaction="delete", payload_content="id-only")
    elif not data:
        raise NotificationError(400, "Medplum delivery without a resource and without X-Medplum-Deleted-Resource")
    else:
        event = _resource_event(ctx, data, "body", interaction)
    return Notification(
        kind=REST_HOOK, style="medplum", events=(event,), subscription=subscription, additional_context=((),)
    )


# --------------------------------------------------------------------------------------------- bundles


@dataclass
class _Status:
    kind: str
    subscription: str | None
    topic: str | None
    status: str | None
    events_since_start: int | None
    events: list[_StatusEvent]
    style: str


@dataclass
class _StatusEvent:
    number: int | None
    timestamp: str | None
    focus: str | None
    additional_context: tuple[str, ...]


def _parse_bundle(bundle: dict[str, Any], ctx: _Context) -> Notification:
    entries = bundle.get("entry", [])  # absent = empty; null / false / 0 are not a list
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise NotificationError(400, "Bundle.entry must be a list of objects")
    first = entries[0].get("resource") if entries else None
    first_type = first.get("resourceType") if isinstance(first, dict) else None
    if bundle.get("type") == "subscription-notification" and first_type != "SubscriptionStatus":
        raise NotificationError(
            400, "Bundle.entry[0]: a subscription-notification must start with a SubscriptionStatus"
        )
    is_status = first_type == "SubscriptionStatus" or (first_type == "Parameters" and _looks_like_status(first))
    if not is_status:
        return _parse_resource_bundle(entries, ctx)
    status = _parse_status(first, "Bundle.entry[0]")  # type: ignore[arg-type]
    if first_type == "SubscriptionStatus":
        status.style = "r5" if bundle.get("type") == "subscription-notification" else "r4b"
    fallback_ts = bundle.get("timestamp") if isinstance(bundle.get("timestamp"), str) else None
    if fallback_ts is None:
        meta = first.get("meta") if isinstance(first, dict) else None
        fallback_ts = meta.get("lastUpdated") if isinstance(meta, dict) else None
    for event in status.events:
        event.timestamp = event.timestamp or fallback_ts
    return _notification_from_status(status, entries[1:], status.style, ctx)


def _looks_like_status(parameters: dict[str, Any]) -> bool:
    names = {p.get("name") for p in parameters.get("parameter") or [] if isinstance(p, dict)}
    return bool(names & {"subscription", "type", "notification-event", "events-since-subscription-start"})


def _parse_status(resource: dict[str, Any], where: str) -> _Status:
    if resource.get("resourceType") == "Parameters":
        return _parse_parameters_status(resource, where)
    kind = resource.get("type")
    _check_kind(kind, f"{where}: SubscriptionStatus.type")
    events = []
    raw_events = resource.get("notificationEvent") or []
    if not isinstance(raw_events, list):
        raise NotificationError(400, f"{where}: SubscriptionStatus.notificationEvent must be a list")
    for i, item in enumerate(raw_events):
        if not isinstance(item, dict):
            raise NotificationError(400, f"{where}: notificationEvent[{i}] must be an object")
        context = tuple(r for r in (_reference_of(c) for c in item.get("additionalContext") or []) if r)
        events.append(
            _StatusEvent(
                number=_as_counter(item.get("eventNumber"), f"{where}: notificationEvent[{i}].eventNumber"),
                timestamp=item.get("timestamp") if isinstance(item.get("timestamp"), str) else None,
                focus=_reference_of(item.get("focus")),
                additional_context=context,
            )
        )
    topic = resource.get("topic")
    return _Status(
        kind=kind,
        subscription=_reference_of(resource.get("subscription")),
        topic=_reference_of(topic),
        status=resource.get("status") if isinstance(resource.get("status"), str) else None,
        events_since_start=_as_counter(
            resource.get("eventsSinceSubscriptionStart"), f"{where}: SubscriptionStatus.eventsSinceSubscriptionStart"
        ),
        events=events,
        style="r4b",
    )


def _check_kind(kind: Any, where: str) -> None:
    if kind not in NOTIFICATION_TYPES:
        if kind is None:
            raise NotificationError(400, f"{where} is missing: one of {', '.join(NOTIFICATION_TYPES)} is required")
        raise NotificationError(400, f"{where} {kind!r} is not one of {', '.join(NOTIFICATION_TYPES)}")


def _parse_parameters_status(resource: dict[str, Any], where: str) -> _Status:
    params = resource.get("parameter") or []
    if not isinstance(params, list):
        raise NotificationError(400, f"{where}: Parameters.parameter must be a list")
    values: dict[str, Any] = {}
    events: list[_StatusEvent] = []
    for i, param in enumerate(params):
        if not isinstance(param, dict):
            raise NotificationError(400, f"{where}: parameter[{i}] must be an object")
        name = param.get("name")
        if name == "notification-event":
            events.append(_parse_event_parts(param.get("part") or [], f"{where}: parameter[{i}]"))
        elif name == "subscription":
            values[name] = _reference_of(param.get("valueReference"))
        elif name == "topic":
            values[name] = _param_value(param, "valueCanonical", "valueUri", "valueString")
        elif name in {"status", "type"}:
            values[name] = _param_value(param, "valueCode", "valueString")
        elif name == "events-since-subscription-start":
            values[name] = _as_counter(_param_value(param, *_COUNTER_KEYS), f"{where}: {name}")
    _check_kind(values.get("type"), f"{where}: parameter 'type'")
    return _Status(
        kind=values["type"],
        subscription=values.get("subscription"),
        topic=values.get("topic"),
        status=values.get("status"),
        events_since_start=values.get("events-since-subscription-start"),
        events=events,
        style="backport-r4",
    )


def _parse_event_parts(parts: Any, where: str) -> _StatusEvent:
    if not isinstance(parts, list):
        raise NotificationError(400, f"{where}: notification-event part must be a list")
    number = timestamp = focus = None
    context: list[str] = []
    for part in parts:
        if not isinstance(part, dict):
            continue
        name = part.get("name")
        if name == "event-number":
            number = _as_counter(_param_value(part, *_COUNTER_KEYS), f"{where}: event-number")
        elif name == "timestamp":
            value = _param_value(part, "valueInstant", "valueDateTime", "valueDate", "valueString")
            timestamp = value if isinstance(value, str) else None
        elif name == "focus":
            focus = _reference_of(part.get("valueReference"))
        elif name == "additional-context":
            ref = _reference_of(part.get("valueReference"))
            if ref:
                context.append(ref)
    return _StatusEvent(number=number, timestamp=timestamp, focus=focus, additional_context=tuple(context))


def _entry_index(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Lookup of bundle entries by fullUrl and by Type/id (resource or request URL)."""
    index: dict[str, dict[str, Any]] = {}
    for entry in entries:
        full_url = entry.get("fullUrl")
        if isinstance(full_url, str) and full_url:
            index[full_url] = entry
            ref = parse_reference(full_url)
            if ref:
                index.setdefault(f"{ref[0]}/{ref[1]}", entry)
        resource = entry.get("resource")
        if isinstance(resource, dict) and resource.get("resourceType") and resource.get("id"):
            index.setdefault(f"{resource['resourceType']}/{resource['id']}", entry)
        request = entry.get("request")
        if isinstance(request, dict):
            ref = parse_reference(str(request.get("url") or ""))
            if ref:
                index.setdefault(f"{ref[0]}/{ref[1]}", entry)
    return index


def _entry_interaction(entry: dict[str, Any] | None) -> Interaction | None:
    request = entry.get("request") if entry else None
    if isinstance(request, dict):
        return _METHOD_INTERACTION.get(str(request.get("method") or "").upper())
    return None


def _notification_from_status(
    status: _Status, entries: list[dict[str, Any]], style: str, ctx: _Context
) -> Notification:
    base = {
        "kind": status.kind,
        "style": style,
        "subscription": status.subscription,
        "topic": status.topic,
        "status": status.status,
        "events_since_start": status.events_since_start,
    }
    if status.kind not in {"event-notification", "query-event"}:
        return Notification(**base)  # type: ignore[arg-type]
    index = _entry_index(entries)
    events: list[ResourceEvent] = []
    contexts: list[tuple[str, ...]] = []
    common = {"topic": status.topic}
    for i, item in enumerate(status.events):
        number, timestamp = item.number, item.timestamp
        if item.focus is None:
            events.append(
                _event(ctx, "", None, payload_content="empty", event_number=number, timestamp=timestamp, **common)
            )
            contexts.append(item.additional_context)
            continue
        entry = index.get(item.focus)
        ref = parse_reference(item.focus)
        if ref is not None and entry is None:
            entry = index.get(f"{ref[0]}/{ref[1]}")
        resource = entry.get("resource") if entry else None
        if ref is None and isinstance(resource, dict):  # focus is a urn:uuid fullUrl
            ref = (str(resource.get("resourceType")), str(resource.get("id")), None)
        if ref is None:
            raise NotificationError(400, f"notification event {i + 1}: focus {item.focus!r} is not <Type>/<id>")
        resource = resource if isinstance(resource, dict) else None
        interaction = _entry_interaction(entry)
        # A delete has no resource to send or fetch; an entry without its resource is fetched later.
        full = entry is not None and (resource is not None or interaction != "delete")
        content: PayloadContent = "full-resource" if full else "id-only"
        events.append(
            _event(
                ctx,
                ref[0],
                ref[1],
                resource=resource,
                version_id=_version_of(resource) or ref[2],
                interaction=interaction,
                payload_content=content,
                event_number=number,
                timestamp=timestamp,
                **common,
            )
        )
        contexts.append(item.additional_context)
    if not status.events:
        events, contexts = _events_without_status_entries(status, entries, ctx)
    return Notification(**base, events=tuple(events), additional_context=tuple(contexts))  # type: ignore[arg-type]


def _events_without_status_entries(
    status: _Status, entries: list[dict[str, Any]], ctx: _Context
) -> tuple[list[ResourceEvent], list[tuple[str, ...]]]:
    """Servers that omit notification-event: one event per resource entry, else one 'empty' event."""
    events: list[ResourceEvent] = []
    for i, entry in enumerate(entries):
        resource = entry.get("resource")
        if isinstance(resource, dict):
            event = _resource_event(ctx, resource, f"Bundle.entry[{i + 1}]", _entry_interaction(entry))
            events.append(dataclasses.replace(event, topic=status.topic))
    if not events:
        events.append(
            _event(ctx, "", None, payload_content="empty", topic=status.topic, event_number=status.events_since_start)
        )
    return events, [() for _ in events]


def _parse_resource_bundle(entries: list[dict[str, Any]], ctx: _Context) -> Notification:
    """Classic rest-hook Bundle of resources (or delete requests)."""
    events: list[ResourceEvent] = []
    for i, entry in enumerate(entries):
        where = f"Bundle.entry[{i}]"
        resource = entry.get("resource")
        interaction = _entry_interaction(entry)
        if isinstance(resource, dict):
            events.append(_resource_event(ctx, resource, where, interaction))
            continue
        ref = parse_reference(str((entry.get("request") or {}).get("url") or entry.get("fullUrl") or ""))
        if ref is None:
            raise NotificationError(400, f"{where}: has neither a resource nor a <Type>/<id> request url")
        content: PayloadContent = "id-only"
        events.append(
            _event(
                ctx,
                ref[0],
                ref[1],
                version_id=ref[2],
                interaction=interaction,
                payload_content=content,
                body_hash=content_hash(entry),
            )
        )
    return Notification(
        kind=REST_HOOK, style="rest-hook", events=tuple(events), additional_context=tuple(() for _ in events)
    )
