"""A fax channel as a clinic would add one: this module plus ``[delivery] plugins =
["fax=tests.fax_channel:FaxChannel"]`` and a ``[channels.fax]`` table; nothing in the core names it.

It POSTs ``{to, body, subject, idempotency_key}`` as JSON to ``[channels.fax] url`` (a fax gateway;
in the tests a receiver the test runs) and maps the answer like the built-in channels do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import requests

from fhir_smartflow.channels import (
    PATIENT,
    STAFF,
    ChannelNotConfigured,
    ChannelSpec,
    DeliveryResult,
    Medium,
    OutboundMessage,
)
from fhir_smartflow.config import Settings
from fhir_smartflow.retry import RETRYABLE_STATUS


@dataclass(frozen=True)
class FaxOptions:
    """``[channels.fax]``."""

    url: str = ""
    timeout_seconds: float = 5.0


class FaxChannel:
    name = "fax"
    spec = ChannelSpec(
        reaches=frozenset({PATIENT, STAFF}),
        medium=Medium("FAXWRIT", "telefax"),  # v3-ParticipationMode
        address="fax",  # ContactPoint.system
        written=True,
        options=FaxOptions,
    )

    def __init__(self, url: str, timeout: float) -> None:
        self.url, self.timeout = url, timeout

    @classmethod
    def from_settings(cls, settings: Settings, options: FaxOptions) -> FaxChannel:
        if not options.url:
            raise ChannelNotConfigured("[channels.fax] needs url")
        return cls(options.url, options.timeout_seconds)

    def send(self, message: OutboundMessage) -> DeliveryResult:
        page: dict[str, Any] = {
            "to": message.to,
            "subject": message.subject,
            "body": message.body,
            "idempotency_key": message.idempotency_key,
        }
        try:
            resp = requests.post(self.url, json=page, timeout=self.timeout)
        except requests.RequestException as exc:
            return DeliveryResult.transient(f"{type(exc).__name__} talking to the fax gateway")
        if resp.status_code in (200, 201, 202):
            return DeliveryResult.sent(resp.json().get("id"))
        detail = f"fax gateway HTTP {resp.status_code}"
        if resp.status_code in RETRYABLE_STATUS:
            return DeliveryResult.transient(detail)
        return DeliveryResult.permanent(detail)
