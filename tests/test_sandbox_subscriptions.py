"""The sandbox as a notifying server: real notifications to a real receiver over HTTP."""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.parameters import Parameters

from fhir_smartflow.retry import RetryPolicy
from fhir_smartflow.sandbox.subscriptions import (
    EXT_DELIVERY_STYLE,
    EXT_FILTER,
    EXT_HEARTBEAT,
    EXT_PAYLOAD,
    HAPI_PUT,
    TOPIC_BASE,
    ensure_self_subscriptions,
)
from tests.support.fhir import wait_subscription
from tests.support.net import Received, Receiver, free_port, wait_for

pytestmark = pytest.mark.integration

FHIR = {"Content-Type": "application/fhir+json"}


def backport(endpoint: str, content: str, criteria: str = "Patient?", **channel_extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "test",
        "criteria": TOPIC_BASE + "patient-changes",
        "_criteria": {"extension": [{"url": EXT_FILTER, "valueString": criteria}]},
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": EXT_PAYLOAD, "valueCode": content}]},
            "header": ["X-Secret: s3cret"],
            **channel_extra,
        },
    }


def subscribe(base: str, subscription: dict[str, Any]) -> str:
    response = requests.post(f"{base}/Subscription", json=subscription, headers=FHIR, timeout=5)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def bundle_type(received: Received) -> str | None:
    """The Backport notification type of a received Bundle (handshake / heartbeat / event-notification)."""
    params = received.json()["entry"][0]["resource"]["parameter"]
    return next(p["valueCode"] for p in params if p["name"] == "type")


def params(received: Received) -> dict[str, Any]:
    body = received.json()
    Bundle.model_validate(body)
    status = body["entry"][0]["resource"]
    Parameters.model_validate(status)
    return {p["name"]: p for p in status["parameter"]}


def events(seen: list[Received]) -> list[Received]:
    return [r for r in seen if bundle_type(r) == "event-notification"]


@pytest.mark.parametrize("content", ["full-resource", "id-only", "empty"])
def test_backport_handshake_then_numbered_events(sandbox_server: str, receiver: Receiver, content: str) -> None:
    sid = subscribe(sandbox_server, backport(receiver.url + "/notify", content))
    handshake = receiver.wait_for(lambda seen: len(seen) >= 1)[0]
    assert bundle_type(handshake) == "handshake"
    assert handshake.headers["X-Secret"] == "s3cret"
    assert handshake.headers["Content-Type"] == "application/fhir+json"
    assert params(handshake)["events-since-subscription-start"]["valueString"] == "0"
    wait_subscription(sandbox_server, sid, "active")

    p = requests.post(f"{sandbox_server}/Patient", json={"resourceType": "Patient"}, headers=FHIR, timeout=5).json()
    requests.put(f"{sandbox_server}/Patient/{p['id']}", json={"resourceType": "Patient", "id": p["id"],
                 "active": True}, headers=FHIR, timeout=5)  # fmt: skip
    requests.delete(f"{sandbox_server}/Patient/{p['id']}", timeout=5)
    requests.post(f"{sandbox_server}/Observation", json={"resourceType": "Observation", "status": "final",
                  "code": {"text": "not a patient"}}, headers=FHIR, timeout=5)  # fmt: skip
    seen = events(receiver.wait_for(lambda seen: len(events(seen)) >= 3))
    assert len(seen) == 3
    numbers = []
    for received, (method, version) in zip(seen, [("POST", 1), ("PUT", 2), ("DELETE", 3)], strict=True):
        status = params(received)
        assert status["topic"]["valueCanonical"] == TOPIC_BASE + "patient-changes"
        assert status["subscription"]["valueReference"]["reference"] == f"{sandbox_server}/Subscription/{sid}"
        event = {part["name"]: part for part in status["notification-event"]["part"]}
        numbers.append(int(event["event-number"]["valueString"]))
        assert status["events-since-subscription-start"]["valueString"] == event["event-number"]["valueString"]
        entries = received.json()["entry"][1:]
        if content == "empty":
            assert "focus" not in event and entries == []
            continue
        focus = f"{sandbox_server}/Patient/{p['id']}"
        assert event["focus"]["valueReference"]["reference"] == f"{focus}/_history/{version}"
        assert entries[0]["fullUrl"] == focus and entries[0]["request"]["method"] == method
        if content == "full-resource" and method != "DELETE":
            assert entries[0]["resource"]["meta"]["versionId"] == str(version)
        else:
            assert "resource" not in entries[0]
    assert numbers == [1, 2, 3]


