"""Server-specific deliveries that name the resource outside the body.

- HAPI FHIR (classic rest-hook with a payload): ``PUT <endpoint>/<Type>/<id>`` with the resource, and
  ``DELETE <endpoint>/<Type>/<id>`` with no body.
- Medplum: ``POST`` of the bare resource with ``X-Medplum-Subscription`` / ``X-Medplum-Interaction``; a
  delete is ``{}`` with ``X-Medplum-Deleted-Resource: <Type>/<id>``.

A signature covers the body only (Medplum's HMAC), and a header secret covers nothing, so a resource
or a delete named only by the path or a header is a claim: such events carry ``trusted_content =
False`` (the worker re-reads the resource from the FHIR server and acts on what it has) and the
webhook refuses them unless the subscription allows path-addressed deliveries.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fhir_smartflow.events import Interaction
from fhir_smartflow.fhir.notifications.model import (
    REST_HOOK,
    Notification,
    NotificationError,
    ParseContext,
    header,
    shown,
    version_of,
)
from fhir_smartflow.refs import RESOURCE_ID_RE

MEDPLUM_SUBSCRIPTION = "X-Medplum-Subscription"
MEDPLUM_INTERACTION = "X-Medplum-Interaction"
MEDPLUM_DELETED = "X-Medplum-Deleted-Resource"


def is_medplum(headers: Mapping[str, str]) -> bool:
    return bool(header(headers, MEDPLUM_SUBSCRIPTION) or header(headers, MEDPLUM_DELETED))


def _one(style: str, ctx: ParseContext, event: Any, subscription: str | None = None) -> Notification:
    return Notification(
        kind=REST_HOOK, style=style, events=(event,), subscription=subscription, additional_context=((),)
    )


def parse_path_delivery(
    method: str, path_resource: str, data: dict[str, Any] | None, headers: Mapping[str, str], ctx: ParseContext
) -> Notification:
    """HAPI style: ``PUT|POST|DELETE <endpoint>/<Type>/<id>``."""
    ref = ctx.focus(path_resource, "path")
    style = "medplum" if header(headers, MEDPLUM_SUBSCRIPTION) else "hapi"
    if method == "DELETE" or not data:
        interaction: Interaction | None = "delete" if method == "DELETE" else medplum_interaction(headers)
        event = ctx.event(
            ref.resource_type,
            ref.id,
            version_id=ref.version,
            interaction=interaction,
            payload_content="id-only",
            trusted_content=False,
        )
        return _one(style, ctx, event)
    event = ctx.resource_event(data, "body", medplum_interaction(headers))
    if (event.resource_type, event.resource_id) != (ref.resource_type, ref.id):
        raise NotificationError(
            400,
            f"body is {event.resource_type}/{event.resource_id} but the path names {ref.resource_type}/{ref.id}",
        )
    return _one(style, ctx, event)


def medplum_interaction(headers: Mapping[str, str]) -> Interaction | None:
    value = (header(headers, MEDPLUM_INTERACTION) or "").lower()
    if not value:
        return None
    if value not in {"create", "update", "delete"}:
        raise NotificationError(400, f"{MEDPLUM_INTERACTION} must be create, update or delete, got {shown(value)}")
    return value  # type: ignore[return-value]


def parse_medplum(data: dict[str, Any] | None, headers: Mapping[str, str], ctx: ParseContext) -> Notification:
    subscription = header(headers, MEDPLUM_SUBSCRIPTION)
    if subscription is not None and not RESOURCE_ID_RE.match(subscription):
        raise NotificationError(400, f"{MEDPLUM_SUBSCRIPTION} {shown(subscription)} is not a Subscription id")
    deleted = header(headers, MEDPLUM_DELETED)
    interaction = medplum_interaction(headers)
    if deleted or interaction == "delete":
        # The body ({} or the resource) does not say "deleted": only a header does.
        if deleted:
            ref = ctx.focus(deleted, MEDPLUM_DELETED)
        elif data and data.get("resourceType") and data.get("id"):
            ref = ctx.focus(f"{data['resourceType']}/{data['id']}", "body")
            ref = ref._replace(version=version_of(data))
        else:
            raise NotificationError(400, f"{MEDPLUM_INTERACTION}: delete without {MEDPLUM_DELETED} or a resource")
        event = ctx.event(
            ref.resource_type,
            ref.id,
            version_id=ref.version,
            interaction="delete",
            payload_content="id-only",
            trusted_content=False,
        )
    elif not data:
        raise NotificationError(400, f"Medplum delivery without a resource and without {MEDPLUM_DELETED}")
    else:
        event = ctx.resource_event(data, "body", interaction)
    return _one("medplum", ctx, event, subscription)
