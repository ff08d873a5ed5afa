"""Gap recovery: fetch the events a subscription missed (an event-number jump).

First ``Subscription/<id>/$events?eventsSinceNumber=&eventsUntilNumber=`` (Subscriptions Backport IG:
returns a notification Bundle, type history, first entry the status), else — when the server does not
support the operation — search the subscription's resource type by ``_lastUpdated=ge<since>``.
Recovered events are marked ``source="recovery"`` and go through the same dedupe as any other.

The notification-bundle reader here is deliberately small (R4 ``Parameters`` and R4B/R5
``SubscriptionStatus`` status entries); the ingest's full parser lives in ``ingest/parse.py``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from fhir_smartflow.config import SubscriptionConfig
from fhir_smartflow.events import ResourceEvent
from fhir_smartflow.fhir.client import FhirClient
from fhir_smartflow.fhir.context import parse_criteria
from fhir_smartflow.fhir.errors import FhirError, FhirUrlRejected
from fhir_smartflow.fhir.urls import split_reference

log = logging.getLogger(__name__)


def recover_gap(
    client: FhirClient,
    subscription: SubscriptionConfig,
    gap: dict[str, Any],
    *,
    now: datetime | None = None,
) -> list[ResourceEvent]:
    """Events numbered ``gap["from"]``..``gap["to"]`` (inclusive), or changes since ``gap["since_timestamp"]``."""
    received = (now or datetime.now(UTC)).isoformat()
    try:
        bundle = client.operation(
            f"Subscription/{subscription.id}/$events",
            {"eventsSinceNumber": str(gap["from"]), "eventsUntilNumber": str(gap["to"])},
        )
    except FhirError as exc:
        if exc.transient:
            raise
        log.info("recovery: %s has no usable $events (%s); searching by _lastUpdated", subscription.id, exc.status)
    else:
        events = parse_notification_events(bundle, client, subscription, received)
        if events is not None:
            return events
        log.info("recovery: $events for %s did not answer a notification bundle; searching instead", subscription.id)
    return _search_since(client, subscription, gap.get("since_timestamp"), received)


def _search_since(
    client: FhirClient, subscription: SubscriptionConfig, since: str | None, received: str
) -> list[ResourceEvent]:
    if not subscription.criteria:
        log.warning("recovery: %s has no criteria; cannot search for missed changes", subscription.id)
        return []
    rtype, _ = parse_criteria(subscription.criteria)  # mappings decide what matters: search the whole type
    params = {"_lastUpdated": f"ge{since}"} if since else {}
    events = []
    for resource in client.search(rtype, params):
        if not resource.get("id"):
            continue
        events.append(
            ResourceEvent(
                subscription=subscription.id,
                resource_type=rtype,
                resource_id=str(resource["id"]),
                received_at=received,
                topic=subscription.topic or None,
                version_id=(resource.get("meta") or {}).get("versionId"),
                resource=resource,
                timestamp=(resource.get("meta") or {}).get("lastUpdated"),
                payload_content="full-resource",
                source="recovery",
            )
        )
    return events


def _value(part: dict[str, Any]) -> Any:
    return next((v for k, v in part.items() if k.startswith("value")), None)


def _status_events(status: dict[str, Any]) -> list[dict[str, Any]]:
    """notification-event entries as dicts {event_number, timestamp, focus} from either status shape."""
    found: list[dict[str, Any]] = []
    if status.get("resourceType") == "Parameters":
        for param in status.get("parameter") or []:
            if param.get("name") != "notification-event":
                continue
            parts = {p.get("name"): _value(p) for p in param.get("part") or []}
            focus = parts.get("focus")
            found.append(
                {
                    "event_number": parts.get("event-number"),
                    "timestamp": parts.get("timestamp"),
                    "focus": focus.get("reference") if isinstance(focus, dict) else None,
                }
            )
    elif status.get("resourceType") == "SubscriptionStatus":
        for item in status.get("notificationEvent") or []:
            found.append(
                {
                    "event_number": item.get("eventNumber"),
                    "timestamp": item.get("timestamp"),
                    "focus": (item.get("focus") or {}).get("reference"),
                }
            )
    return found


def parse_notification_events(
    bundle: dict[str, Any], client: FhirClient, subscription: SubscriptionConfig, received: str
) -> list[ResourceEvent] | None:
    """ResourceEvents of a notification Bundle; None when it is not one."""
    entries = bundle.get("entry") or []
    if bundle.get("resourceType") != "Bundle" or not entries:
        return None
    status = entries[0].get("resource") or {}
    if status.get("resourceType") not in {"Parameters", "SubscriptionStatus"}:
        return None
    included: dict[str, dict[str, Any]] = {}
    for entry in entries[1:]:
        resource = entry.get("resource")
        if isinstance(resource, dict) and resource.get("id"):
            included[f"{resource.get('resourceType')}/{resource['id']}"] = resource
    events: list[ResourceEvent] = []
    for item in _status_events(status):
        try:
            relative = client.base.relative(item["focus"]) if item["focus"] else None
            rtype, rid, version = split_reference(relative) if relative else (None, None, None)
        except (FhirUrlRejected, ValueError) as exc:
            log.warning("recovery: skipping event %s with a focus we will not fetch: %s", item["event_number"], exc)
            continue
        if rtype is None:
            continue
        resource = included.get(f"{rtype}/{rid}")
        number = item["event_number"]
        events.append(
            ResourceEvent(
                subscription=subscription.id,
                resource_type=rtype,
                resource_id=rid,
                received_at=received,
                topic=subscription.topic or None,
                event_number=int(number) if str(number or "").isdigit() else None,
                version_id=version or ((resource or {}).get("meta") or {}).get("versionId"),
                resource=resource,
                timestamp=item["timestamp"],
                payload_content="full-resource" if resource else "id-only",
                source="recovery",
            )
        )
    return events
