"""The channel registry: what the core knows about a delivery channel, and where channels come from.

A channel is one class — a built-in in ``plugins/smartflow_channels/`` or a clinic's own module — with
``name``, ``spec`` (a ``ChannelSpec``: everything the core needs to know about it) and
``from_settings(settings, options)`` building the sender, whose ``send(message)`` reports a
``DeliveryResult``. The registry has the shape of rq's serializers: a Protocol (``ChannelClass``), an alias
map of the built-ins, and a resolver that also takes entry points (group ``smartflow.channels``) and dotted
paths (``[delivery] plugins = ["fax=clinic_fax:FaxChannel"]``). Adding a channel is one module plus its
entry point or dotted path; nothing in the core names it.

The loader checks flow methods against ``channel_specs`` (the engine gets the specs as data); the
deliverer gets the senders from ``load_channels``. A ``[channels.<name>]`` table holds a plugin's settings,
parsed into its ``spec.options`` dataclass like any config section (unknown keys and wrong types are
errors; ``SMARTFLOW_CHANNELS_<NAME>_<KEY>`` overrides a key).
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

from fhir_smartflow.config import ConfigError, Settings, parse_section

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "smartflow.channels"
PARTICIPATION_MODE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationMode"

# Whom a channel can address. RECORD is the patient's chart itself (a note, not a message).
PATIENT, STAFF, RECORD = "patient", "staff", "record"
# Address kinds besides a telecom system (phone, email, fax, ...): the recipient's FHIR reference, or none.
REFERENCE, NO_ADDRESS = "reference", "none"

# The in-EHR staff message: overdue and failure notices are written as one, with this medium.
STAFF_MESSAGE = "staff-message"

SENT = "sent"
FAILED_PERMANENT = "failed-permanent"
FAILED_TRANSIENT = "failed-transient"


@dataclass(frozen=True)
class Medium:
    """``Communication.medium`` of a channel's messages."""

    code: str
    display: str
    system: str = PARTICIPATION_MODE


ONLINE_WRITTEN = Medium("ONLINEWRIT", "online written")


@dataclass(frozen=True)
class ChannelSpec:
    """What the core needs to know about a channel (its class declares it as ``spec``)."""

    reaches: frozenset[str]  # whom it can address: PATIENT, STAFF (RECORD: the chart, for notes)
    medium: Medium | None = None  # its Communications' medium; None: it writes no Communication
    address: str = NO_ADDRESS  # a telecom system (phone, email, fax, ...), REFERENCE or NO_ADDRESS
    prefer_use: str = ""  # a telecom ``use`` that wins over rank (sms: mobile, landlines cannot text)
    fhir_only: bool = False  # the Communication is the message: no send, no address, no opt-out
    written: bool = False  # delivers written text (what a staff-message action may use)
    options: type[Any] | None = None  # dataclass of its [channels.<name>] table; None: it has none
    settings_table: str = ""  # where a built-in's settings are instead, e.g. "[sms]" (for the error)

    def __post_init__(self) -> None:
        if not self.reaches or not self.reaches <= {PATIENT, STAFF, RECORD}:
            raise ValueError(f"reaches must name some of {PATIENT}, {STAFF}, {RECORD}, got {set(self.reaches)}")
        if self.fhir_only != (self.address == NO_ADDRESS):
            raise ValueError("a FHIR-only channel has no address, and a channel that sends needs one")
        if (self.medium is None) != (self.reaches == {RECORD}):
            raise ValueError("a channel reaching patients or staff writes a Communication: give it a medium")


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


class ChannelNotConfigured(Exception):
    """The channel lacks required settings (e.g. no SMS account): it is left out of the senders."""


@runtime_checkable
class Channel(Protocol):
    """A sender: one ``OutboundMessage`` in, one provider call, one ``DeliveryResult`` out."""

    name: str
    spec: ChannelSpec

    def send(self, message: OutboundMessage) -> DeliveryResult: ...


@runtime_checkable
class ChannelClass(Protocol):
    """What the registry resolves a name to: a channel class."""

    name: str
    spec: ChannelSpec

    def from_settings(self, settings: Settings, options: Any) -> Channel: ...


# Paths, not classes: the plugins sit above the core in the layers (.importlinter).
BUILTIN_CHANNELS: dict[str, str] = {
    "sms": "smartflow_channels.sms:SmsChannel",
    "email": "smartflow_channels.email:EmailChannel",
    "voice": "smartflow_channels.voice:VoiceChannel",
    "portal": "smartflow_channels.fhir_only:PortalChannel",
    "staff-message": "smartflow_channels.fhir_only:StaffMessageChannel",
    "patient-note": "smartflow_channels.fhir_only:PatientNoteChannel",
    "webhook": "smartflow_channels.webhook:WebhookChannel",
}