def test_backport_filter_criteria_narrow_events(sandbox_server: str, receiver: Receiver) -> None:
    sid = subscribe(sandbox_server, backport(receiver.url, "id-only", "Patient?identifier=urn:mrn|watch"))
    wait_subscription(sandbox_server, sid, "active")
    requests.post(f"{sandbox_server}/Patient", json={"resourceType": "Patient"}, headers=FHIR, timeout=5)
    watched = {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "watch"}]}
    made = requests.post(f"{sandbox_server}/Patient", json=watched, headers=FHIR, timeout=5).json()
    seen = events(receiver.wait_for(lambda seen: len(events(seen)) >= 1))
    entries = seen[0].json()["entry"]
    assert entries[1]["fullUrl"].endswith(f"/Patient/{made['id']}")
    assert len(events(receiver.requests)) == 1


def test_heartbeats_when_idle(sandbox_server: str, receiver: Receiver) -> None:
    heartbeat = {"extension": [{"url": EXT_HEARTBEAT, "valueUnsignedInt": 1}]}
    sid = subscribe(sandbox_server, backport(receiver.url, "empty", **heartbeat))
    receiver.wait_for(lambda seen: len(seen) >= 1)
    handshake_at = time.monotonic()
    seen = receiver.wait_for(lambda seen: "heartbeat" in [bundle_type(r) for r in seen], timeout=5)
    assert time.monotonic() - handshake_at >= 0.9  # not before a period of silence
    assert [bundle_type(r) for r in seen] == ["handshake", "heartbeat"]
    status = params(seen[1])
    assert status["subscription"]["valueReference"]["reference"].endswith(f"/Subscription/{sid}")
    assert status["events-since-subscription-start"]["valueString"] == "0"
    assert "notification-event" not in status


def test_classic_rest_hook_resource_and_empty(sandbox_server: str, receiver: Receiver) -> None:
    def classic(path: str, payload: bool) -> dict[str, Any]:
        channel: dict[str, Any] = {
            "type": "rest-hook",
            "endpoint": receiver.url + path,
            "header": ["Authorization: Bearer t"],
        }
        if payload:
            channel["payload"] = "application/fhir+json"
        return {"resourceType": "Subscription", "status": "requested", "reason": "t",
                "criteria": "Appointment?status=noshow", "channel": channel}  # fmt: skip

    full_id = subscribe(sandbox_server, classic("/full", True))
    empty_id = subscribe(sandbox_server, classic("/empty", False))
    wait_subscription(sandbox_server, full_id, "active")
    wait_subscription(sandbox_server, empty_id, "active")
    appt = {"resourceType": "Appointment", "status": "booked", "participant": [{"status": "accepted"}]}
    made = requests.post(f"{sandbox_server}/Appointment", json=appt, headers=FHIR, timeout=5).json()
    noshow = {**made, "status": "noshow"}
    requests.put(f"{sandbox_server}/Appointment/{made['id']}", json=noshow, headers=FHIR, timeout=5)
    seen = receiver.wait_for(lambda seen: len(seen) >= 2)
    by_path = {r.path: r for r in seen}
    assert set(by_path) == {"/full", "/empty"}  # only the noshow update matched, no handshake for classic
    assert by_path["/full"].json()["status"] == "noshow"
    assert by_path["/full"].json()["meta"]["versionId"] == "2"
    assert by_path["/empty"].body == b""
    assert all(r.headers["Authorization"] == "Bearer t" for r in seen)


def test_hapi_style_put_and_delete(sandbox_server: str, receiver: Receiver) -> None:
    sub = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "hapi style",
        "criteria": "Patient?",
        "extension": [{"url": EXT_DELIVERY_STYLE, "valueCode": HAPI_PUT}],
        "channel": {"type": "rest-hook", "endpoint": receiver.url + "/fhir/notify", "payload": "application/fhir+json"},
    }
    wait_subscription(sandbox_server, subscribe(sandbox_server, sub), "active")
    made = requests.post(f"{sandbox_server}/Patient", json={"resourceType": "Patient"}, headers=FHIR, timeout=5).json()
    requests.delete(f"{sandbox_server}/Patient/{made['id']}", timeout=5)
    seen = receiver.wait_for(lambda seen: len(seen) >= 2)
    assert [(r.method, r.path) for r in seen] == [
        ("PUT", f"/fhir/notify/Patient/{made['id']}"),
        ("DELETE", f"/fhir/notify/Patient/{made['id']}"),
    ]
    assert seen[0].json()["id"] == made["id"]


