"""What the worker acts on, with the real parts (the `sandbox` store, `serve`, a `worker`, Redis): an
id-only entry that names no version is read from the FHIR server and deduplicated on what the server
returns, so a later change of the same resource is never dropped as a copy of an earlier one; and
with ``verify`` (the default) a notification's resource is acted on as the server has it, not as sent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from fhir_smartflow.metrics import Metrics
from tests.support.lifecycle import PREFIX, SECRET, Stack, ident, next_local
from tests.support.net import wait_for
from tests.support.service import SECRET_HEADER

pytestmark = pytest.mark.integration


def id_only_notification(reference: str) -> dict[str, Any]:
    """A rest-hook Bundle whose only entry is ``{"request": {"method": "PUT", "url": ...}}``: no
    versionId, no event number, no timestamp — the same JSON for every change of the resource."""
    return {"resourceType": "Bundle", "type": "history", "entry": [{"request": {"method": "PUT", "url": reference}}]}


def notify(stack: Stack, reference: str) -> None:
    post(stack, id_only_notification(reference))


def post(stack: Stack, body: dict[str, Any]) -> None:
    answer = requests.post(
        stack.notify,
        json=body,
        headers={SECRET_HEADER: SECRET, "Content-Type": "application/fhir+json"},
        timeout=10,
    )
    assert answer.status_code < 300, answer.text


def test_booked_then_noshow_as_id_only_entries_runs_the_missed_appointment_flow(start_stack) -> None:
    stack = start_stack()
    stack.move_clock(next_local(12))
    metrics = Metrics(stack.conn, PREFIX)
    patient = stack.new_patient()
    start = datetime.now(UTC) - timedelta(hours=1)
    appointment = stack.appointment(patient, "booked", start)
    notify(stack, appointment)
    wait_for(lambda: metrics.counter_value("events", result="processed") == 1, "booked processed", stack.log)

    stack.put({**stack.read(appointment), "status": "noshow"})
    notify(stack, appointment)  # byte for byte the notification of the booking
    wait_for(lambda: metrics.counter_value("events", result="processed") == 2, "noshow processed", stack.log)
    stack.wait_settled()

    assert metrics.counter_value("events", result="deduplicated") == 0
    assert stack.tasks(patient, "missed-appointment"), "the missed-appointment flow ran"

    notify(stack, appointment)  # nothing changed since: now it is a duplicate, of the server's version
    wait_for(lambda: metrics.counter_value("events", result="deduplicated") == 1, "copy deduplicated", stack.log)


def test_a_forged_resource_is_acted_on_as_the_server_has_it(start_stack) -> None:
    """The subscription's secret is enough to post any body; ``verify`` makes the worker read the focus
    and act on the server's copy: a no-show claimed for a booked appointment, or for one that does not
    exist, runs nothing."""
    stack = start_stack()
    stack.move_clock(next_local(12))
    metrics = Metrics(stack.conn, PREFIX)
    patient = stack.new_patient()
    start = datetime.now(UTC) - timedelta(hours=1)
    appointment = stack.read(stack.appointment(patient, "booked", start))
    forged = {**appointment, "status": "noshow"}
    post(stack, forged)
    post(stack, {**forged, "id": "not-on-the-server", "meta": {"versionId": "1"}})
    wait_for(lambda: metrics.counter_value("events", result="processed") == 2, "both processed", stack.log)
    stack.wait_settled()
    assert stack.tasks(patient, "missed-appointment") == []
    assert not [c for c in stack.comms(patient) if ident(c).startswith("missed-appointment/")]
