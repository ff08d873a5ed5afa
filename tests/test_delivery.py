"""ChannelDeliverer: addresses, opt-out, quiet hours (tz / DST), rate limits and retries.

Real Redis for the rate-limit and attempt counters; real HTTP to the Twilio-shaped server for sends.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from fhir.resources.R4B.consent import Consent
from fhir.resources.R4B.patient import Patient
from smartflow_channels.base import load_channels

from fhir_smartflow.channels import channel_spec
from fhir_smartflow.config import DeliveryConfig, Settings, SmsConfig
from fhir_smartflow.connections import Keys
from fhir_smartflow.delivery.deliverer import CHANNEL_CODE_SYSTEM, ChannelDeliverer, resolve_address
from fhir_smartflow.engine.plan import Deliver
from fhir_smartflow.metrics import Metrics
from tests.support.channels import SID, TOKEN, TwilioFake

pytestmark = pytest.mark.integration

DAY = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)  # Monday 10:00 in New York

PATIENT = {
    "resourceType": "Patient",
    "id": "1",
    "active": True,
    "telecom": [
        {"system": "phone", "value": "+15551110000", "use": "home", "rank": 1},
        {"system": "phone", "value": "+15552220000", "use": "mobile", "rank": 2},
        {"system": "email", "value": "old@example.org", "rank": 1, "period": {"end": "2025-01-01"}},
        {"system": "email", "value": "second@example.org", "rank": 3},
        {"system": "email", "value": "first@example.org", "rank": 2},
    ],
}


def consent(*codes: str, status: str = "active", period: dict | None = None, nested: bool = False) -> dict:
    deny = {
        "type": "deny",
        "action": [{"coding": [{"system": CHANNEL_CODE_SYSTEM, "code": c} for c in codes]}],
        **({"period": period} if period else {}),
    }
    provision = {"type": "permit", "provision": [deny]} if nested else deny
    resource = {
        "resourceType": "Consent",
        "id": "c1",
        "status": status,
        "scope": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": "Patient/1"},
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTOUT"}]},
        "provision": provision,
    }
    Consent.model_validate(resource)  # what we document is a valid R4 Consent
    return resource


def deliver(channel: str = "sms", recipient: str = "Patient/1", n: int = 1) -> Deliver:
    return Deliver(
        channel=channel,
        recipient=recipient,
        body="Reminder: your forms are due",
        identifier=f"intake/send/delivery/{channel}{n}",
        communication=f"intake/send/communication/{channel}{n}",
        subject="Forms",
    )


@pytest.fixture
def env(redis_conn, monkeypatch, serve_app):
    fake = TwilioFake()
    monkeypatch.setenv("TEST_SMS_TOKEN", TOKEN)
    sleeps: list[float] = []
    base = serve_app(fake.app).url

    def make(**delivery) -> ChannelDeliverer:
        settings = Settings(
            sms=SmsConfig(base_url=base, account_sid=SID, from_number="+15550000000", token_env="TEST_SMS_TOKEN"),
            delivery=dataclasses.replace(DeliveryConfig(), **delivery),
        )
        return ChannelDeliverer(
            settings,
            load_channels(settings),
            redis_conn,
            Keys("t:"),
            Metrics(redis_conn, "t:"),
            sleep=sleeps.append,
        )

    fake.make, fake.sleeps, fake.metrics = make, sleeps, Metrics(redis_conn, "t:")
    return fake


def test_patient_fixture_is_valid_fhir():
    Patient.model_validate(PATIENT)


def test_sms_goes_to_the_mobile_number_and_is_counted(env):
    outcome = env.make().deliver(deliver(), PATIENT, [], DAY)
    assert outcome.status == "completed" and outcome.provider_id.startswith("SM")
    assert env.requests[0][1]["To"] == "+15552220000"
    assert env.metrics.counter_value("deliveries", channel="sms", status="sent") == 1


def test_address_selection_rank_period_and_practitioner():
    voice, email, sms, webhook = (channel_spec(name) for name in ("voice", "email", "sms", "webhook"))
    assert resolve_address(voice, "Patient/1", PATIENT, DAY) == "+15551110000"  # lowest rank; mobile only wins for sms
    assert resolve_address(email, "Patient/1", PATIENT, DAY) == "first@example.org"  # rank 1 expired
    staff = {"resourceType": "Practitioner", "id": "7", "telecom": [{"system": "email", "value": "dr@example.org"}]}
    assert resolve_address(email, "Practitioner/7", staff, DAY) == "dr@example.org"
    assert resolve_address(sms, "Practitioner/7", staff, DAY) is None
    assert resolve_address(webhook, "Patient/1", PATIENT, DAY) == "Patient/1"


def test_no_address_is_not_done(env):
    outcome = env.make().deliver(deliver(), {"resourceType": "Patient", "id": "1"}, [], DAY)
    assert (outcome.status, outcome.reason) == ("not-done", "no usable phone in Patient.telecom")
    assert outcome.reason_code == "invalid-phone-number"  # CommunicationNotDoneReason
    assert env.requests == []
    email = env.make().deliver(deliver("email"), {"resourceType": "Patient", "id": "1"}, [], DAY)
    assert (email.status, email.reason_code) == ("not-done", "system-error")  # no SMTP host: before the address


def test_unconfigured_channel_is_not_done_and_fhir_only_is_completed(env):
    deliverer = env.make()
    unconfigured = deliverer.deliver(deliver("email"), PATIENT, [], DAY)  # no SMTP host configured
    assert (unconfigured.status, unconfigured.reason_code) == ("not-done", "system-error")
    assert deliverer.deliver(deliver("portal"), PATIENT, [consent("all")], DAY).status == "completed"


def test_opt_out_consent_blocks_the_named_channel_only(env):
    deliverer = env.make()
    blocked = deliverer.deliver(deliver(), PATIENT, [consent("sms")], DAY)
    assert (blocked.status, blocked.reason) == ("not-done", "patient opted out of sms (Consent/c1)")
    assert blocked.reason_code == "patient-objection"
    assert env.requests == []
    assert deliverer.deliver(deliver("voice"), PATIENT, [consent("sms")], DAY).status == "completed"
    assert deliverer.deliver(deliver("voice", n=2), PATIENT, [consent("all", nested=True)], DAY).status == "not-done"
    assert env.metrics.counter_value("deliveries", channel="sms", status="opted-out") == 1


def test_inactive_or_expired_opt_out_does_not_block(env):
    deliverer = env.make()
    assert deliverer.deliver(deliver(n=1), PATIENT, [consent("sms", status="inactive")], DAY).status == "completed"
    expired = consent("sms", period={"start": "2025-01-01", "end": "2025-12-31"})
    assert deliverer.deliver(deliver(n=2), PATIENT, [expired], DAY).status == "completed"
    other = {**consent("sms"), "patient": {"reference": "Patient/2"}}
    assert deliverer.deliver(deliver(n=3), PATIENT, [other], DAY).status == "completed"


def test_opt_out_by_configured_patient_extension(env):
    url = "http://example.org/fhir/StructureDefinition/channel-opt-out"
    patient = {**PATIENT, "extension": [{"url": url, "valueCode": "sms"}]}
    Patient.model_validate(patient)
    outcome = env.make(optout_extension=url).deliver(deliver(), patient, [], DAY)
    assert outcome.status == "not-done" and "Patient extension" in outcome.reason
    assert env.make().deliver(deliver(), patient, [], DAY).status == "completed"  # not configured: ignored


@pytest.mark.parametrize(
    ("now", "resume"),
    [
        (datetime(2026, 3, 3, 3, 0, tzinfo=UTC), datetime(2026, 3, 3, 13, 0, tzinfo=UTC)),  # 22:00 EST -> 08:00 EST
        (datetime(2026, 3, 2, 12, 59, tzinfo=UTC), datetime(2026, 3, 2, 13, 0, tzinfo=UTC)),  # 07:59 -> 08:00
        (datetime(2026, 3, 8, 6, 0, tzinfo=UTC), datetime(2026, 3, 8, 12, 0, tzinfo=UTC)),  # 01:00 EST -> 08:00 EDT
        (datetime(2026, 11, 1, 5, 30, tzinfo=UTC), datetime(2026, 11, 1, 13, 0, tzinfo=UTC)),  # 01:30 EDT -> 08:00 EST
    ],
)
def test_quiet_hours_defer_patient_sms_to_the_next_allowed_local_time(env, now, resume):
    outcome = env.make().deliver(deliver(), PATIENT, [], now)
    assert (outcome.status, outcome.retry_at) == ("deferred", resume)
    assert outcome.reason == "quiet hours (21:00-08:00 America/New_York)"
    assert env.requests == []


def test_quiet_hours_spare_staff_and_daytime(env):
    deliverer = env.make()
    staff = {"resourceType": "Practitioner", "id": "7", "telecom": [{"system": "phone", "value": "+15557770000"}]}
    night = datetime(2026, 3, 3, 3, 0, tzinfo=UTC)
    assert deliverer.deliver(deliver(recipient="Practitioner/7"), staff, [], night).status == "completed"
    assert deliverer.deliver(deliver(n=2), PATIENT, [], datetime(2026, 3, 3, 1, 59, tzinfo=UTC)).status == "completed"
    assert deliverer.deliver(deliver(n=3), PATIENT, [], datetime(2026, 3, 3, 2, 0, tzinfo=UTC)).status == "deferred"


def test_rate_limit_defers_the_overflow_into_later_windows(env):
    deliverer = env.make(sms_per_minute=2)
    outcomes = [deliverer.deliver(deliver(n=i), PATIENT, [], DAY + timedelta(seconds=5)) for i in range(5)]
    assert [o.status for o in outcomes] == ["completed", "completed", "deferred", "deferred", "deferred"]
    assert [o.retry_at for o in outcomes[2:]] == [DAY + timedelta(minutes=1)] * 2 + [DAY + timedelta(minutes=2)]
    assert len(env.requests) == 2
    assert env.metrics.counter_value("deliveries", channel="sms", status="rate-limited") == 3
    # The next window has room again.
    assert deliverer.deliver(deliver(n=9), PATIENT, [], DAY + timedelta(minutes=1)).status == "completed"


def test_429_then_500_are_retried_with_backoff_then_sent(env):
    env.script = [(429, {"Retry-After": "1"}, {"code": 20429, "message": "Too Many Requests"}), (500, {}, {})]
    outcome = env.make().deliver(deliver(), PATIENT, [], DAY)
    assert outcome.status == "completed"
    assert len(env.requests) == 3
    assert env.sleeps[0] == 1.0 and 0 < env.sleeps[1] <= 2.0  # Retry-After honoured, then backoff
    assert env.metrics.counter_value("deliveries", channel="sms", status="failed-transient") == 2


def test_persistent_transient_failure_becomes_scheduled_retry_then_gives_up(env):
    deliverer = env.make(inline_retries=1, max_attempts=3)
    env.script = [(503, {}, {})] * 6
    first = deliverer.deliver(deliver(), PATIENT, [], DAY)
    assert first.status == "retry" and first.retry_at > DAY
    second = deliverer.deliver(deliver(), PATIENT, [], first.retry_at)
    assert second.status == "retry"
    last = deliverer.deliver(deliver(), PATIENT, [], second.retry_at)
    assert last.status == "not-done" and last.reason.startswith("sms delivery failed after 3 attempts")
    assert last.reason_code == "system-error"
    assert len(env.requests) == 6


def test_long_retry_after_is_not_slept_inline(env):
    env.script = [(429, {"Retry-After": "120"}, {})]
    outcome = env.make().deliver(deliver(), PATIENT, [], DAY)
    assert outcome.status == "retry" and outcome.retry_at == DAY + timedelta(seconds=120)
    assert env.sleeps == []


def test_permanent_failure_is_not_done_with_the_provider_error(env):
    env.script = [(400, {}, {"code": 21211, "message": "The 'To' number is not a valid phone number."})]
    outcome = env.make().deliver(deliver(), PATIENT, [], DAY)
    assert (outcome.status, outcome.reason_code) == ("not-done", "system-error")
    # What the provider quotes is hidden: here a harmless field name, elsewhere the number or the text.
    assert outcome.reason == "sms delivery failed: provider HTTP 400 21211: The […] number is not a valid phone number."
    assert len(env.requests) == 1


def test_no_phi_in_info_logs(env, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="fhir_smartflow.delivery.deliverer"):
        env.make().deliver(deliver(), PATIENT, [], DAY)
    info = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)
    assert "intake/send/delivery/sms1" in info
    assert "+1555" not in info and "Reminder" not in info
