"""Backport operations on topic-based subscriptions: ``$status`` and ``$events`` (for gap recovery)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fhir_smartflow.sandbox import search
from fhir_smartflow.sandbox.errors import BadRequest
from fhir_smartflow.sandbox.profiles import DEFAULT_PROFILE, PROFILES, Profile
from fhir_smartflow.sandbox.secrets import without_secrets
from fhir_smartflow.sandbox.store import Store
from fhir_smartflow.sandbox.subscriptions import (
    CONTENTS,
    SubscriptionSpec,
    events_bundle,
    parse_subscription,
    status_bundle,
)

MAX_EVENTS = 1000  # per $events call


def operation_parameters(body: Any) -> dict[str, str]:
    """A Parameters body → {name: value} for the simple (string / code) parameters of $events."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise BadRequest("POST $events takes a Parameters resource")
    values: dict[str, str] = {}
    for p in body.get("parameter") or []:
        if isinstance(p, dict) and isinstance(p.get("name"), str):
            value = next((v for k, v in p.items() if k.startswith("value")), None)
            if value is not None:
                values[p["name"]] = str(value)
    return values


class TopicOperations:
    def __init__(self, store: Store, profile: Profile = PROFILES[DEFAULT_PROFILE]) -> None:
        self.store = store
        self.profile = profile

    def _spec(self, subscription_id: str) -> tuple[SubscriptionSpec, dict[str, Any]]:
        resource = self.store.read("Subscription", subscription_id)
        spec = parse_subscription(resource)
        if spec.style != "backport":
            raise BadRequest(f"Subscription/{subscription_id} is a classic subscription; $status/$events need a topic")
        return spec, resource

    def status(self, subscription_id: str, base_url: str) -> dict[str, Any]:
        """``$status``: a searchset Bundle holding the subscription's status Parameters."""
        spec, resource = self._spec(subscription_id)
        now = search.instant_key(datetime.now(UTC))
        notification = status_bundle(
            spec, base_url, "query-status", self.store.events_count(spec.id), now, resource.get("status", "requested")
        )
        parameters = notification["entry"][0]["resource"]
        return {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": 1,
            "entry": [{"fullUrl": f"urn:uuid:{parameters['id']}", "resource": parameters, "search": {"mode": "match"}}],
        }

    def events(self, subscription_id: str, args: dict[str, str], base_url: str) -> dict[str, Any]:
        """``$events``: the logged events between eventsSinceNumber and eventsUntilNumber (inclusive)."""
        spec, _ = self._spec(subscription_id)
        count = self.store.events_count(spec.id)
        since = _number(args, "eventsSinceNumber", 1)
        until = min(_number(args, "eventsUntilNumber", count), since + MAX_EVENTS - 1)
        content = args.get("content") or spec.content
        if content not in CONTENTS:
            raise BadRequest(f"content must be one of {', '.join(CONTENTS)}, got {content!r}")
        logged = self.store.logged_events(spec.id, since, until)
        logged = [(number, without_secrets(change)) for number, change in logged]
        return events_bundle(spec, base_url, logged, "query-event", count, content)


def _number(args: dict[str, str], name: str, default: int) -> int:
    value = args.get(name)
    if value in (None, ""):
        return default
    if not str(value).isdigit():
        raise BadRequest(f"{name} must be a whole number, got {value!r}")
    return int(value)
