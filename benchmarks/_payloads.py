"""Realistic notification payloads: Subscriptions R4 Backport IG event-notification Bundles.

Shape (Backport IG 1.1, R4): a ``history`` Bundle whose first entry is the subscription status
``Parameters`` (subscription, topic, status, type, events-since-subscription-start as valueString,
one ``notification-event`` part per event: event-number, timestamp, focus), followed by the focus
resource (``full-resource``) or just its fullUrl + request/response (``id-only``).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

Content = Literal["full-resource", "id-only", "empty"]

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
DEFAULT_TOPIC = "http://example.org/fhir/SubscriptionTopic/patient-create"
FIRST_NAMES = ("Avery", "Jordan", "Riley", "Morgan", "Casey", "Quinn", "Rowan", "Sage")
LAST_NAMES = ("Okafor", "Lindqvist", "Haddad", "Nakamura", "Castillo", "Moreau", "Petrov", "Adeyemi")


def now_instant() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def patient(
    patient_id: str,
    index: int = 0,
    version: str = "1",
    family: str | None = None,
    given: str | None = None,
    phone: str | None = None,
) -> dict[str, Any]:
    """A US-Core-looking adult Patient (realistic size: identifiers, name, telecom, address)."""
    return {
        "resourceType": "Patient",
        "id": patient_id,
        "meta": {"versionId": version, "lastUpdated": now_instant()},
        "identifier": [
            {
                "use": "usual",
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
                "system": "urn:oid:2.16.840.1.113883.19.5",
                "value": f"MRN{100000 + index}",
            }
        ],
        "active": True,
        "name": [
            {
                "use": "official",
                "family": family or LAST_NAMES[index % len(LAST_NAMES)],
                "given": [given or FIRST_NAMES[index % len(FIRST_NAMES)]],
            }
        ],
        "telecom": [
            {"system": "phone", "value": phone or f"+1555{index % 10_000_000:07d}", "use": "mobile"},
            {"system": "email", "value": f"patient{index}@example.org", "use": "home"},
        ],
        "gender": ("female", "male", "other")[index % 3],
        "birthDate": f"{1950 + index % 50}-0{1 + index % 9}-1{index % 9}",
        "address": [{"line": [f"{index} Main St"], "city": "Springfield", "state": "IL", "postalCode": "62701"}],
    }


def backport_notification(
    fhir_base: str,
    subscription_id: str,
    event_number: int,
    focus: dict[str, Any] | str,
    content: Content = "full-resource",
    topic: str = DEFAULT_TOPIC,
    notification_type: str = "event-notification",
    timestamp: str | None = None,
) -> dict[str, Any]:
    """An R4 Backport notification Bundle carrying one event about ``focus`` (a resource or "Type/id")."""
    if isinstance(focus, dict):
        reference = f"{focus['resourceType']}/{focus['id']}"
        resource: dict[str, Any] | None = focus
    else:
        reference, resource = focus, None
    full_url = f"{fhir_base.rstrip('/')}/{reference}"
    ts = timestamp or now_instant()
    status_params: list[dict[str, Any]] = [
        {
            "name": "subscription",
            "valueReference": {"reference": f"{fhir_base.rstrip('/')}/Subscription/{subscription_id}"},
        },
        {"name": "topic", "valueCanonical": topic},
        {"name": "status", "valueCode": "active"},
        {"name": "type", "valueCode": notification_type},
        {"name": "events-since-subscription-start", "valueString": str(event_number)},
    ]
    entries: list[dict[str, Any]] = []
    if notification_type == "event-notification":
        event_parts: list[dict[str, Any]] = [
            {"name": "event-number", "valueString": str(event_number)},
            {"name": "timestamp", "valueInstant": ts},
        ]
        if content != "empty":
            event_parts.append({"name": "focus", "valueReference": {"reference": full_url}})
            focus_entry: dict[str, Any] = {
                "fullUrl": full_url,
                "request": {"method": "POST", "url": reference.split("/")[0]},
                "response": {"status": "201"},
            }
            if content == "full-resource" and resource is not None:
                focus_entry["resource"] = resource
            entries.append(focus_entry)
        status_params.append({"name": "notification-event", "part": event_parts})
    status_entry = {
        "fullUrl": f"urn:uuid:{uuid.uuid4()}",
        "resource": {
            "resourceType": "Parameters",
            "id": str(uuid.uuid4()),
            "meta": {"profile": [f"{BACKPORT}/backport-subscription-status-r4"]},
            "parameter": status_params,
        },
        "request": {"method": "GET", "url": f"{fhir_base.rstrip('/')}/Subscription/{subscription_id}/$status"},
        "response": {"status": "200"},
    }
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {
            "lastUpdated": ts,
            "profile": [f"{BACKPORT}/backport-subscription-notification-r4"],
        },
        "type": "history",
        "timestamp": ts,
        "entry": [status_entry, *entries],
    }


def handshake(fhir_base: str, subscription_id: str, topic: str = DEFAULT_TOPIC) -> dict[str, Any]:
    return backport_notification(fhir_base, subscription_id, 0, "Patient/none", "empty", topic, "handshake")


def encode(resource: dict[str, Any]) -> bytes:
    return json.dumps(resource, separators=(",", ":")).encode()


FHIR_JSON_HEADERS = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
