"""Voice calls over a Twilio-compatible REST API: POST .../Calls.json with inline TwiML text-to-speech."""

from __future__ import annotations

from typing import Any
from xml.sax.saxutils import escape, quoteattr

from fhir_smartflow.channels import PATIENT, STAFF, ChannelSpec, DeliveryResult, Medium, OutboundMessage
from fhir_smartflow.config import Settings
from smartflow_channels.twilio_rest import TwilioRest


def twiml_say(text: str, language: str = "en-US") -> str:
    """``<Response><Say>…</Say></Response>`` with the text XML-escaped (message bodies are user data)."""
    return f"<Response><Say language={quoteattr(language)}>{escape(text)}</Say></Response>"


class VoiceChannel:
    name = "voice"
    spec = ChannelSpec(
        reaches=frozenset({PATIENT, STAFF}),
        medium=Medium("PHONE", "telephone"),
        address="phone",
        settings_table="[sms]",
    )

    def __init__(
        self, client: TwilioRest, from_number: str, language: str = "en-US", status_callback: str = ""
    ) -> None:
        self.client = client
        self.from_number = from_number
        self.language = language
        self.status_callback = status_callback

    @classmethod
    def from_settings(cls, settings: Settings, options: Any) -> VoiceChannel:
        cfg = settings.sms
        return cls(TwilioRest.from_settings(settings), cfg.from_number, cfg.voice_language, cfg.status_callback)

    def send(self, message: OutboundMessage) -> DeliveryResult:
        form = {"To": message.to, "From": self.from_number, "Twiml": twiml_say(message.body, self.language)}
        if self.status_callback:
            form["StatusCallback"] = self.status_callback
        return self.client.post("Calls", form)
