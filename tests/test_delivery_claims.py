"""The delivery-claim state machine (delivery/claims.py) on the suite's real Redis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import redis

from fhir_smartflow.connections import Keys
from fhir_smartflow.delivery.claims import DEFAULT_RETRY_DELAY, RECLAIM_EARLY, Claim, DeliveryClaims
from fhir_smartflow.delivery.outcome import DeliveryOutcome

pytestmark = pytest.mark.integration

NOW = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
ID = "flow/act/Deliver/sms"


def claims(conn: redis.Redis) -> DeliveryClaims:
    return DeliveryClaims(conn, Keys("t:"), ttl=3600)


def test_absent_is_taken_once_then_final_outcomes_are_never_taken_again(redis_conn) -> None:
    c = claims(redis_conn)
    assert c.get(ID) is None
    assert c.take(ID, None, NOW) is True
    assert c.take(ID, None, NOW) is False  # a racing worker
    sending = c.get(ID)
    assert sending is not None and sending.status == "sending" and not sending.reclaimable(NOW)
    c.settle(ID, DeliveryOutcome("not-done", "sms delivery failed: 21211", failed=True), NOW)
    stored = c.get(ID)
    assert stored is not None and stored.final and not stored.reclaimable(NOW + timedelta(days=1))
    assert stored.outcome() == DeliveryOutcome("not-done", "sms delivery failed: 21211", failed=True)
    assert 0 < redis_conn.ttl("t:delivery:" + ID) <= 3600


def test_deferred_is_rearmed_and_retaken_only_when_due_by_one_swapper(redis_conn) -> None:
    c = claims(redis_conn)
    assert c.take(ID, None, NOW)
    settled = c.settle(ID, DeliveryOutcome("retry", "503"), NOW)
    assert settled.retry_at == NOW + DEFAULT_RETRY_DELAY  # no time named: the default delay
    previous = c.get(ID)
    assert previous is not None
    assert not previous.reclaimable(NOW + DEFAULT_RETRY_DELAY - RECLAIM_EARLY - timedelta(seconds=1))
    due = NOW + DEFAULT_RETRY_DELAY - RECLAIM_EARLY  # a job firing a little early still counts
    assert previous.reclaimable(due)
    assert c.take(ID, previous, due) is True
    assert c.take(ID, previous, due) is False  # the second worker's compare-and-swap sees "sending"
    current = c.get(ID)
    assert current is not None and current.status == "sending"


def test_withdraw_only_closes_a_waiting_delivery(redis_conn) -> None:
    c = claims(redis_conn)
    assert c.withdraw(ID, "workflow completed") is None  # nothing claimed
    c.take(ID, None, NOW)
    assert c.withdraw(ID, "workflow completed") is None  # being sent
    c.settle(ID, DeliveryOutcome("deferred", "quiet hours", retry_at=NOW + timedelta(hours=8)), NOW)
    assert c.withdraw(ID, "workflow completed") == DeliveryOutcome("not-done", "workflow completed")
    stored = c.get(ID)
    assert stored is not None and stored.status == "not-done" and not stored.failed  # declined, not failed
    assert c.withdraw(ID, "again") is None


def test_an_unreadable_claim_counts_as_sending(redis_conn) -> None:
    redis_conn.set("t:delivery:" + ID, b"\xff not json")
    assert claims(redis_conn).get(ID) == Claim("sending")
    assert claims(redis_conn).take(ID, None, NOW) is False


def test_a_deferred_delivery_keeps_who_to_tell_when_it_fails() -> None:
    """The delivery follow-up's payload rebuilds the same Deliver, owner to notify included."""
    from fhir_smartflow.delivery.deferral import deliver_from_payload, rearm_schedule
    from fhir_smartflow.engine.plan import Deliver, FlowRun, Plan, TriggerEvent
    from fhir_smartflow.events import ResourceEvent

    deliver = Deliver(
        "sms", "Patient/p1", "hi", ID, "flow/act/Communication/sms", notify_on_failure=True, owner=("Group/cm",)
    )
    event = ResourceEvent(subscription="s", resource_type="Appointment", resource_id="a1", received_at="")
    plan = Plan(TriggerEvent("appointment.no_show", event, "t1", patient="Patient/p1"))
    at = NOW + timedelta(hours=9)
    schedule = rearm_schedule(
        deliver, DeliveryOutcome("deferred", "quiet hours", retry_at=at), plan, FlowRun("flow", "1", "g", True, "")
    )
    assert (schedule.kind, schedule.at, schedule.identifier) == ("delivery", at, f"{ID}@20260303T000000Z")
    assert deliver_from_payload(schedule.payload) == deliver
    plain = Deliver("sms", "Patient/p1", "hi", ID, "flow/act/Communication/sms")
    assert (
        "owner"
        not in rearm_schedule(
            plain, DeliveryOutcome("retry", retry_at=at), plan, FlowRun("flow", "1", "g", True, "")
        ).payload
    )
