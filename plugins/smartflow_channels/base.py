"""The channel plugin interface, where plugins import it from (it lives in ``fhir_smartflow.channels``,
the core's channel registry, so the loader below the plugins can read the channels' specs).

A channel turns one ``OutboundMessage`` into one provider call and reports a ``DeliveryResult``. It does
not retry, defer, or decide whether to send: ``fhir_smartflow.delivery.deliverer.ChannelDeliverer`` does that.
"""

from fhir_smartflow.channels import (
    ENTRY_POINT_GROUP,
    FAILED_PERMANENT,
    FAILED_TRANSIENT,
    NO_ADDRESS,
    PATIENT,
    RECORD,
    REFERENCE,
    SENT,
    STAFF,
    Channel,
    ChannelClass,
    ChannelNotConfigured,
    ChannelSpec,
    DeliveryResult,
    Medium,
    OutboundMessage,
    load_channels,
    resolve_channel_class,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "FAILED_PERMANENT",
    "FAILED_TRANSIENT",
    "NO_ADDRESS",
    "PATIENT",
    "RECORD",
    "REFERENCE",
    "SENT",
    "STAFF",
    "Channel",
    "ChannelClass",
    "ChannelNotConfigured",
    "ChannelSpec",
    "DeliveryResult",
    "Medium",
    "OutboundMessage",
    "load_channels",
    "resolve_channel_class",
]
