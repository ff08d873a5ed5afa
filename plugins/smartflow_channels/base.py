"""The channel plugin interface and registry (the shape of rq's serializers: a name -> class map plus a
resolver that also accepts a dotted path, and here entry points in the group ``smartflow.channels``).

A channel turns one ``OutboundMessage`` into one provider call and reports a ``DeliveryResult``. It does
not retry, defer, or decide whether to send: ``fhir_smartflow.delivery.deliverer.ChannelDeliverer`` does that.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "smartflow.channels"

SENT = "sent"
FAILED_PERMANENT = "failed-permanent"
FAILED_TRANSIENT = "failed-transient"


class ChannelNotConfigured(Exception):
    """The channel lacks required settings (e.g. no SMS account): it is left out of the registry."""


@dataclass(frozen=True)
class OutboundMessage:
    channel: str
    to: str  # phone number, email address, or the recipient's FHIR reference (webhook)
    body: str
    idempotency_key: str  # the Deliver action's identifier: same key, same message
    subject: str | None = None
    html: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DeliveryResult:
    status: str  # sent | failed-permanent | failed-transient
    provider_id: str | None = None
    error: str = ""
    retry_after: float | None = None  # seconds, when the provider said so

    @classmethod
    def sent(cls, provider_id: str | None = None) -> DeliveryResult:
        return cls(SENT, provider_id=provider_id)

    @classmethod
    def permanent(cls, error: str) -> DeliveryResult:
        return cls(FAILED_PERMANENT, error=error)

    @classmethod
    def transient(cls, error: str, retry_after: float | None = None) -> DeliveryResult:
        return cls(FAILED_TRANSIENT, error=error, retry_after=retry_after)


@runtime_checkable
class Channel(Protocol):
    name: str

    def send(self, message: OutboundMessage) -> DeliveryResult: ...


class ChannelClass(Protocol):
    """What the registry builds channels from: a class with ``from_settings(settings)``."""

    def from_settings(self, settings: Any) -> Channel: ...


BUILTIN_CHANNELS: dict[str, str] = {
    "sms": "smartflow_channels.sms:SmsChannel",
    "voice": "smartflow_channels.voice:VoiceChannel",
    "email": "smartflow_channels.email:EmailChannel",
    "webhook": "smartflow_channels.webhook:WebhookChannel",
    "portal": "smartflow_channels.fhir_only:PortalChannel",
    "staff-message": "smartflow_channels.fhir_only:StaffMessageChannel",
}


def import_path(path: str) -> Any:
    """``package.module:Attr`` or ``package.module.Attr``."""
    module_name, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"not a dotted path to a class: {path!r}")
    return getattr(importlib.import_module(module_name), attr)


def resolve_channel_class(name_or_path: str) -> Any:
    """A channel class by built-in name, entry-point name (group ``smartflow.channels``) or dotted path."""
    if name_or_path in BUILTIN_CHANNELS:
        return import_path(BUILTIN_CHANNELS[name_or_path])
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name_or_path:
            return ep.load()
    if "." in name_or_path or ":" in name_or_path:
        return import_path(name_or_path)
    raise LookupError(f"no channel named {name_or_path!r} (built-in, entry point or dotted path)")


def load_channels(settings: Any, extra: list[str] | None = None) -> dict[str, Channel]:
    """Every usable channel: built-ins, then entry points, then ``[delivery] plugins`` ("name=module:Class"),
    later ones replacing earlier ones of the same name. Channels lacking settings are skipped (logged)."""
    loaders: dict[str, Any] = {name: (lambda p=path: import_path(p)) for name, path in BUILTIN_CHANNELS.items()}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        loaders[ep.name] = ep.load
    for item in [*getattr(getattr(settings, "delivery", None), "plugins", []), *(extra or [])]:
        name, _, path = (part.strip() for part in item.partition("="))
        loaders[name] = lambda p=path: import_path(p)
    channels: dict[str, Channel] = {}
    for name, load in loaders.items():
        try:
            channel = load().from_settings(settings)
        except ChannelNotConfigured as exc:
            log.info("channel %s not available: %s", name, exc)
            continue
        channels[name] = channel
    return channels
