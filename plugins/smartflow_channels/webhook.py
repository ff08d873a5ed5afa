"""Generic webhook: POST the message as JSON, signed with ``X-Smartflow-Signature`` = hex HMAC-SHA256
of the exact request body, keyed with the configured secret."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import requests

from fhir_smartflow.channels import (
    PATIENT,
    REFERENCE,
    STAFF,
    ChannelNotConfigured,
    ChannelSpec,
    DeliveryResult,
    Medium,
    OutboundMessage,
)
from fhir_smartflow.config import Settings, secret
from fhir_smartflow.retry import RETRYABLE_STATUS, parse_retry_after

SIGNATURE_HEADER = "X-Smartflow-Signature"


def sign(body: bytes, key: str) -> str:
    return hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, key: str, signature: str) -> bool:
    """What a receiver does: recompute and compare in constant time."""
    return hmac.compare_digest(sign(body, key), signature or "")


class WebhookChannel:
    name = "webhook"
    spec = ChannelSpec(
        reaches=frozenset({PATIENT, STAFF}),
        medium=Medium("ELECTRONIC", "electronic data"),
        address=REFERENCE,  # the receiver looks the recipient up itself
        settings_table="[webhook_channel]",
    )

    def __init__(self, url: str, key: str, timeout: float = 10.0, session: requests.Session | None = None) -> None:
        self.url, self.key, self.timeout = url, key, timeout
        self.session = session or requests.Session()

    @classmethod
    def from_settings(cls, settings: Settings, options: Any) -> WebhookChannel:
        cfg = settings.webhook_channel
        key = secret(cfg.secret_env)
        if not cfg.url or key is None:
            raise ChannelNotConfigured(f"[webhook_channel] needs url and ${cfg.secret_env}")
        return cls(cfg.url, key, cfg.timeout_seconds)

    def send(self, message: OutboundMessage) -> DeliveryResult:
        body = json.dumps(
            {
                "channel": message.channel,
                "to": message.to,
                "subject": message.subject,
                "body": message.body,
                "idempotency_key": message.idempotency_key,
                "metadata": message.metadata,
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(body, self.key),
            "Idempotency-Key": message.idempotency_key,
        }
        try:
            resp = self.session.post(self.url, data=body, headers=headers, timeout=self.timeout)
        except requests.RequestException as exc:
            return DeliveryResult.transient(f"{type(exc).__name__} posting the webhook")
        if 200 <= resp.status_code < 300:
            return DeliveryResult.sent(resp.headers.get("X-Request-Id"))
        detail = f"webhook HTTP {resp.status_code}"
        if resp.status_code in RETRYABLE_STATUS:
            return DeliveryResult.transient(detail, parse_retry_after(resp.headers.get("Retry-After")))
        return DeliveryResult.permanent(detail)
