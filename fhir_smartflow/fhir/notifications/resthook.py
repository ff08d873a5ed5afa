"""Classic R4 rest-hook deliveries: an empty body ("something matching the criteria changed"), the
changed resource itself, or a ``Bundle`` (``history`` or ``collection``) of resources or delete requests."""

from __future__ import annotations

from typing import Any

from fhir_smartflow.events import ResourceEvent, content_hash
from fhir_smartflow.fhir.notifications.entries import entry_interaction
from fhir_smartflow.fhir.notifications.model import REST_HOOK, Notification, NotificationError, ParseContext

# The Bundle types a classic rest-hook server sends its resources in (never searchset, document, message,
# transaction, batch or their responses: those are not notifications).
RESOURCE_BUNDLE_TYPES = frozenset({"history", "collection"})


def rest_hook(events: list[ResourceEvent]) -> Notification:
    return Notification(
        kind=REST_HOOK, style="rest-hook", events=tuple(events), additional_context=tuple(() for _ in events)
    )


def parse_empty(ctx: ParseContext) -> Notification:
    """Payload "empty": the worker re-queries the subscription's criteria."""
    return rest_hook([ctx.event("", None, payload_content="empty")])


def parse_resource(data: dict[str, Any], ctx: ParseContext) -> Notification:
    return rest_hook([ctx.resource_event(data, "body", interaction=None)])


def parse_resource_bundle(entries: list[dict[str, Any]], ctx: ParseContext) -> Notification:
    """One event per entry: its resource, else the ``Type/id`` its request (or fullUrl) names (id-only)."""
    ctx.check_event_count(len(entries))
    events: list[ResourceEvent] = []
    for i, entry in enumerate(entries):
        where = f"Bundle.entry[{i}]"
        resource = entry.get("resource")
        interaction = entry_interaction(entry)
        if isinstance(resource, dict):
            events.append(ctx.resource_event(resource, where, interaction))
            continue
        request = entry.get("request") or {}
        named = request.get("url") or entry.get("fullUrl")
        if not isinstance(named, str) or not named:
            raise NotificationError(400, f"{where}: has neither a resource nor a <Type>/<id> request url")
        ref = ctx.focus(named, where)
        events.append(
            ctx.event(
                ref.resource_type,
                ref.id,
                version_id=ref.version,
                interaction=interaction,
                payload_content="id-only",
                hashed=content_hash(entry),
            )
        )
    return rest_hook(events)