def import_path(path: str) -> Any:
    """``package.module:Attr`` or ``package.module.Attr``."""
    module_name, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"not a dotted path to a class: {path!r}")
    return getattr(importlib.import_module(module_name), attr)


def resolve_channel_class(name_or_path: str) -> ChannelClass:
    """A channel class by built-in name, entry-point name (group ``smartflow.channels``) or dotted path."""
    if name_or_path in BUILTIN_CHANNELS:
        return _checked(import_path(BUILTIN_CHANNELS[name_or_path]), name_or_path, "built-in")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name_or_path:
            return _checked(ep.load(), ep.name, f"entry point {ep.value}")
    if "." in name_or_path or ":" in name_or_path:
        return _checked(import_path(name_or_path), "", name_or_path)
    raise LookupError(f"no channel named {name_or_path!r} (built-in, entry point or dotted path)")


def channel_spec(name_or_path: str) -> ChannelSpec:
    return resolve_channel_class(name_or_path).spec


def channel_classes(settings: Settings, extra: Sequence[str] = ()) -> dict[str, ChannelClass]:
    """Every known channel class by name: the built-ins, then entry points, then ``[delivery] plugins`` and
    ``extra`` ("name=module:Class"); a later one replaces an earlier one of the same name. A plugin that
    cannot be imported, is not a channel class, or a ``[channels.<name>]`` table no channel takes is a
    ``ConfigError``."""
    classes: dict[str, ChannelClass] = {
        name: _checked(import_path(path), name, "built-in") for name, path in BUILTIN_CHANNELS.items()
    }
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        where = f"entry point {ep.name} = {ep.value!r} ({ENTRY_POINT_GROUP})"
        try:
            loaded = ep.load()
        except (ImportError, AttributeError) as exc:
            raise ConfigError(where, f"cannot be imported: {exc}") from None
        classes[ep.name] = _checked(loaded, ep.name, where)
    for item in [*settings.delivery.plugins, *extra]:
        name, _, path = (part.strip() for part in item.partition("="))
        where = "[delivery] plugins"
        try:
            loaded = import_path(path)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ConfigError(where, f"cannot import {path!r} for channel {name!r}: {exc}") from None
        classes[name] = _checked(loaded, name, f"{where} {item!r}")
    for name in settings.channels:
        if name not in classes:
            raise ConfigError(f"[channels.{name}]", f"no channel named {name!r} (known: {', '.join(classes)})")
    return classes


def channel_options(settings: Settings, name: str, cls: ChannelClass) -> Any:
    """The channel's ``[channels.<name>]`` table as its ``spec.options`` dataclass (None when it has none)."""
    table = settings.channels.get(name)
    options = cls.spec.options
    if options is None:
        if table is not None:
            instead = f"; its settings are in {cls.spec.settings_table}" if cls.spec.settings_table else ""
            raise ConfigError(f"[channels.{name}]", f"the {name} channel takes no settings table{instead}")
        return None
    return parse_section(options, table or {}, f"channels.{name}", os.environ)


def channel_specs(settings: Settings, extra: Sequence[str] = ()) -> dict[str, ChannelSpec]:
    """Every known channel's spec by name (what the loader checks methods against); each channel's
    ``[channels.<name>]`` table is checked on the way, so a typo there fails ``validate`` too."""
    classes = channel_classes(settings, extra)
    for name, cls in classes.items():
        channel_options(settings, name, cls)
    return {name: cls.spec for name, cls in classes.items()}


def load_channels(settings: Settings, extra: Sequence[str] = ()) -> dict[str, Channel]:
    """The senders of every usable channel. A channel that writes no Communication has nothing to send
    and gets none; one whose ``from_settings`` raises ``ChannelNotConfigured`` is left out (logged)."""
    channels: dict[str, Channel] = {}
    for name, cls in channel_classes(settings, extra).items():
        if cls.spec.medium is None:
            continue
        try:
            channel = cls.from_settings(settings, channel_options(settings, name, cls))
        except ChannelNotConfigured as exc:
            log.info("channel %s not available: %s", name, exc)
            continue
        channels[name] = channel
    return channels


def _checked(loaded: Any, name: str, where: str) -> ChannelClass:
    """``loaded`` as a channel class: it has ``name``, a ``ChannelSpec`` ``spec`` and ``from_settings``,
    and its name is the one it is registered under."""
    if not isinstance(loaded, ChannelClass) or not isinstance(loaded.spec, ChannelSpec):
        raise ConfigError(where, f"{loaded!r} is not a channel class (name, spec = ChannelSpec(...), from_settings)")
    if name and loaded.name != name:
        raise ConfigError(where, f"registered as {name!r} but the class is the {loaded.name!r} channel")
    return loaded
