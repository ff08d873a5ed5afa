"""The FHIR-only channels: the written resource is the message (the EHR shows it); nothing is sent.

portal and staff-message write a Communication (to the patient's portal, to staff in the EHR);
patient-note writes no Communication at all (the note action's DocumentReference), so it has no sender.
"""

from __future__ import annotations

from typing import Any

from fhir_smartflow.channels import (
    ONLINE_WRITTEN,
    PATIENT,
    RECORD,
    STAFF,
    STAFF_MESSAGE,
    ChannelSpec,
    DeliveryResult,
    OutboundMessage,
)
from fhir_smartflow.config import Settings


class FhirOnlyChannel:
    name = "fhir-only"

    @classmethod
    def from_settings(cls, settings: Settings, options: Any) -> FhirOnlyChannel:
        return cls()

    def send(self, message: OutboundMessage) -> DeliveryResult:
        return DeliveryResult.sent()


class PortalChannel(FhirOnlyChannel):
    name = "portal"
    spec = ChannelSpec(reaches=frozenset({PATIENT}), medium=ONLINE_WRITTEN, fhir_only=True, written=True)


class StaffMessageChannel(FhirOnlyChannel):
    name = STAFF_MESSAGE
    spec = ChannelSpec(reaches=frozenset({STAFF}), medium=ONLINE_WRITTEN, fhir_only=True, written=True)


class PatientNoteChannel(FhirOnlyChannel):
    name = "patient-note"
    spec = ChannelSpec(reaches=frozenset({RECORD}), fhir_only=True)
