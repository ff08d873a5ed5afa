"""A minimal client for the Twilio-compatible REST shape used by the SMS and voice channels.

Plain ``requests`` instead of the twilio SDK: no extra dependency, and the base URL is ours to set,
so Twilio-compatible providers (SignalWire, Telnyx's compatibility API, ...) and local test servers work.
"""

from __future__ import annotations

from typing import Any

import requests

from fhir_smartflow.channels import ChannelNotConfigured, DeliveryResult
from fhir_smartflow.config import Settings, secret
from fhir_smartflow.retry import RETRYABLE_STATUS, parse_retry_after

API_VERSION = "2010-04-01"


class TwilioRest:
    def __init__(
        self,
        base_url: str,
        account_sid: str,
        token: str,
        timeout: float = 10.0,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.account_sid = account_sid
        self.token = token
        self.timeout = timeout
        self.session = session or requests.Session()

    @classmethod
    def from_settings(cls, settings: Settings) -> TwilioRest:
        cfg = settings.sms
        token = secret(cfg.token_env)
        missing = [k for k, v in (("account_sid", cfg.account_sid), ("from_number", cfg.from_number)) if not v]
        if missing or token is None:
            raise ChannelNotConfigured(f"[sms] needs {', '.join(missing) or ''} and ${cfg.token_env}".strip())
        return cls(cfg.base_url, cfg.account_sid, token, cfg.timeout_seconds)

    def post(self, resource: str, form: dict[str, str]) -> DeliveryResult:
        """POST {base}/2010-04-01/Accounts/{sid}/{resource}.json; map the answer to a DeliveryResult."""
        url = f"{self.base_url}/{API_VERSION}/Accounts/{self.account_sid}/{resource}.json"
        try:
            resp = self.session.post(url, data=form, auth=(self.account_sid, self.token), timeout=self.timeout)
        except requests.RequestException as exc:
            return DeliveryResult.transient(f"{type(exc).__name__} talking to the provider")
        if resp.status_code in (200, 201):
            return DeliveryResult.sent(_json(resp).get("sid"))
        detail = _error(resp)
        if resp.status_code in RETRYABLE_STATUS:
            return DeliveryResult.transient(detail, parse_retry_after(resp.headers.get("Retry-After")))
        return DeliveryResult.permanent(detail)


def _json(resp: requests.Response) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _error(resp: requests.Response) -> str:
    body = _json(resp)
    code = f" {body['code']}" if body.get("code") else ""
    message = body.get("message") or resp.reason or "error"
    return f"provider HTTP {resp.status_code}{code}: {message}"
