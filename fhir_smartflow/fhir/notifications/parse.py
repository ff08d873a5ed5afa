"""(method, path, headers, raw body) → `Notification`: which shape it is, handed to the module of that shape."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from fhir_smartflow.fhir.notifications.body import check_content_type, load_json
from fhir_smartflow.fhir.notifications.entries import check_entries
from fhir_smartflow.fhir.notifications.model import Notification, NotificationError, ParseContext, body_hash, shown
from fhir_smartflow.fhir.notifications.resthook import (
    RESOURCE_BUNDLE_TYPES,
    parse_empty,
    parse_resource,
    parse_resource_bundle,
)
from fhir_smartflow.fhir.notifications.servers import is_medplum, parse_medplum, parse_path_delivery
from fhir_smartflow.fhir.notifications.status import looks_like_status, notification_from_status, parse_status
from fhir_smartflow.fhir.urls import BaseUrl

# Bundle.type of a topic-based notification: history (R4 Backport, R4B), subscription-notification (R5).
STATUS_BUNDLE_TYPES = frozenset({"history", "subscription-notification"})
_STATUS_TYPES = frozenset({"SubscriptionStatus", "Parameters"})


@lru_cache(maxsize=8)
def _base(url: str) -> BaseUrl:
    return BaseUrl(url)


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
    max_events: int | None = None,
    server_base: str | None = None,
    verify: bool = False,
) -> Notification:
    """Parse one delivery; raise `NotificationError` (400 / 413 / 415) for anything we cannot accept.

    ``path_resource`` is the ``<Type>/<id>`` suffix servers like HAPI append to the endpoint, if any;
    ``subscription`` is the configured subscription the delivery authenticated as (it names the
    events); ``delivery_id`` makes bodiless deliveries distinct (they carry nothing to dedupe on).
    ``max_events`` caps the events of one notification (413 beyond it); with ``server_base`` (the
    configured FHIR base URL) every absolute URL naming a resource or the subscription must lie under it.
    ``verify`` is set on every event (the subscription's ``verify``, which the delivery policy also
    enforces: given here, no event has to be copied to carry it).
    """
    if max_body_bytes is not None and len(body) > max_body_bytes:
        raise NotificationError(413, f"body is {len(body)} bytes; the limit is {max_body_bytes}")
    check_content_type(headers, body)
    method = method.upper()
    base = _base(server_base) if server_base else None
    data: Any = None
    if not body.strip():
        # Nothing in the body to tell two deliveries apart: the delivery id does.
        marker = f"{method} {path_resource} {delivery_id}".encode()
        ctx = ParseContext(subscription, received_at, body_hash(marker), max_events, base, verify)
    else:
        ctx = ParseContext(subscription, received_at, body_hash(body), max_events, base, verify)
        data = load_json(body)
        if not isinstance(data, dict):
            raise NotificationError(400, f"body must be a JSON object (a FHIR resource), got {type(data).__name__}")

    if path_resource:
        return parse_path_delivery(method, path_resource, data, headers, ctx)
    if is_medplum(headers):
        return parse_medplum(data, headers, ctx)
    if method == "DELETE":
        raise NotificationError(400, "DELETE needs the resource in the path: <notify path>/<Type>/<id>")
    if data is None:
        return parse_empty(ctx)
    if not data:
        raise NotificationError(400, "body is an empty JSON object and no X-Medplum-Deleted-Resource header was sent")
    rtype = data.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        raise NotificationError(400, "body is not a FHIR resource: it has no resourceType")
    if rtype == "Bundle":
        return _parse_bundle(data, ctx)
    if rtype in _STATUS_TYPES:
        # A bare status (no Bundle): tolerated for status-only notifications.
        status = parse_status(data, "body", ctx)
        status.style = "r4b" if rtype == "SubscriptionStatus" else "backport-r4"
        return notification_from_status(status, [], ctx)
    return parse_resource(data, ctx)


def _parse_bundle(bundle: dict[str, Any], ctx: ParseContext) -> Notification:
    btype = bundle.get("type")
    entries = check_entries(bundle.get("entry", []), ctx)  # absent = empty; null / false / 0 are not a list
    first = entries[0].get("resource") if entries else None
    first_type = first.get("resourceType") if isinstance(first, dict) else None
    is_status = first_type == "SubscriptionStatus" or (first_type == "Parameters" and looks_like_status(first))  # type: ignore[arg-type]
    if btype == "subscription-notification" and first_type != "SubscriptionStatus":
        raise NotificationError(
            400, "Bundle.entry[0]: a subscription-notification must start with a SubscriptionStatus"
        )
    allowed = STATUS_BUNDLE_TYPES if is_status else RESOURCE_BUNDLE_TYPES
    if not isinstance(btype, str) or btype not in allowed:
        what = "a notification with a status" if is_status else "a rest-hook Bundle of resources"
        raise NotificationError(
            400, f"Bundle.type {shown(btype)} is not {what}: expected {' or '.join(sorted(allowed))}"
        )
    if not is_status:
        return parse_resource_bundle(entries, ctx)
    status = parse_status(first, "Bundle.entry[0]", ctx)  # type: ignore[arg-type]
    if first_type == "SubscriptionStatus":
        status.style = "r5" if btype == "subscription-notification" else "r4b"
    fallback_ts = bundle.get("timestamp") if isinstance(bundle.get("timestamp"), str) else None
    if fallback_ts is None:
        meta = first.get("meta") if isinstance(first, dict) else None
        last_updated = meta.get("lastUpdated") if isinstance(meta, dict) else None
        fallback_ts = last_updated if isinstance(last_updated, str) else None
    for event in status.events:
        event.timestamp = event.timestamp or fallback_ts
    return notification_from_status(status, entries[1:], ctx)
