"""The normalized unit of work: one change to one FHIR resource, however it was notified."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

Interaction = Literal["create", "update", "delete"]
PayloadContent = Literal["full-resource", "id-only", "empty"]


@dataclass(frozen=True)
class ResourceEvent:
    """A resource change, from a webhook notification, the poller or gap recovery."""

    subscription: str
    resource_type: str
    resource_id: str | None
    received_at: str  # ISO-8601 UTC instant
    topic: str | None = None
    event_number: int | None = None
    version_id: str | None = None
    interaction: Interaction | None = None
    resource: dict[str, Any] | None = None
    timestamp: str | None = None  # the server's event timestamp, as sent
    payload_content: PayloadContent = "full-resource"
    source: str = "webhook"  # webhook | poll | recovery | replay
    body_hash: str | None = None
    # False: the focus / interaction come only from the request path or headers, which the delivery's
    # authentication does not cover (HAPI's DELETE <endpoint>/<Type>/<id>, Medplum's delete headers).
    # The worker must not act on the claim: it re-reads the focus from the FHIR server and acts on what
    # the server has (docs/ingest.md, "Trust of an event").
    trusted_content: bool = True
    # The subscription asks the worker to confirm the focus exists on the FHIR server at this version
    # before acting ([[subscriptions]] verify).
    verify: bool = False

    @property
    def must_verify(self) -> bool:
        """The worker re-reads the focus from the FHIR server and acts on the server's copy."""
        return self.verify or not self.trusted_content

    @property
    def reference(self) -> str | None:
        return f"{self.resource_type}/{self.resource_id}" if self.resource_id else None

    def dedupe_key(self) -> str:
        """Subscription + focus + versionId; never the event number alone (servers reuse them)."""
        focus = self.reference or self.resource_type
        if self.version_id:
            marker = f"v{self.version_id}"
        elif self.event_number is not None or self.timestamp:
            marker = f"n{self.event_number}@{self.timestamp}"
        else:
            marker = f"h{self.body_hash or content_hash(self.resource)}"
        if self.interaction == "delete":
            marker += ":delete"
        return f"{self.subscription}|{focus}|{marker}"

    def with_resource(self, resource: dict[str, Any]) -> ResourceEvent:
        version = (resource.get("meta") or {}).get("versionId") or self.version_id
        return dataclasses.replace(self, resource=resource, version_id=version)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict. Shallow: ``resource`` is shared, not copied (``asdict`` deep-copied
        the whole resource on the webhook's hot path; every caller serializes the dict right away)."""
        return {f.name: getattr(self, f.name) for f in _FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResourceEvent:
        return cls(**data)


_FIELDS = dataclasses.fields(ResourceEvent)


def content_hash(value: Any) -> str:
    """Stable hash of a JSON value (key order does not matter)."""
    raw = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(raw).hexdigest()[:32]
