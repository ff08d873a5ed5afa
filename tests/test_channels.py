"""Channel plugins against real local servers: Twilio-shaped HTTP, aiosmtpd SMTP, a webhook receiver."""

from __future__ import annotations

import email
import email.policy
import json
from datetime import UTC, datetime

import pytest
from aiosmtpd.controller import Controller
from smartflow_channels.base import (
    FAILED_PERMANENT,
    FAILED_TRANSIENT,
    PATIENT,
    SENT,
    ChannelSpec,
    DeliveryResult,
    Medium,
    OutboundMessage,
    load_channels,
    resolve_channel_class,
)
from smartflow_channels.email import EmailChannel, message_id
from smartflow_channels.voice import twiml_say
from smartflow_channels.webhook import SIGNATURE_HEADER, verify

from fhir_smartflow.config import EmailConfig, Settings, SmsConfig, WebhookChannelConfig
from tests.support.channels import SID, TOKEN, TwilioFake
from tests.support.net import Receiver, free_port

pytestmark = pytest.mark.integration

NOW = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)


def msg(channel: str, to: str, body: str = "Your forms are ready", subject: str | None = None) -> OutboundMessage:
    return OutboundMessage(channel=channel, to=to, body=body, subject=subject, idempotency_key=f"flow/a/{channel}/1")


@pytest.fixture
def twilio(monkeypatch, serve_app):
    fake = TwilioFake()
    monkeypatch.setenv("TEST_SMS_TOKEN", TOKEN)
    base = serve_app(fake.app).url
    settings = Settings(
        sms=SmsConfig(base_url=base, account_sid=SID, from_number="+15550000000", token_env="TEST_SMS_TOKEN")
    )
    fake.channels = load_channels(settings)
    return fake


def test_registry_builds_only_configured_channels(twilio):
    assert sorted(twilio.channels) == ["portal", "sms", "staff-message", "voice"]  # no SMTP host, no webhook url
    assert twilio.channels["portal"].send(msg("portal", "")).status == SENT


class EchoChannel:
    name = "echo"
    spec = ChannelSpec(reaches=frozenset({PATIENT}), medium=Medium("ELECTRONIC", "electronic data"), address="email")

    @classmethod
    def from_settings(cls, settings, options):
        return cls()

    def send(self, message):
        return DeliveryResult.sent(f"echo-{message.idempotency_key}")


def test_registry_loads_dotted_path_plugins_and_rejects_unknown():
    channels = load_channels(Settings(), extra=["echo=tests.test_channels:EchoChannel"])
    assert channels["echo"].send(msg("echo", "x")).provider_id == "echo-flow/a/echo/1"
    assert resolve_channel_class("smartflow_channels.sms.SmsChannel").name == "sms"
    with pytest.raises(LookupError):
        resolve_channel_class("pager")


def test_sms_posts_the_provider_form_with_basic_auth(twilio):
    result = twilio.channels["sms"].send(msg("sms", "+15552220000"))
    assert result.status == SENT and result.provider_id.startswith("SM")
    assert twilio.requests == [
        ("Messages", {"To": "+15552220000", "From": "+15550000000", "Body": "Your forms are ready"})
    ]


def test_sms_maps_429_and_5xx_to_transient_with_retry_after(twilio):
    twilio.script = [(429, {"Retry-After": "7"}, {"code": 20429, "message": "Too Many Requests"}), (503, {}, {})]
    first = twilio.channels["sms"].send(msg("sms", "+15552220000"))
    assert (first.status, first.retry_after) == (FAILED_TRANSIENT, 7.0)
    assert "20429" in first.error
    assert twilio.channels["sms"].send(msg("sms", "+15552220000")).status == FAILED_TRANSIENT


def test_sms_maps_4xx_to_permanent_with_the_provider_message(twilio):
    twilio.script = [
        (400, {}, {"code": 21211, "message": "The 'To' number is not a valid phone number.", "status": 400})
    ]
    result = twilio.channels["sms"].send(msg("sms", "+1555"))
    assert result.status == FAILED_PERMANENT
    assert result.error == "provider HTTP 400 21211: The 'To' number is not a valid phone number."


def test_wrong_credentials_are_permanent(twilio, monkeypatch):
    monkeypatch.setenv("TEST_SMS_TOKEN", "wrong")
    base = twilio.channels["sms"].client.base_url
    settings = Settings(
        sms=SmsConfig(base_url=base, account_sid=SID, from_number="+15550000000", token_env="TEST_SMS_TOKEN")
    )
    result = load_channels(settings)["sms"].send(msg("sms", "+15552220000"))
    assert result.status == FAILED_PERMANENT and "401" in result.error


