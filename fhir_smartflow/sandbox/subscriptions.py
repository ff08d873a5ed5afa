"""Subscription resources held by the sandbox: reading them, matching changes, building notifications.

Two shapes are understood (see docs/sandbox.md):
- classic R4 rest-hook: ``criteria`` is a search (``Appointment?status=noshow``); the body is the resource
  (``channel.payload`` = a mime type) or empty (no payload);
- R4 Backport topic-based: ``criteria`` is a topic canonical, filters in ``_criteria`` extensions, payload
  content in ``channel._payload``; notifications are Backport ``history`` Bundles.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from fhir_smartflow.fhir.backport import (
    EXT_FILTER,
    EXT_HEARTBEAT,
    EXT_PAYLOAD,
    EXT_TIMEOUT,
    GENERIC_TOPIC,
    PAYLOAD_CONTENTS,
    PROFILE_NOTIFICATION,
    PROFILE_STATUS,
    PROFILE_SUBSCRIPTION,
    TOPIC_BASE,
    TOPIC_FOR_TYPE,
)
from fhir_smartflow.sandbox import search
from fhir_smartflow.sandbox.errors import SandboxError, Unprocessable
from fhir_smartflow.sandbox.profiles import DEFAULT_PROFILE, PROFILES, Profile
from fhir_smartflow.sandbox.secrets import secret_of
from fhir_smartflow.sandbox.store import Change, Store
from fhir_smartflow.sandbox.validation import model_class

# Medplum: the interactions (create | update | delete) a Subscription notifies, one extension each.
EXT_INTERACTION = "https://medplum.com/fhir/StructureDefinition/subscription-supported-interaction"
# Sandbox-only option: deliver classic notifications the way HAPI FHIR does (PUT/DELETE <endpoint>/<Type>/<id>).
EXT_DELIVERY_STYLE = "http://fhir-smartflow.example/StructureDefinition/sandbox-delivery-style"
HAPI_PUT = "hapi-put"

# Built-in topics -> the resource types whose changes they announce; the generic one takes its types
# from the filter criteria.
TOPICS: dict[str, frozenset[str]] = {
    **{url: frozenset({rtype}) for rtype, url in TOPIC_FOR_TYPE.items()},
    GENERIC_TOPIC: frozenset(),
}
CONTENTS = PAYLOAD_CONTENTS
DEFAULT_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class Filter:
    resource_type: str
    query: search.Query


@dataclass(frozen=True)
class SubscriptionSpec:
    id: str
    status: str
    style: str  # backport | classic
    endpoint: str
    headers: tuple[tuple[str, str], ...]
    content: str  # empty | id-only | full-resource
    mime: str
    topic: str
    filters: tuple[Filter, ...]
    heartbeat_seconds: int = 0
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    delivery_style: str = "post"
    version: str = ""
    secret: str = field(default="", repr=False)  # the subscription-secret extension: notifications are signed
    interactions: frozenset[str] = frozenset()  # named by supported-interaction extensions (empty: the default)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def matches(self, change: Change) -> bool:
        for f in self.filters:
            if f.resource_type == change.resource_type and search.matches(
                change.resource_type, change.resource, change.last_updated, f.query
            ):
                return True
        return False


def _extensions(element: Any, url: str) -> list[dict[str, Any]]:
    if not isinstance(element, dict):
        return []
    return [e for e in element.get("extension") or [] if isinstance(e, dict) and e.get("url") == url]


def _parse_criteria(text: str, where: str) -> Filter:
    rtype, _, qs = text.strip().partition("?")
    if model_class(rtype) is None:
        raise Unprocessable(f"{where}: {rtype!r} is not a resource type", expression=where)
    query = search.parse_query(rtype, parse_qsl(qs, keep_blank_values=True))
    if query.ignored:
        raise Unprocessable(f"{where}: search parameters not supported: {', '.join(query.ignored)}", expression=where)
    return Filter(rtype, query)


def _headers(channel: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    result = []
    for i, line in enumerate(channel.get("header") or []):
        name, sep, value = str(line).partition(":")
        if not sep or not name.strip():
            raise Unprocessable(
                f"Subscription.channel.header[{i}] must be 'Name: value'",
                expression=f"Subscription.channel.header[{i}]",
            )
        result.append((name.strip(), value.strip()))
    return tuple(result)


def parse_subscription(resource: dict[str, Any]) -> SubscriptionSpec:
    """Read a (validated) Subscription; raise Unprocessable naming what the sandbox cannot serve."""
    channel = resource.get("channel") or {}
    if channel.get("type") != "rest-hook":
        raise Unprocessable("Subscription.channel.type: only rest-hook is supported", expression="Subscription.channel")
    endpoint = channel.get("endpoint") or ""
    if not endpoint.startswith(("http://", "https://")):
        raise Unprocessable("Subscription.channel.endpoint must be an http(s) URL", expression="Subscription.channel")
    criteria = resource.get("criteria") or ""
    filter_exts = _extensions(resource.get("_criteria"), EXT_FILTER)
    style_exts = _extensions(resource, EXT_DELIVERY_STYLE)
    delivery_style = style_exts[0].get("valueCode", "post") if style_exts else "post"
    if delivery_style not in {"post", HAPI_PUT}:
        raise Unprocessable(f"sandbox-delivery-style must be post or {HAPI_PUT}", expression="Subscription.extension")
    common = {
        "id": resource["id"],
        "status": resource.get("status", "requested"),
        "endpoint": endpoint.rstrip("/") if delivery_style == HAPI_PUT else endpoint,
        "headers": _headers(channel),
        "mime": channel.get("payload") or "",
        "version": str((resource.get("meta") or {}).get("versionId", "")),
        "delivery_style": delivery_style,
        "secret": secret_of(resource),
        "interactions": frozenset(str(e.get("valueCode")) for e in _extensions(resource, EXT_INTERACTION)),
    }
    if criteria.startswith(("http://", "https://")):
        return _parse_backport(resource, channel, criteria, filter_exts, common)
    flt = _parse_criteria(criteria, "Subscription.criteria")
    return SubscriptionSpec(
        style="classic",
        content="full-resource" if common["mime"] else "empty",
        topic="",
        filters=(flt,),
        **common,
    )


def _parse_backport(
    resource: dict[str, Any],
    channel: dict[str, Any],
    topic: str,
    filter_exts: list[dict[str, Any]],
    common: dict[str, Any],
) -> SubscriptionSpec:
    filters = tuple(
        _parse_criteria(str(e.get("valueString", "")), "Subscription._criteria.extension(backport-filter-criteria)")
        for e in filter_exts
    )
    if topic in TOPICS:
        allowed = TOPICS[topic]
        if not filters:
            if not allowed:
                raise Unprocessable(f"topic {topic} needs backport-filter-criteria naming the resource types")
            filters = tuple(Filter(t, search.parse_query(t, [])) for t in sorted(allowed))
        for f in filters:
            if allowed and f.resource_type not in allowed:
                raise Unprocessable(f"filter on {f.resource_type} is outside topic {topic}")
    elif not filters:
        raise Unprocessable(
            f"unknown topic {topic!r} and no backport-filter-criteria; built-in topics: {', '.join(TOPICS)}",
            expression="Subscription.criteria",
        )
    payload_exts = _extensions(channel.get("_payload"), EXT_PAYLOAD)
    content = payload_exts[0].get("valueCode", "empty") if payload_exts else "empty"
    if content not in CONTENTS:
        raise Unprocessable(f"backport-payload-content must be one of {', '.join(CONTENTS)}, got {content!r}")
    heartbeat = _extensions(channel, EXT_HEARTBEAT)
    timeout = _extensions(channel, EXT_TIMEOUT)
    return SubscriptionSpec(
        style="backport",
        content=content,
        topic=topic,
        filters=filters,
        heartbeat_seconds=int(heartbeat[0].get("valueUnsignedInt", 0)) if heartbeat else 0,
        timeout_seconds=float(timeout[0].get("valueUnsignedInt", DEFAULT_TIMEOUT_SECONDS))
        if timeout
        else DEFAULT_TIMEOUT_SECONDS,
        **common,
    )


# ---- notification bodies (R4 Backport) -------------------------------------------------------------


def _status_parameters(
    spec: SubscriptionSpec, base_url: str, kind: str, events_since_start: int, status: str
) -> dict[str, Any]:
    return {
        "resourceType": "Parameters",
        "id": uuid.uuid4().hex,
        "meta": {"profile": [PROFILE_STATUS]},
        "parameter": [
            {"name": "subscription", "valueReference": {"reference": f"{base_url}/Subscription/{spec.id}"}},
            {"name": "topic", "valueCanonical": spec.topic},
            {"name": "status", "valueCode": status},
            {"name": "type", "valueCode": kind},
            {"name": "events-since-subscription-start", "valueString": str(events_since_start)},
        ],
    }


def _bundle(spec: SubscriptionSpec, base_url: str, parameters: dict[str, Any], timestamp: str) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "id": uuid.uuid4().hex,
        "meta": {"profile": [PROFILE_NOTIFICATION]},
        "type": "history",
        "timestamp": timestamp,
        "entry": [
            {
                "fullUrl": f"urn:uuid:{parameters['id']}",
                "resource": parameters,
                "request": {"method": "GET", "url": f"{base_url}/Subscription/{spec.id}/$status"},
                "response": {"status": "200"},
            }
        ],
    }


def status_bundle(
    spec: SubscriptionSpec, base_url: str, kind: str, events_since_start: int, timestamp: str, status: str = "active"
) -> dict[str, Any]:
    """A handshake or heartbeat notification."""
    return _bundle(spec, base_url, _status_parameters(spec, base_url, kind, events_since_start, status), timestamp)


_METHOD = {"create": ("POST", "201"), "update": ("PUT", "200"), "delete": ("DELETE", "204")}


def event_bundle(
    spec: SubscriptionSpec, base_url: str, change: Change, event_number: int, timestamp: str
) -> dict[str, Any]:
    """An event-notification carrying one event, with the payload content the subscription asked for."""
    return events_bundle(spec, base_url, [(event_number, change)], "event-notification", event_number)


def events_bundle(
    spec: SubscriptionSpec,
    base_url: str,
    events: list[tuple[int, Change]],
    kind: str,
    events_since_start: int,
    content: str | None = None,
) -> dict[str, Any]:
    """A notification Bundle with several events (``event-notification``, or ``query-event`` for $events)."""
    content = content or spec.content
    parameters = _status_parameters(spec, base_url, kind, events_since_start, "active")
    bundle = _bundle(spec, base_url, parameters, events[-1][1].last_updated if events else "")
    if not events:
        bundle["timestamp"] = search.instant_key(datetime.now(UTC))
    for number, change in events:
        full_url = f"{base_url}/{change.resource_type}/{change.id}"
        event: list[dict[str, Any]] = [
            {"name": "event-number", "valueString": str(number)},
            {"name": "timestamp", "valueInstant": change.last_updated},
        ]
        if content != "empty":
            event.append({"name": "focus", "valueReference": {"reference": f"{full_url}/_history/{change.version}"}})
        parameters["parameter"].append({"name": "notification-event", "part": event})
        if content == "empty":
            continue
        method, status = _METHOD[change.interaction]
        entry: dict[str, Any] = {
            "fullUrl": full_url,
            "request": {
                "method": method,
                "url": change.resource_type if method == "POST" else f"{change.resource_type}/{change.id}",
            },
            "response": {"status": status},
        }
        if content == "full-resource" and change.interaction != "delete" and change.resource:
            entry["resource"] = change.resource
        bundle["entry"].append(entry)
    return bundle


# ---- subscribing ourselves (embedded `serve`) ------------------------------------------------------


def self_subscription(
    subscription_id: str,
    endpoint: str,
    header: str,
    resource_type: str,
    style: str,
    payload: str,
    heartbeat_seconds: int,
) -> dict[str, Any]:
    channel: dict[str, Any] = {"type": "rest-hook", "endpoint": endpoint, "header": [header]}
    resource: dict[str, Any] = {
        "resourceType": "Subscription",
        "id": subscription_id,
        "status": "requested",
        "reason": f"fhir-smartflow (embedded sandbox): {resource_type} changes",
        "channel": channel,
    }
    if style == "classic":
        resource["criteria"] = f"{resource_type}?"
        if payload != "empty":
            channel["payload"] = "application/fhir+json"
        return resource
    if style != "backport":
        raise ValueError(f"style must be backport or classic, got {style!r}")
    if payload not in CONTENTS:
        raise ValueError(f"payload must be one of {', '.join(CONTENTS)}, got {payload!r}")
    resource["meta"] = {"profile": [PROFILE_SUBSCRIPTION]}
    topic = TOPIC_FOR_TYPE.get(resource_type)
    resource["criteria"] = topic or TOPIC_BASE + "resource-changes"
    resource["_criteria"] = {"extension": [{"url": EXT_FILTER, "valueString": f"{resource_type}?"}]}
    channel["payload"] = "application/fhir+json"
    channel["_payload"] = {"extension": [{"url": EXT_PAYLOAD, "valueCode": payload}]}
    if heartbeat_seconds > 0:
        channel["extension"] = [{"url": EXT_HEARTBEAT, "valueUnsignedInt": heartbeat_seconds}]
    return resource


def ensure_self_subscriptions(
    store: Store,
    endpoint: str,
    secret_header: str,
    secret: str,
    resource_types: list[str],
    style: str = "backport",
    payload: str = "full-resource",
    *,
    heartbeat_seconds: int = 0,
    profile: Profile = PROFILES[DEFAULT_PROFILE],
) -> list[str]:
    """Create (or bring up to date) one Subscription per resource type pointing at ``endpoint``.

    Under a ``profile`` whose server does not activate Subscriptions they are written ``active``; where it
    serves no topic-based Subscriptions, classic ones.

    Ids are deterministic (``smartflow-self-<type>``), so calling this at every start changes nothing
    when nothing changed. Returns the Subscription ids. The secret ends up in ``channel.header`` (that
    is how FHIR rest-hook carries it); anyone who can read the sandbox can read it.
    """
    ids = []
    for rtype in resource_types:
        sid = f"smartflow-self-{rtype.lower()}"
        wanted = self_subscription(
            sid,
            endpoint,
            f"{secret_header}: {secret}",
            rtype,
            style if profile.topic_subscriptions else "classic",
            payload,
            heartbeat_seconds,
        )
        if profile.activation == "client":
            wanted["status"] = "active"
        try:
            current: dict[str, Any] | None = store.read("Subscription", sid)
        except SandboxError:  # not there yet, or deleted
            current = None
        if current is None or _differs(current, wanted):
            store.update("Subscription", sid, wanted)
        ids.append(sid)
    return ids


def _differs(current: dict[str, Any], wanted: dict[str, Any]) -> bool:
    ignore = {"meta", "status", "error"}
    if current.get("status") in {"error", "off"}:
        return True
    return {k: v for k, v in current.items() if k not in ignore} != {
        k: v for k, v in wanted.items() if k not in ignore
    } or (current.get("meta") or {}).get("profile") != (wanted.get("meta") or {}).get("profile")
