"""SMS over a Twilio-compatible REST API: POST .../Messages.json with To / From / Body."""

from __future__ import annotations

from typing import Any

from smartflow_channels.base import DeliveryResult, OutboundMessage
from smartflow_channels.twilio_rest import TwilioRest


class SmsChannel:
    name = "sms"

    def __init__(self, client: TwilioRest, from_number: str, status_callback: str = "") -> None:
        self.client = client
        self.from_number = from_number
        self.status_callback = status_callback

    @classmethod
    def from_settings(cls, settings: Any) -> SmsChannel:
        return cls(TwilioRest.from_settings(settings), settings.sms.from_number, settings.sms.status_callback)

    def send(self, message: OutboundMessage) -> DeliveryResult:
        form = {"To": message.to, "From": self.from_number, "Body": message.body}
        if self.status_callback:
            form["StatusCallback"] = self.status_callback
        return self.client.post("Messages", form)
