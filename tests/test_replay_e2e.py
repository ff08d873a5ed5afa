"""Replays with the real parts (the `sandbox` store, `serve`, a `worker`, Redis, a Twilio-shaped
provider): a captured notification delivered again after every Redis record of it expired must not
text the patient again nor write anything again. What stops it is durable: the Communication the
store keeps as completed, and the deterministic identifiers of every write."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from fhir_smartflow.metrics import Metrics
from tests.support.channels import TwilioFake
from tests.support.lifecycle import PREFIX, Stack, medium, next_local, sms_config
from tests.support.net import wait_for
from tests.support.relay import Relay, subscribe_through

pytestmark = pytest.mark.integration

# What TTL expiry takes away, the longest-lived last (prior state: 90 days): the dedupe claims, the send
# claims, the per-job outcome markers and the prior state the trigger compares with.
EXPIRING = ("dedupe:*", "delivery:*", "delivery-attempts:*", "outcome:*", "prior:*")


def expire_redis_records(conn: redis.Redis) -> int:
    gone = 0
    for pattern in EXPIRING:
        for key in conn.scan_iter(f"{PREFIX}{pattern}"):
            gone += conn.delete(key)
    return gone


def stored(stack: Stack) -> set[tuple[str, str, str]]:
    """Every resource our flows write, with its version: a second write shows as a new row."""
    out = set()
    for rtype in ("Communication", "Task", "Provenance", "DocumentReference", "Flag"):
        for res in stack.search(rtype):
            out.add((rtype, res["id"], str((res.get("meta") or {}).get("versionId"))))
    return out


def texts(stack: Stack, patient: str) -> list[dict[str, Any]]:
    return [c for c in stack.comms(patient) if medium(c) == "sms"]


def test_a_replay_after_the_redis_records_expired_texts_nobody_twice(start_stack, serve_app) -> None:
    twilio = TwilioFake()
    stack = start_stack(sections=sms_config(serve_app(twilio.app).url))
    relay = Relay(stack.notify, serve_app)
    stack.move_clock(next_local(12))  # daytime: the text goes out at once
    subscribe_through(stack, relay, "Appointment")
    patient = stack.new_patient(phone="+15551230011")
    appointment = stack.appointment(patient, "noshow", datetime.now(UTC) - timedelta(hours=1))

    [text] = wait_for(lambda: [c for c in texts(stack, patient) if c["status"] == "completed"], "texted", stack.log)
    stack.wait_settled()
    assert len(twilio.requests) == 1
    before = stored(stack)
    body, headers = wait_for(lambda: relay.notification_about(appointment), "the no-show notification kept")

    metrics = Metrics(stack.conn, PREFIX)
    processed = metrics.counter_value("events", result="processed")
    assert expire_redis_records(stack.conn) > 0
    assert relay.deliver(body, headers).status_code < 300  # the same signed request, "days later"
    wait_for(lambda: metrics.counter_value("events", result="processed") == processed + 1, "replay run", stack.log)
    stack.wait_settled()

    assert len(twilio.requests) == 1  # never a second text
    assert stored(stack) == before  # nothing created, nothing updated
    [again] = texts(stack, patient)
    assert (again["id"], again["status"]) == (text["id"], "completed")
