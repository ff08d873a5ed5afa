"""Context source caching, fetching missing resources, and gap recovery ($events, else _lastUpdated)."""

from __future__ import annotations

import pytest
import responses
from responses import matchers

from fhir_smartflow.config import Settings, SubscriptionConfig
from fhir_smartflow.events import ResourceEvent
from fhir_smartflow.fhir.client import FhirClient
from fhir_smartflow.retry import RetryPolicy
from fhir_smartflow.worker.context import CachingContextSource, ClientResourceFetcher, StaticCache
from fhir_smartflow.worker.recovery import recover_gap

pytestmark = pytest.mark.integration

BASE = "https://ehr.example.org/fhir"
SUB = SubscriptionConfig(id="sub-appt", secret_env="X", criteria="Appointment?status=noshow", topic="urn:t")


def client() -> FhirClient:
    return FhirClient(BASE, retry=RetryPolicy(max_retries=0), sleep=lambda s: None)


def event(**kw) -> ResourceEvent:
    base = {
        "subscription": "sub-appt",
        "resource_type": "Appointment",
        "resource_id": "7",
        "received_at": "2026-01-01T00:00:00Z",
    }
    return ResourceEvent(**{**base, **kw})


@responses.activate
def test_context_source_reads_each_reference_once() -> None:
    responses.get(f"{BASE}/Encounter/1", json={"resourceType": "Encounter", "id": "1"})
    responses.get(
        f"{BASE}/Coverage",
        json={
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": {"resourceType": "Coverage", "id": "c"}}],
        },
    )
    ctx = CachingContextSource(client())
    assert ctx.read("Encounter/1") == ctx.read("Encounter/1")
    assert ctx.search("Coverage", {"patient": "Patient/1"}) == ctx.search("Coverage", {"patient": "Patient/1"})
    assert ctx.read("Coverage/c")["id"] == "c"  # served from the search
    assert len(responses.calls) == 2


@responses.activate
def test_static_answers_are_shared_across_events_until_their_ttl() -> None:
    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": {"resourceType": "Questionnaire"}}]}
    responses.get(f"{BASE}/Questionnaire", json=bundle)
    responses.get(f"{BASE}/Practitioner/7", json={"resourceType": "Practitioner", "id": "7"})
    responses.get(f"{BASE}/Patient/1", json={"resourceType": "Patient", "id": "1"})
    now = [0.0]
    shared = StaticCache(ttl=60, clock=lambda: now[0])
    for _ in range(3):  # three events, each with its own context source
        ctx = CachingContextSource(client(), shared)
        ctx.search("Questionnaire", {"url": "http://x/Q/intake"})
        ctx.read("Practitioner/7")
        ctx.read("Patient/1")  # patient data is never shared across events
    assert [c.request.url.split("/fhir/")[1].split("?")[0] for c in responses.calls].count("Patient/1") == 3
    assert len(responses.calls) == 5
    now[0] = 61.0  # expired: asked again
    CachingContextSource(client(), shared).read("Practitioner/7")
    assert len(responses.calls) == 6


@responses.activate
def test_fetch_id_only_reads_the_version_then_marks_gone_as_delete() -> None:
    responses.get(
        f"{BASE}/Appointment/7/_history/3", json={"resourceType": "Appointment", "id": "7", "meta": {"versionId": "3"}}
    )
    responses.get(f"{BASE}/Appointment/8", status=410)
    fetcher = ClientResourceFetcher(client(), Settings())
    full = fetcher.fetch(event(version_id="3", payload_content="id-only"))
    assert full.resource["id"] == "7" and full.version_id == "3"
    gone = fetcher.fetch(event(resource_id="8", payload_content="id-only"))
    assert gone.interaction == "delete" and gone.resource is None


@responses.activate
def test_fetch_with_hostile_focus_id_makes_no_request() -> None:
    fetcher = ClientResourceFetcher(client(), Settings())
    with pytest.raises(ValueError):
        fetcher.fetch(event(resource_id="../../admin", payload_content="id-only"))
    assert len(responses.calls) == 0


@responses.activate
def test_empty_notification_searches_criteria_since_watermark(redis_conn) -> None:
    settings = Settings(subscriptions=[SUB])
    appts = [
        {"resourceType": "Appointment", "id": "1", "meta": {"versionId": "2", "lastUpdated": "2026-01-01T10:00:00Z"}},
        {"resourceType": "Appointment", "id": "2", "meta": {"versionId": "1", "lastUpdated": "2026-01-01T11:00:00Z"}},
    ]
    responses.get(
        f"{BASE}/Appointment",
        match=[matchers.query_param_matcher({"status": "noshow", "_sort": "-_lastUpdated", "_count": "20"})],
        json={"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": a} for a in appts]},
    )
    responses.get(
        f"{BASE}/Appointment",
        match=[matchers.query_param_matcher({"status": "noshow", "_lastUpdated": "ge2026-01-01T11:00:00Z"})],
        json={"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": appts[1]}]},
    )
    fetcher = ClientResourceFetcher(client(), settings, conn=redis_conn)
    first = fetcher.fetch(event(resource_id=None, payload_content="empty"))
    assert [(e.resource_id, e.version_id) for e in first] == [("1", "2"), ("2", "1")]
    second = fetcher.fetch(event(resource_id=None, payload_content="empty"))
    assert [e.resource_id for e in second] == ["2"]  # dedupe drops it: same version