def test_delivery_retries_then_error(sandbox_server: str, receiver: Receiver) -> None:
    notifier = sandbox_server.app.extensions["sandbox"].notifier  # type: ignore[attr-defined]
    notifier.retry = RetryPolicy(max_retries=2, base_seconds=0.01, max_seconds=0.05, jitter=False)
    notifier.handshake_retry = notifier.retry
    receiver.statuses = [(503, {"Retry-After": "0"}), (200, {})]  # handshake: one 503, then ok
    sid = subscribe(sandbox_server, backport(receiver.url, "id-only"))
    wait_subscription(sandbox_server, sid, "active")
    assert [bundle_type(r) for r in receiver.requests] == ["handshake", "handshake"]
    receiver.statuses = [(500, {})] * 3  # first try + 2 retries, all fail
    requests.post(f"{sandbox_server}/Patient", json={"resourceType": "Patient"}, headers=FHIR, timeout=5)
    failed = wait_subscription(sandbox_server, sid, "error")
    assert "delivery of event 1 failed" in failed["error"]
    assert len(events(receiver.requests)) == 3
    # an errored subscription gets nothing more; re-requesting it handshakes again and resumes numbering
    requests.post(f"{sandbox_server}/Patient", json={"resourceType": "Patient"}, headers=FHIR, timeout=5)
    requests.put(
        f"{sandbox_server}/Subscription/{sid}", json={**failed, "status": "requested"}, headers=FHIR, timeout=5
    )
    wait_subscription(sandbox_server, sid, "active")
    requests.post(f"{sandbox_server}/Patient", json={"resourceType": "Patient"}, headers=FHIR, timeout=5)
    last = events(receiver.wait_for(lambda seen: len(events(seen)) >= 4))[-1]
    event = {p["name"]: p for p in params(last)["notification-event"]["part"]}
    assert event["event-number"]["valueString"] == "2"  # the event while in error was never numbered


def test_handshake_failure_marks_error(sandbox_server: str) -> None:
    notifier = sandbox_server.app.extensions["sandbox"].notifier  # type: ignore[attr-defined]
    notifier.handshake_retry = RetryPolicy(max_retries=1, base_seconds=0.01, max_seconds=0.01, jitter=False)
    sid = subscribe(sandbox_server, backport("http://127.0.0.1:9/nothing-listens", "empty"))
    assert wait_subscription(sandbox_server, sid, "error")["error"] == "handshake failed"


def test_unservable_subscriptions_are_refused(sandbox_server: str, receiver: Receiver) -> None:
    sub = backport(receiver.url, "everything")
    bad_content = requests.post(f"{sandbox_server}/Subscription", json=sub, headers=FHIR, timeout=5)
    assert bad_content.status_code == 422 and "backport-payload-content" in bad_content.text
    unknown_topic = {**backport(receiver.url, "empty"), "criteria": "http://example.org/topic/x"}
    del unknown_topic["_criteria"]
    response = requests.post(f"{sandbox_server}/Subscription", json=unknown_topic, headers=FHIR, timeout=5)
    assert response.status_code == 422 and "unknown topic" in response.text
    wrong_type = backport(receiver.url, "empty", "Appointment?")
    response = requests.post(f"{sandbox_server}/Subscription", json=wrong_type, headers=FHIR, timeout=5)
    assert response.status_code == 422 and "outside topic" in response.text
    bad_header = backport(receiver.url, "empty")
    bad_header["channel"]["header"] = ["no colon here"]
    response = requests.post(f"{sandbox_server}/Subscription", json=bad_header, headers=FHIR, timeout=5)
    assert response.status_code == 422 and "channel.header[0]" in response.text


