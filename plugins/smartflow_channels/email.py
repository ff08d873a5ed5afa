"""Email over SMTP (smtplib): STARTTLS, implicit TLS, or plain (local test servers); text + HTML."""

from __future__ import annotations

import hashlib
import html
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

from fhir_smartflow.channels import (
    PATIENT,
    STAFF,
    ChannelNotConfigured,
    ChannelSpec,
    DeliveryResult,
    Medium,
    OutboundMessage,
)
from fhir_smartflow.config import Settings, secret


def text_to_html(text: str) -> str:
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    body = "".join(f"<p>{html.escape(p).replace(chr(10), '<br>')}</p>" for p in paragraphs)
    return f"<!doctype html><html><body>{body}</body></html>"


def message_id(idempotency_key: str, from_address: str) -> str:
    """Deterministic Message-ID: a resend of the same delivery is recognisably the same message."""
    domain = from_address.rpartition("@")[2] or "fhir-smartflow.local"
    return f"<{hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]}@{domain}>"


class EmailChannel:
    name = "email"
    spec = ChannelSpec(
        reaches=frozenset({PATIENT, STAFF}),
        medium=Medium("EMAILWRIT", "email"),
        address="email",
        written=True,
        settings_table="[email]",
    )

    def __init__(
        self,
        host: str,
        port: int,
        from_address: str,
        security: str = "starttls",
        username: str = "",
        password: str | None = None,
        timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host, self.port, self.from_address = host, port, from_address
        self.security, self.username, self.password = security, username, password
        self.timeout = timeout
        self.ssl_context = ssl_context or ssl.create_default_context()

    @classmethod
    def from_settings(cls, settings: Settings, options: Any) -> EmailChannel:
        cfg = settings.email
        if not cfg.host or not cfg.from_address:
            raise ChannelNotConfigured("[email] needs host and from_address")
        password = secret(cfg.password_env) if cfg.username else None
        return cls(cfg.host, cfg.port, cfg.from_address, cfg.security, cfg.username, password, cfg.timeout_seconds)

    def build(self, message: OutboundMessage) -> EmailMessage:
        email = EmailMessage()
        email["Subject"] = message.subject or ""
        email["From"] = self.from_address
        email["To"] = message.to
        email["Date"] = formatdate(localtime=False)
        email["Message-ID"] = message_id(message.idempotency_key, self.from_address)
        email.set_content(message.body)
        email.add_alternative(message.html or text_to_html(message.body), subtype="html")
        return email

    def send(self, message: OutboundMessage) -> DeliveryResult:
        email = self.build(message)
        try:
            with self._connect() as smtp:
                if self.username:
                    smtp.login(self.username, self.password or "")
                smtp.send_message(email)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            if all(400 <= c < 500 for c in codes):
                return DeliveryResult.transient(f"SMTP recipient deferred ({codes})")
            return DeliveryResult.permanent(f"SMTP recipient refused ({codes})")
        except smtplib.SMTPAuthenticationError as exc:
            return DeliveryResult.permanent(f"SMTP authentication failed ({exc.smtp_code})")
        except smtplib.SMTPResponseException as exc:
            detail = f"SMTP {exc.smtp_code}: {_text(exc.smtp_error)}"
            return DeliveryResult.transient(detail) if 400 <= exc.smtp_code < 500 else DeliveryResult.permanent(detail)
        except (smtplib.SMTPException, OSError) as exc:
            return DeliveryResult.transient(f"SMTP connection problem: {type(exc).__name__}")
        return DeliveryResult.sent(email["Message-ID"])

    def _connect(self) -> smtplib.SMTP:
        if self.security == "ssl":
            return smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=self.ssl_context)
        smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        if self.security == "starttls":
            smtp.starttls(context=self.ssl_context)
        return smtp


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