def _notification_bundle() -> dict:
    return {
        "resourceType": "Bundle",
        "type": "history",
        "entry": [
            {
                "resource": {
                    "resourceType": "Parameters",
                    "parameter": [
                        {"name": "subscription", "valueReference": {"reference": f"{BASE}/Subscription/sub-appt"}},
                        {"name": "type", "valueCode": "query-event"},
                        {
                            "name": "notification-event",
                            "part": [
                                {"name": "event-number", "valueString": "4"},
                                {"name": "timestamp", "valueInstant": "2026-01-01T10:00:00Z"},
                                {"name": "focus", "valueReference": {"reference": f"{BASE}/Appointment/7/_history/2"}},
                            ],
                        },
                        {
                            "name": "notification-event",
                            "part": [
                                {"name": "event-number", "valueString": "5"},
                                {
                                    "name": "focus",
                                    "valueReference": {"reference": "https://evil.example.com/Appointment/9"},
                                },
                            ],
                        },
                    ],
                }
            },
            {
                "fullUrl": f"{BASE}/Appointment/7",
                "resource": {"resourceType": "Appointment", "id": "7", "status": "noshow"},
            },
        ],
    }


@responses.activate
def test_recover_gap_uses_events_operation() -> None:
    responses.get(
        f"{BASE}/Subscription/sub-appt/$events",
        match=[matchers.query_param_matcher({"eventsSinceNumber": "4", "eventsUntilNumber": "5"})],
        json=_notification_bundle(),
    )
    events = recover_gap(client(), SUB, {"from": 4, "to": 5, "since_timestamp": "2026-01-01T09:00:00Z"})
    ev, foreign = events
    assert (ev.resource_type, ev.resource_id, ev.version_id, ev.event_number) == ("Appointment", "7", "2", 4)
    assert ev.source == "recovery" and ev.resource["status"] == "noshow"
    # A focus naming another host is only ever read as Type/id under OUR base (never from that host).
    assert (foreign.resource_id, foreign.resource, foreign.payload_content) == ("9", None, "id-only")
    responses.get(f"{BASE}/Appointment/9", json={"resourceType": "Appointment", "id": "9"})
    fetched = ClientResourceFetcher(client(), Settings()).fetch(foreign)
    assert fetched.resource["id"] == "9"
    assert [c.request.url.split("?")[0] for c in responses.calls] == [
        f"{BASE}/Subscription/sub-appt/$events",
        f"{BASE}/Appointment/9",
    ]


@responses.activate
def test_gap_recovery_enqueues_events_for_the_server_subscription_id(redis_conn) -> None:
    from fhir_smartflow.connections import Keys
    from fhir_smartflow.queueing import make_queue
    from fhir_smartflow.worker.gaps import Gap
    from fhir_smartflow.worker.recovery import ClientGapRecovery

    settings = Settings(subscriptions=[SUB])
    redis_conn.hset(Keys(settings.redis.key_prefix).subscription("sub-appt"), "server_subscription", "Subscription/77")
    responses.get(f"{BASE}/Subscription/77/$events", json=_notification_bundle())
    queue = make_queue(redis_conn, "recovery-test", settings.redis.key_prefix)
    recovery = ClientGapRecovery(client(), settings, redis_conn, queue)
    recovery.recover("sub-appt", Gap("sub-appt", 4, 5, "2026-01-01T10:30:00Z", "2026-01-01T10:00:00Z"))
    jobs = queue.get_jobs()
    assert len(jobs) == 2
    assert {j.args[0]["resource_id"] for j in jobs} == {"7", "9"}
    assert all(j.args[0]["source"] == "recovery" for j in jobs)


@responses.activate
def test_recover_gap_falls_back_to_last_updated_search() -> None:
    responses.get(f"{BASE}/Subscription/sub-appt/$events", status=404)
    responses.get(
        f"{BASE}/Appointment",
        match=[matchers.query_param_matcher({"_lastUpdated": "ge2026-01-01T09:00:00Z"})],
        json={
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": {"resourceType": "Appointment", "id": "3", "meta": {"versionId": "5"}}}],
        },
    )
    [ev] = recover_gap(client(), SUB, {"from": 4, "to": 5, "since_timestamp": "2026-01-01T09:00:00Z"})
    assert (ev.resource_id, ev.version_id, ev.source, ev.payload_content) == ("3", "5", "recovery", "full-resource")
