"""A worker killed in the middle of a send, with the real parts (the `sandbox` store, `serve`, `worker`
processes, Redis, a Twilio-shaped provider that holds its answer): the send is never repeated, and once
``[delivery] stuck_after_seconds`` have passed it is resolved — the Communication not-done with reason
code ``unknown``, counted in ``stuck_deliveries`` — and `doctor` shows it until then. The event and
delivery metrics add up after the kill."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from fhir_smartflow.metrics import Metrics
from tests.support.channels import HangingTwilio
from tests.support.fhir import clear_faults, fault_state, set_faults
from tests.support.lifecycle import PREFIX, Stack, medium, next_local, sms_config
from tests.support.net import wait_for
from tests.support.service import merged

pytestmark = pytest.mark.integration

STUCK_AFTER = 600


def texts(stack: Stack, patient: str) -> list[dict[str, Any]]:
    return [c for c in stack.comms(patient) if medium(c) == "sms"]


def doctor(stack: Stack) -> dict[str, str]:
    done = stack.run_cli("doctor", "--check", "stuck-deliveries", "--json", env=stack.env, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    [finding] = json.loads(done.stdout)
    return finding


def test_a_send_cut_by_sigkill_is_resolved_as_unknown_and_shown(start_stack, serve_app) -> None:
    twilio = HangingTwilio()
    delivery = {"delivery": {"stuck_after_seconds": STUCK_AFTER}}
    stack = start_stack(sections=merged(sms_config(serve_app(twilio.app).url), delivery))
    stack.move_clock(next_local(12))  # daytime: the text goes out at once
    stack.subscribe("Appointment")
    patient = stack.new_patient(phone="+15551230012")
    stack.appointment(patient, "noshow", datetime.now(UTC) - timedelta(hours=1))

    assert twilio.arrived.wait(30), stack.log()
    stack.workers[0].stop(kill=True)  # SIGKILL while the provider holds the send
    twilio.release.set()
    [text] = texts(stack, patient)
    assert text["status"] == "in-progress"
    assert doctor(stack)["status"] == "ok"  # not overdue yet

    stack.move_clock(stack.clock.now() + timedelta(seconds=STUCK_AFTER + 1))
    overdue = doctor(stack)  # no worker alive: nobody resolved it
    assert overdue["status"] == "warn" and "1 send(s) interrupted" in overdue["detail"], overdue

    stack.start_worker()  # re-runs the orphaned event, then resolves the send
    resolved = wait_for(
        lambda: [c for c in texts(stack, patient) if c["status"] == "not-done"], "the send resolved", stack.log
    )
    stack.wait_settled()
    [text] = resolved
    assert text["statusReason"]["coding"][0]["code"] == "unknown", text["statusReason"]
    assert "interrupted" in text["statusReason"]["text"]
    assert len(twilio.requests) == 1  # never sent a second time

    metrics = Metrics(stack.conn, PREFIX)
    assert metrics.counter_value("stuck_deliveries", channel="sms") == 1
    finding = doctor(stack)
    assert finding["status"] == "ok" and "1 resolved as unknown" in finding["detail"], finding
    # Every event received has one outcome, the killed one included (re-run by the new worker).
    received = sum(int(v) for v in metrics.read("events_received").values())
    outcomes = sum(int(v) for v in metrics.read("events").values())
    assert received == outcomes == 1
    # The SMS attempted once: no outcome from the provider, one resolved as unknown.
    assert {k: v for k, v in metrics.read("deliveries").items() if "channel=sms" in k} == {}


def test_the_counts_add_up_when_a_worker_dies_after_the_text_went_out(start_stack, serve_app) -> None:
    """The provider accepted the text; the worker is killed while recording it on the Communication
    (the store holds that write). The re-run does not send again, and the text is counted once."""
    twilio = HangingTwilio()
    stack = start_stack(sections=sms_config(serve_app(twilio.app).url), faults=True)
    stack.move_clock(next_local(12))
    stack.subscribe("Appointment")
    patient = stack.new_patient(phone="+15551230014")
    stack.appointment(patient, "noshow", datetime.now(UTC) - timedelta(hours=1))

    assert twilio.arrived.wait(30), stack.log()
    set_faults(stack.store, stall_rate=1.0, stall_seconds=5, methods=["PUT"])  # the Communication update
    twilio.release.set()
    wait_for(lambda: fault_state(stack.store)["counters"]["stalled"] >= 1, "the record write held", stack.log)
    stack.workers[0].stop(kill=True)
    clear_faults(stack.store)

    stack.start_worker()
    wait_for(lambda: [c for c in texts(stack, patient) if c["status"] == "completed"], "recorded", stack.log)
    stack.wait_settled()
    assert len(twilio.requests) == 1
    metrics = Metrics(stack.conn, PREFIX)
    assert metrics.counter_value("deliveries", channel="sms", status="sent") == 1
    received = sum(int(v) for v in metrics.read("events_received").values())
    assert received == sum(int(v) for v in metrics.read("events").values()) == 1