def test_ensure_self_subscriptions_is_idempotent(sandbox_server: str, receiver: Receiver) -> None:
    store = sandbox_server.app.extensions["sandbox"].store  # type: ignore[attr-defined]
    ids = ensure_self_subscriptions(
        store, receiver.url + "/fhir/notify", "X-Smartflow-Secret", "k", ["Patient", "Flag"]
    )
    assert ids == ["smartflow-self-patient", "smartflow-self-flag"]
    for sid in ids:
        wait_subscription(sandbox_server, sid, "active")
    versions = {sid: store.read("Subscription", sid)["meta"]["versionId"] for sid in ids}
    ensure_self_subscriptions(store, receiver.url + "/fhir/notify", "X-Smartflow-Secret", "k", ["Patient", "Flag"])
    assert {sid: store.read("Subscription", sid)["meta"]["versionId"] for sid in ids} == versions
    flag = {"resourceType": "Flag", "status": "active", "code": {"text": "x"}, "subject": {"reference": "Patient/1"}}
    requests.post(f"{sandbox_server}/Flag", json=flag, headers=FHIR, timeout=5)
    seen = events(receiver.wait_for(lambda seen: len(events(seen)) >= 1))
    assert seen[0].headers["X-Smartflow-Secret"] == "k"
    assert seen[0].json()["entry"][1]["resource"]["resourceType"] == "Flag"
    # changing the secret updates the subscriptions (and re-handshakes)
    ensure_self_subscriptions(store, receiver.url + "/fhir/notify", "X-Smartflow-Secret", "k2", ["Patient"])
    assert store.read("Subscription", ids[0])["channel"]["header"] == ["X-Smartflow-Secret: k2"]


def test_status_and_events_operations(sandbox_server: str, receiver: Receiver) -> None:
    sid = subscribe(sandbox_server, backport(receiver.url, "id-only"))
    wait_subscription(sandbox_server, sid, "active")
    made = [
        requests.post(f"{sandbox_server}/Patient", json={"resourceType": "Patient"}, headers=FHIR, timeout=5).json()
        for _ in range(3)
    ]
    receiver.wait_for(lambda seen: len(events(seen)) >= 3)

    status = requests.get(f"{sandbox_server}/Subscription/{sid}/$status", timeout=5).json()
    Bundle.model_validate(status)
    assert status["type"] == "searchset"
    by_name = {p["name"]: p for p in status["entry"][0]["resource"]["parameter"]}
    assert by_name["type"]["valueCode"] == "query-status"
    assert by_name["status"]["valueCode"] == "active"
    assert by_name["events-since-subscription-start"]["valueString"] == "3"

    url = f"{sandbox_server}/Subscription/{sid}/$events?eventsSinceNumber=2&content=full-resource"
    replay = requests.get(url, timeout=5).json()
    Bundle.model_validate(replay)
    assert replay["type"] == "history"
    parameters = replay["entry"][0]["resource"]["parameter"]
    assert {p["name"]: p for p in parameters}["type"]["valueCode"] == "query-event"
    numbers = [
        next(part["valueString"] for part in p["part"] if part["name"] == "event-number")
        for p in parameters
        if p["name"] == "notification-event"
    ]
    assert numbers == ["2", "3"]
    assert [e["resource"]["id"] for e in replay["entry"][1:]] == [made[1]["id"], made[2]["id"]]
    body = {"resourceType": "Parameters", "parameter": [{"name": "eventsSinceNumber", "valueString": "1"},
            {"name": "eventsUntilNumber", "valueString": "1"}]}  # fmt: skip
    posted = requests.post(f"{sandbox_server}/Subscription/{sid}/$events", json=body, headers=FHIR, timeout=5).json()
    assert [e["fullUrl"] for e in posted["entry"][1:]] == [f"{sandbox_server}/Patient/{made[0]['id']}"]
    assert "resource" not in posted["entry"][1]  # the subscription's own content: id-only


def test_handshake_waits_for_a_receiver_that_starts_late(sandbox_server: str, serve_app) -> None:
    """`serve` subscribes itself before it listens: the handshake must keep trying for a while."""
    notifier = sandbox_server.app.extensions["sandbox"].notifier  # type: ignore[attr-defined]
    notifier.handshake_retry = RetryPolicy(max_retries=20, base_seconds=0.05, max_seconds=0.1, jitter=False)
    port = free_port()
    sid = subscribe(sandbox_server, backport(f"http://127.0.0.1:{port}/notify", "empty"))
    wait_for(lambda: notifier.stats.attempts >= 3, "a few refused handshakes", timeout=10)
    assert requests.get(f"{sandbox_server}/Subscription/{sid}", timeout=5).json()["status"] == "requested"
    late = Receiver().listen(serve_app, port)
    late.wait_for(lambda seen: len(seen) >= 1)
    wait_subscription(sandbox_server, sid, "active")
