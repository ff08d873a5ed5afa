"""Portal and staff messages: the FHIR Communication is the message (the EHR shows it). No external call."""

from __future__ import annotations

from typing import Any

from smartflow_channels.base import DeliveryResult, OutboundMessage


class FhirOnlyChannel:
    name = "fhir-only"

    @classmethod
    def from_settings(cls, settings: Any) -> FhirOnlyChannel:
        return cls()

    def send(self, message: OutboundMessage) -> DeliveryResult:
        return DeliveryResult.sent()


class PortalChannel(FhirOnlyChannel):
    name = "portal"


class StaffMessageChannel(FhirOnlyChannel):
    name = "staff-message"
