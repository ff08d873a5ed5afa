"""What every notification shape produces (`Notification` of `ResourceEvent`s), the error it raises, and
the pieces each shape builds its events with (`ParseContext`, counters, references, resource types)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fhir_smartflow.engine.validation import model_class
from fhir_smartflow.events import Interaction, PayloadContent, ResourceEvent, content_hash
from fhir_smartflow.fhir.errors import FhirUrlRejected
from fhir_smartflow.fhir.urls import BaseUrl
from fhir_smartflow.refs import RESOURCE_ID_RE, RESOURCE_TYPE_RE, Reference, parse_reference

NOTIFICATION_TYPES = ("handshake", "heartbeat", "event-notification", "query-status", "query-event")
EVENT_TYPES = frozenset({"event-notification", "query-event"})
# Notification kinds: the five status types above, plus classic rest-hook deliveries.
REST_HOOK = "rest-hook"
# integer64, the type of event numbers and counters in R4B / R5: anything larger is not a counter.
MAX_COUNTER = 2**63 - 1
_COUNTER_TEXT = re.compile(r"\s*(\d{1,19})(\.0+)?\s*")


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

    @property
    def path_addressed(self) -> bool:
        """Some event names its resource only in the request path or headers, not in the body."""
        return any(not e.trusted_content for e in self.events)


def shown(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters: error texts name what was wrong, not the whole value."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_resource_type(name: Any) -> bool:
    """True for the name of an R4 resource type (the R4B models' list); False for ``Patientx`` or ``Address``."""
    return isinstance(name, str) and bool(RESOURCE_TYPE_RE.match(name)) and model_class(name) is not None


def as_counter(value: Any, where: str) -> int | None:
    """Event numbers and counters: integer64 is a JSON string in R4B/R5, and R4 sends valueString."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise NotificationError(400, f"{where}: expected a number, got {shown(value)}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and (match := _COUNTER_TEXT.fullmatch(value)):
        number = int(match.group(1))
    else:
        raise NotificationError(400, f"{where}: expected a whole number (integer64), got {shown(value)}")
    if not 0 <= number <= MAX_COUNTER:
        raise NotificationError(400, f"{where}: must be between 0 and {MAX_COUNTER}, got {shown(value)}")
    return number


def param_value(param: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if key in param:
            return param[key]
    return None


def optional_string(value: Any, where: str) -> str | None:
    if value is None or isinstance(value, str):
        return value or None
    raise NotificationError(400, f"{where} must be a string, got {shown(value)}")


def reference_of(value: Any, where: str) -> str | None:
    """The ``reference`` of a Reference (or a bare string); None when absent; 400 when present but unusable."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        ref = value.get("reference")
        if isinstance(ref, str) and ref:
            return ref
        raise NotificationError(400, f"{where}: a Reference without a reference string ({shown(value)})")
    if isinstance(value, str) and value:
        return value
    raise NotificationError(400, f"{where} must be a Reference, got {shown(value)}")


def header(headers: Mapping[str, str], name: str) -> str | None:
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value.strip() if isinstance(value, str) else value
    return None


def body_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()[:32]


def version_of(resource: Mapping[str, Any] | None) -> str | None:
    meta = resource.get("meta") if isinstance(resource, Mapping) else None
    version = meta.get("versionId") if isinstance(meta, Mapping) else None
    return str(version) if isinstance(version, str | int) and not isinstance(version, bool) and version != "" else None


@dataclass(frozen=True)
class ParseContext:
    """Per delivery: whom its events belong to, and the limits every shape enforces."""

    subscription: str
    received_at: str
    body_hash: str
    max_events: int | None = None
    server_base: BaseUrl | None = None
    verify: bool = False  # carried on every event (the subscription's [[subscriptions]] verify)

    def check_event_count(self, count: int) -> None:
        if self.max_events is not None and count > self.max_events:
            raise NotificationError(
                413, f"notification carries {count} events; the limit is {self.max_events} per notification"
            )

    def check_url(self, value: str, where: str) -> None:
        """An absolute URL must lie under the configured FHIR base: another server's resources are not ours."""
        if self.server_base is None or "://" not in value:
            return
        try:
            self.server_base.check(value)
        except FhirUrlRejected:
            raise NotificationError(
                400, f"{where}: {shown(value, 120)} is not on the configured FHIR server {self.server_base}"
            ) from None

    def focus(self, value: str, where: str) -> Reference:
        """A focus-like reference ``[base/]Type/id[/_history/v]``: on our server, of an R4 resource type."""
        self.check_url(value, where)
        ref = parse_reference(value)
        if ref is None:
            raise NotificationError(400, f"{where}: {shown(value)} is not a <ResourceType>/<id> reference")
        check_resource_type(ref.resource_type, where)
        return ref

    def event(
        self,
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
        hashed: str | None = None,
        trusted_content: bool = True,
    ) -> ResourceEvent:
        return ResourceEvent(
            subscription=self.subscription,
            resource_type=resource_type,
            resource_id=resource_id,
            received_at=self.received_at,
            topic=topic,
            event_number=event_number,
            version_id=version_id or version_of(resource),
            interaction=interaction,
            resource=resource,
            timestamp=timestamp,
            payload_content=payload_content,
            body_hash=hashed or self.body_hash,
            trusted_content=trusted_content,
            verify=self.verify,
        )

    def resource_event(self, resource: dict[str, Any], where: str, interaction: Interaction | None) -> ResourceEvent:
        """The event of a resource carried in the body."""
        rtype, rid = resource_identity(resource, where)
        return self.event(rtype, rid, resource=resource, interaction=interaction, hashed=content_hash(resource))


def check_resource_type(rtype: Any, where: str) -> None:
    if not is_resource_type(rtype):
        raise NotificationError(400, f"{where}: {shown(rtype)} is not an R4 resource type")


def resource_identity(resource: Mapping[str, Any], where: str) -> tuple[str, str]:
    """(resourceType, id) of a resource in the body; 400 unless both are valid."""
    rtype, rid = resource.get("resourceType"), resource.get("id")
    check_resource_type(rtype, f"{where}: resourceType")
    if not isinstance(rid, str) or not RESOURCE_ID_RE.match(rid):
        raise NotificationError(400, f"{where}: {rtype} has no valid id (got {shown(rid)})")
    return str(rtype), rid
