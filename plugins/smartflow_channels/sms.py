"""SMS over a Twilio-compatible REST API: POST .../Messages.json with To / From / Body."""

from __future__ import annotations

from typing import Any

from fhir_smartflow.channels import PATIENT, STAFF, ChannelSpec, DeliveryResult, Medium, OutboundMessage
from fhir_smartflow.config import Settings
from smartflow_channels.twilio_rest import TwilioRest


class SmsChannel:
    name = "sms"
    spec = ChannelSpec(
        reaches=frozenset({PATIENT, STAFF}),
        medium=Medium("SMSWRIT", "SMS message"),  # v3-ParticipationMode: the SMS child of MSGWRIT
        address="phone",
        prefer_use="mobile",
        written=True,
        settings_table="[sms]",
    )

    def __init__(self, client: TwilioRest, from_number: str, status_callback: str = "") -> None:
        self.client = client
        self.from_number = from_number
        self.status_callback = status_callback

    @classmethod
    def from_settings(cls, settings: Settings, options: Any) -> SmsChannel:
        return cls(TwilioRest.from_settings(settings), settings.sms.from_number, settings.sms.status_callback)

    def send(self, message: OutboundMessage) -> DeliveryResult:
        form = {"To": message.to, "From": self.from_number, "Body": message.body}
        if self.status_callback:
            form["StatusCallback"] = self.status_callback
        return self.client.post("Messages", form)