def test_voice_call_carries_escaped_twiml(twilio):
    result = twilio.channels["voice"].send(msg("voice", "+15552220000", body="Dr. Tom & Jerry <clinic> says hi"))
    assert result.status == SENT and result.provider_id.startswith("CA")
    resource, form = twilio.requests[0]
    assert resource == "Calls"
    assert (
        form["Twiml"] == '<Response><Say language="en-US">Dr. Tom &amp; Jerry &lt;clinic&gt; says hi</Say></Response>'
    )
    assert twiml_say("a", "es-US") == '<Response><Say language="es-US">a</Say></Response>'


def test_provider_unreachable_is_transient():
    from smartflow_channels.sms import SmsChannel
    from smartflow_channels.twilio_rest import TwilioRest

    channel = SmsChannel(TwilioRest(f"http://127.0.0.1:{free_port()}", SID, TOKEN, timeout=1), "+15550000000")
    assert channel.send(msg("sms", "+15552220000")).status == FAILED_TRANSIENT


class Collector:
    def __init__(self) -> None:
        self.envelopes = []

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append(envelope)
        return "250 OK"


def test_email_over_smtp_has_text_and_html_parts():
    handler = Collector()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        settings = Settings(
            email=EmailConfig(
                host="127.0.0.1", port=controller.port, security="none", from_address="clinic@example.org"
            )
        )
        channel = load_channels(settings)["email"]
        result = channel.send(
            msg("email", "pat@example.org", body="Hi Pat,\n\nPlease fill <this> in.", subject="Forms")
        )
    finally:
        controller.stop()
    assert result.status == SENT
    (envelope,) = handler.envelopes
    assert envelope.rcpt_tos == ["pat@example.org"] and envelope.mail_from == "clinic@example.org"
    parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
    assert parsed["Subject"] == "Forms"
    assert parsed["Message-ID"] == message_id("flow/a/email/1", "clinic@example.org") == result.provider_id
    assert parsed.get_content_type() == "multipart/alternative"
    text = parsed.get_body(("plain",)).get_content()
    html = parsed.get_body(("html",)).get_content()
    assert "Please fill <this> in." in text
    assert "<p>Please fill &lt;this&gt; in.</p>" in html


def test_email_server_down_is_transient():
    channel = EmailChannel("127.0.0.1", free_port(), "clinic@example.org", security="none", timeout=1)
    assert channel.send(msg("email", "pat@example.org")).status == FAILED_TRANSIENT


def test_webhook_body_is_signed_and_verifiable(monkeypatch, receiver: Receiver):
    monkeypatch.setenv("TEST_HOOK_SECRET", "s3cret")
    settings = Settings(webhook_channel=WebhookChannelConfig(url=f"{receiver.url}/hook", secret_env="TEST_HOOK_SECRET"))
    result = load_channels(settings)["webhook"].send(msg("webhook", "Patient/1"))
    assert result.status == SENT and result.provider_id == "req-1"
    body, headers = receiver.requests[0].body, receiver.requests[0].headers
    assert verify(body, "s3cret", headers[SIGNATURE_HEADER])
    assert not verify(body, "other", headers[SIGNATURE_HEADER])
    assert not verify(body + b" ", "s3cret", headers[SIGNATURE_HEADER])
    assert json.loads(body)["to"] == "Patient/1" and json.loads(body)["idempotency_key"] == "flow/a/webhook/1"


def _self_signed(tmp_path):
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_email_starttls_against_a_tls_requiring_server(tmp_path):
    import ssl

    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    handler = Collector()
    controller = Controller(
        handler, hostname="127.0.0.1", port=free_port(), tls_context=server_ctx, require_starttls=True
    )
    controller.start()
    try:
        tls = EmailChannel("127.0.0.1", controller.port, "clinic@example.org", "starttls", ssl_context=client_ctx)
        assert tls.send(msg("email", "pat@example.org", subject="Forms")).status == SENT
        plain = EmailChannel("127.0.0.1", controller.port, "clinic@example.org", "none")
        refused = plain.send(msg("email", "pat@example.org", subject="Forms"))
    finally:
        controller.stop()
    assert len(handler.envelopes) == 1
    assert refused.status == FAILED_PERMANENT and "530" in refused.error
