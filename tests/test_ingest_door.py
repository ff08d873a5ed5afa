"""The webhook's door over real HTTP: the real app (`create_app`) served by a real threaded HTTP server,
a real Redis, deliveries as servers (and attackers holding one secret) send them.

What each subscription may send (resource types, path-addressed deliveries, the subscription and topic
it names), notifications that cannot be what they claim (entry ≠ focus, another server's resources, a
Bundle that is no notification, unknown types), the event cap, and client input that must never be a
500. Every refusal is an OperationOutcome and leaves the queue untouched.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import rq

from fhir_smartflow.app import create_app
from fhir_smartflow.config import ConfigError, load_settings
from fhir_smartflow.ingest.auth import hmac_hex
from tests.support.toml import write_config

pytestmark = pytest.mark.integration

BASE = "https://ehr.example.org/fhir"
PREFIX = "door:"
FHIR = "application/fhir+json"
SECRETS = {"DOOR_SECRET_A": "secret-a", "DOOR_SECRET_B": "secret-b", "DOOR_SECRET_HMAC": "hmac-secret"}
HEADER = "X-Smartflow-Secret"
SUB_A = {"id": "sub-a", "header": HEADER, "secret_env": "DOOR_SECRET_A", "criteria": "Patient?"}
SUB_B = {"id": "sub-b", "header": HEADER, "secret_env": "DOOR_SECRET_B", "criteria": "Appointment?"}
MEDPLUM = {"id": "medplum", "auth": "hmac", "header": "X-Signature", "secret_env": "DOOR_SECRET_HMAC",
           "criteria": "Patient?"}  # fmt: skip


@dataclass
class Door:
    url: str
    conn: redis.Redis
    queue: str

    def post(
        self,
        body: bytes | dict[str, Any],
        *,
        secret: str | None = "secret-a",
        path: str = "",
        method: str = "POST",
        **headers: str,
    ) -> requests.Response:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        sent = {"Content-Type": FHIR, **headers}
        if secret is not None:
            sent[HEADER] = secret
        return requests.request(method, f"{self.url}/fhir/notify{path}", data=data, headers=sent, timeout=10)

    def signed(self, body: bytes, *, path: str = "", method: str = "POST", **headers: str) -> requests.Response:
        """As Medplum sends it: the hex HMAC-SHA256 of the body in X-Signature."""
        signature = hmac_hex(SECRETS["DOOR_SECRET_HMAC"].encode(), body)
        return self.post(body, secret=None, path=path, method=method, **{"X-Signature": signature, **headers})

    def snapshot(self) -> tuple[int, int, int]:
        jobs = sum(1 for _ in self.conn.scan_iter("rq:job:*", count=1000))
        received = sum(int(v) for v in self.conn.hvals(f"{PREFIX}metric:events_received"))
        return self.conn.llen(f"rq:queue:{self.queue}"), jobs, received

    def queued(self) -> list[dict[str, Any]]:
        """The event dicts of the queued jobs, oldest first."""
        return [job.args[0] for job in rq.Queue(self.queue, connection=self.conn).jobs]

    def record(self, subscription: str) -> dict[str, str]:
        raw = self.conn.hgetall(f"{PREFIX}sub:{subscription}")
        return {k.decode(): v.decode() for k, v in raw.items()}


@pytest.fixture
def open_door(
    serve_app, redis_url: str, redis_conn: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Door]]:
    """``open_door(subscriptions, server={...}, fhir_base=...)``: the app for that config, over HTTP."""
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    numbers = itertools.count()

    def make(
        subscriptions: list[dict[str, Any]] | None = None, server: dict[str, Any] | None = None, fhir_base: str = BASE
    ) -> Door:
        sections = {"redis": {"url": redis_url, "key_prefix": PREFIX}, "fhir": {"base_url": fhir_base}}
        if server:
            sections["server"] = server
        config = write_config(tmp_path / f"door-{next(numbers)}.toml", sections, subscriptions or [SUB_A, SUB_B])
        settings = load_settings(config, env={})
        app = create_app(settings, redis_conn)
        return Door(serve_app(app).url, redis_conn, settings.redis.queue)

    yield make


def outcome(response: requests.Response) -> dict[str, Any]:
    assert response.headers["Content-Type"].startswith(FHIR), response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"], body
    return body["issue"][0]


def refused(door: Door, send: Callable[[], requests.Response], status: int, fragment: str) -> dict[str, Any]:
    """``send()`` is answered ``status`` with an OperationOutcome naming ``fragment``; nothing is queued."""
    before = door.snapshot()
    response = send()
    assert response.status_code == status, response.text
    issue = outcome(response)
    assert issue["severity"] == "error" and fragment in issue["diagnostics"], issue
    assert door.snapshot() == before, "a refused delivery changed the queue"
    return issue


def patient(pid: str = "p1", version: str = "1") -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "meta": {"versionId": version}, "active": True}


def appointment(aid: str = "a1", status: str = "noshow") -> dict[str, Any]:
    return {"resourceType": "Appointment", "id": aid, "meta": {"versionId": "1"}, "status": status, "participant": []}


def notification(
    *events: tuple[str, dict[str, Any] | None],
    subscription: str = f"{BASE}/Subscription/srv-a",
    bundle_type: str = "history",
    topic: str | None = None,
    first_number: int = 1,
) -> dict[str, Any]:
    """An R4 Backport event-notification: one (focus, resource or None) per event."""
    params: list[dict[str, Any]] = [
        {"name": "subscription", "valueReference": {"reference": subscription}},
        {"name": "status", "valueCode": "active"},
        {"name": "type", "valueCode": "event-notification"},
        {"name": "events-since-subscription-start", "valueString": str(first_number + len(events) - 1)},
    ]
    if topic:
        params.append({"name": "topic", "valueCanonical": topic})
    entries: list[dict[str, Any]] = []
    for n, (focus, resource) in enumerate(events, start=first_number):
        params.append(
            {
                "name": "notification-event",
                "part": [
                    {"name": "event-number", "valueString": str(n)},
                    {"name": "timestamp", "valueInstant": "2026-11-25T10:00:00Z"},
                    {"name": "focus", "valueReference": {"reference": focus}},
                ],
            }
        )
        entry: dict[str, Any] = {"fullUrl": focus.split("/_history/")[0], "request": {"method": "PUT", "url": focus}}
        if resource is not None:
            entry["resource"] = resource
        entries.append(entry)
    status = {"fullUrl": "urn:uuid:4f1c2a10-0000-4000-8000-000000000001",
              "resource": {"resourceType": "Parameters", "parameter": params}}  # fmt: skip
    return {"resourceType": "Bundle", "type": bundle_type, "entry": [status, *entries]}


def _bundle_of(*resources: dict[str, Any], bundle_type: str = "history") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": bundle_type, "entry": [{"resource": r} for r in resources]}


def _parameters(*params: dict[str, Any]) -> dict[str, Any]:
    subscription = {"name": "subscription", "valueReference": {"reference": "Subscription/srv-a"}}
    return {"resourceType": "Parameters", "parameter": [subscription, *params]}


def test_a_valid_notification_is_queued(open_door) -> None:
    """The control: everything refused below would be queued if it were acceptable."""
    door = open_door()
    response = door.post(notification((f"{BASE}/Patient/p1", patient())))
    assert response.status_code == 200, response.text
    (event,) = door.queued()
    assert (event["resource_type"], event["resource_id"], event["subscription"]) == ("Patient", "p1", "sub-a")
    assert event["trusted_content"] is True and event["verify"] is True  # verify is on by default


# ------------------------------------------------------------------------------------ what a subscription may send


def test_a_subscription_delivers_only_its_resource_types(open_door) -> None:
    door = open_door()
    # Secret A (criteria Patient?) posting an Appointment no-show: refused, nothing queued.
    no_show = notification((f"{BASE}/Appointment/a1", appointment()))
    issue = refused(door, lambda: door.post(no_show), 403, "Appointment/a1")
    assert issue["code"] == "forbidden" and "Patient" in issue["diagnostics"]
    refused(door, lambda: door.post(appointment()), 403, "may deliver Patient")  # classic rest-hook too
    # The same body with secret B (criteria Appointment?) is what B may send.
    assert door.post(no_show, secret="secret-b").status_code == 200
    assert [(e["subscription"], e["resource_type"]) for e in door.queued()] == [("sub-b", "Appointment")]


def test_declared_and_topic_derived_resource_types(open_door) -> None:
    topic = "http://fhir-smartflow.example/SubscriptionTopic/appointment-changes"
    door = open_door([
        {"id": "declared", "header": HEADER, "secret_env": "DOOR_SECRET_A", "resource_types": ["Patient", "Encounter"]},
        {"id": "by-topic", "header": HEADER, "secret_env": "DOOR_SECRET_B", "topic": topic},
    ])  # fmt: skip
    encounter = {"resourceType": "Encounter", "id": "e1", "status": "finished", "class": {"code": "AMB"}}
    assert door.post(encounter).status_code == 200
    refused(door, lambda: door.post(appointment()), 403, "may deliver Encounter, Patient")
    assert door.post(notification((f"{BASE}/Appointment/a1", appointment()), topic=topic), secret="secret-b").ok
    refused(door, lambda: door.post(patient(), secret="secret-b"), 403, "may deliver Appointment")
    # A topic other than the subscription's own is refused as well.
    other = notification((f"{BASE}/Appointment/a1", appointment()), topic=topic.replace("appointment", "task"))
    refused(door, lambda: door.post(other, secret="secret-b"), 403, "is for topic")


def test_a_subscription_that_declares_no_resource_types_does_not_start(open_door) -> None:
    with pytest.raises(ConfigError) as err:
        open_door([{"id": "vague", "header": HEADER, "secret_env": "DOOR_SECRET_A"}])
    assert "vague resource_types" in str(err.value) and "declare" in str(err.value)
    with pytest.raises(ConfigError) as unknown:
        open_door([{"id": "typo", "header": HEADER, "secret_env": "DOOR_SECRET_A", "resource_types": ["Patientx"]}])
    assert "Patientx" in str(unknown.value)


def test_verify_is_carried_on_every_event(open_door) -> None:
    door = open_door([SUB_A, {**SUB_B, "verify": False}])
    assert door.post(patient()).ok and door.post(appointment(), secret="secret-b").ok
    assert [(e["subscription"], e["verify"]) for e in door.queued()] == [("sub-a", True), ("sub-b", False)]


# ------------------------------------------------------------------------------------ path-addressed deliveries


def test_a_captured_empty_body_signature_points_no_work_at_arbitrary_resources(open_door) -> None:
    """HMAC covers the body only: the signature of an empty body (or of Medplum's delete ``{}``) is valid
    for every path and header. Such deliveries are refused unless the subscription allows them."""
    door = open_door([MEDPLUM])
    for rid in ("p1", "p2", "someone-else"):
        refused(door, lambda rid=rid: door.signed(b"", path=f"/Patient/{rid}", method="PUT"), 403, "path")
        refused(door, lambda rid=rid: door.signed(b"", path=f"/Patient/{rid}", method="DELETE"), 403, "path")
        deleted = {"X-Medplum-Subscription": "mp-1", "X-Medplum-Interaction": "delete",
                   "X-Medplum-Deleted-Resource": f"Patient/{rid}"}  # fmt: skip
        refused(door, lambda deleted=deleted: door.signed(b"{}", **deleted), 403, "allow_path_addressed")
    # A body the signature covers, naming what the path names, is not path-addressed.
    body = json.dumps(patient("p1")).encode()
    assert door.signed(body, path="/Patient/p1", method="PUT").status_code == 200
    assert [e["trusted_content"] for e in door.queued()] == [True]


def test_allowed_path_addressed_deliveries_are_marked_for_re_reading(open_door) -> None:
    door = open_door([{**MEDPLUM, "allow_path_addressed": True}])
    assert door.signed(b"", path="/Patient/p9", method="DELETE").status_code == 200
    deleted = {"X-Medplum-Subscription": "mp-1", "X-Medplum-Interaction": "delete",
               "X-Medplum-Deleted-Resource": "Patient/p8"}  # fmt: skip
    assert door.signed(b"{}", **deleted).status_code == 200
    events = door.queued()
    assert [(e["resource_id"], e["interaction"], e["trusted_content"]) for e in events] == [
        ("p9", "delete", False),
        ("p8", "delete", False),
    ]
    # Still only the subscription's own types: the path does not widen them.
    refused(door, lambda: door.signed(b"", path="/Appointment/a1", method="DELETE"), 403, "may deliver Patient")


# ------------------------------------------------------------------------------------ the subscription it names


def test_the_named_subscription_never_overrides_the_authenticated_one(open_door) -> None:
    door = open_door()
    assert door.post(notification((f"{BASE}/Patient/p1", patient()), subscription="Subscription/srv-a")).ok
    assert door.record("sub-a")["server_subscription"] == "Subscription/srv-a"
    # Naming another configured subscription: refused.
    to_b = notification((f"{BASE}/Patient/p2", patient("p2")), subscription="Subscription/sub-b")
    refused(door, lambda: door.post(to_b), 403, "sub-b")
    # A foreign URL: not our server's subscription at all.
    foreign = notification(
        (f"{BASE}/Patient/p3", patient("p3")), subscription="https://evil.example/fhir/Subscription/x"
    )
    refused(door, lambda: door.post(foreign), 400, "not on the configured FHIR server")
    # An unknown one: accepted under sub-a, recorded as a mismatch, never adopted.
    unknown = notification((f"{BASE}/Patient/p4", patient("p4")), subscription="Subscription/zzz", first_number=2)
    assert door.post(unknown).ok
    record = door.record("sub-a")
    assert record["server_subscription"] == "Subscription/srv-a"
    assert (record["last_mismatch"], record["mismatches"]) == ("Subscription/zzz", "1")
    assert {e["subscription"] for e in door.queued()} == {"sub-a"}
    assert door.record("sub-b") == {}


def test_server_ids_refuse_any_other_subscription(open_door) -> None:
    door = open_door([{**SUB_A, "server_ids": ["srv-a", "srv-a2"]}])
    assert door.post(notification((f"{BASE}/Patient/p1", patient()), subscription="Subscription/srv-a2")).ok
    other = notification((f"{BASE}/Patient/p1", patient()), subscription="Subscription/zzz")
    refused(door, lambda: door.post(other), 403, "server_ids")
    medplum = open_door([{**MEDPLUM, "server_ids": ["mp-1"]}])
    body = json.dumps(patient()).encode()
    assert medplum.signed(body, **{"X-Medplum-Subscription": "mp-1"}).ok
    refused(medplum, lambda: medplum.signed(body, **{"X-Medplum-Subscription": "mp-2"}), 403, "mp-2")


# ------------------------------------------------------------------------------------ not what they claim: 400


NOT_NOTIFICATIONS: dict[str, tuple[dict[str, Any], str]] = {
    "entry resource is not the focus": (
        notification((f"{BASE}/Patient/p1", patient("p2"))),
        "fullUrl names Patient/p1 but resource names Patient/p2",
    ),
    "entry of another type under the focus' fullUrl": (
        notification((f"{BASE}/Patient/p1", appointment("p1"))),
        "names Patient/p1 but resource names Appointment/p1",
    ),
    "focus version is not the entry's": (
        notification((f"{BASE}/Patient/p1/_history/3", patient("p1", "2"))),
        "focus names version '3' but its entry is version '2'",
    ),
    "focus on another server": (
        notification(("https://other.example/fhir/Patient/123", None)),
        "is not on the configured FHIR server",
    ),
    "searchset Bundle": (
        {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": patient()}]},
        "Bundle.type 'searchset'",
    ),
    "document Bundle": (
        {"resourceType": "Bundle", "type": "document", "entry": [{"resource": patient()}]},
        "Bundle.type 'document'",
    ),
    "status in a searchset": (
        notification((f"{BASE}/Patient/p1", patient()), bundle_type="searchset"),
        "Bundle.type 'searchset' is not a notification",
    ),
    "empty status": (_bundle_of(_parameters({"name": "type", "valueCode": "event-notification"})), "names none"),
    "unknown resource type in the body": ({"resourceType": "Patientx", "id": "1"}, "'Patientx' is not an R4"),
    "unknown resource type in a focus": (notification((f"{BASE}/Patientx/1", None)), "'Patientx' is not an R4"),
    "a datatype is no resource": ({"resourceType": "HumanName", "id": "1"}, "'HumanName' is not an R4"),
}


@pytest.mark.parametrize("case", sorted(NOT_NOTIFICATIONS))
def test_notifications_that_are_not_what_they_claim_are_400(open_door, case: str) -> None:
    door = open_door()
    body, fragment = NOT_NOTIFICATIONS[case]
    assert refused(door, lambda: door.post(body), 400, fragment)["code"] == "invalid"


# ------------------------------------------------------------------------------------ the event cap


def test_events_per_notification_are_capped(open_door) -> None:
    door = open_door(server={"max_events_per_notification": 5})
    five = notification(*[(f"{BASE}/Patient/p{i}", patient(f"p{i}")) for i in range(5)])
    assert door.post(five).status_code == 200 and len(door.queued()) == 5
    six = notification(*[(f"{BASE}/Patient/q{i}", patient(f"q{i}")) for i in range(6)], first_number=6)
    issue = refused(door, lambda: door.post(six), 413, "carries 6 events; the limit is 5")
    assert issue["code"] == "too-costly"
    classic = _bundle_of(*[patient(f"r{i}") for i in range(6)], bundle_type="collection")
    refused(door, lambda: door.post(classic), 413, "the limit is 5")


def test_the_default_cap_refuses_a_fan_out_of_thousands(open_door) -> None:
    door = open_door(server={"max_body_bytes": 2 * 1024 * 1024})
    ids_only = notification(*[(f"Patient/x{i}", None) for i in range(1001)])
    refused(door, lambda: door.post(ids_only), 413, "the limit is 1000")


# ------------------------------------------------------------------------------------ never a 500


def _status_with(parameter: dict[str, Any]) -> dict[str, Any]:
    body = notification((f"{BASE}/Patient/p1", patient()))
    body["entry"][0]["resource"]["parameter"].append(parameter)
    return body


def _r4b(**event: Any) -> dict[str, Any]:
    status = {"resourceType": "SubscriptionStatus", "type": "event-notification", "status": "active",
              "subscription": {"reference": "Subscription/srv-a"},
              "notificationEvent": [{"eventNumber": "1", "focus": {"reference": "Patient/p1"}, **event}]}  # fmt: skip
    return {"resourceType": "Bundle", "type": "history", "entry": [{"resource": status}, {"resource": patient()}]}


def _nested(depth: int) -> bytes:
    inner = '{"a":' * depth + "1" + "}" * depth
    return ('{"resourceType":"Patient","id":"p1","extension":[{"url":"x","valueString":' + inner + "}]}").encode()


CLIENT_INPUT: dict[str, tuple[bytes | dict[str, Any], str]] = {
    "counter of 5,000 digits": (
        _status_with({"name": "events-since-subscription-start", "valueString": "9" * 5000}),
        "events-since-subscription-start",
    ),
    "counter beyond integer64": (_r4b(eventNumber="9223372036854775808"), "eventNumber"),
    "parameter name is a list": (_status_with({"name": ["type"], "valueCode": "x"}), "name must be a string"),
    "parameter name is an object": (_status_with({"name": {"a": 1}}), "name must be a string"),
    # Not a status (its parameters are no list), so a resource of a rest-hook Bundle, without an id.
    "parameter is a number": (_bundle_of({"resourceType": "Parameters", "parameter": 5}), "Parameters has no valid id"),
    "bare Parameters with parameter a number": ({"resourceType": "Parameters", "parameter": 5}, "must be a list"),
    "additionalContext is a number": (_r4b(additionalContext=7), "additionalContext must be a list"),
    "request is a string": (
        {"resourceType": "Bundle", "type": "collection", "entry": [{"request": "DELETE Patient/p1"}]},
        "request must be an object",
    ),
    "nested 600 deep": (_nested(600), "nested deeper than"),
    "nested 998 deep": (_nested(998), "nested deeper than"),
    "lone surrogate in a value": (b'{"resourceType":"Patient","id":"p1","gender":"\\ud800"}', "surrogate"),
    "lone surrogate in a key": (b'{"resourceType":"Patient","id":"p1","\\udfff":1}', "surrogate"),
    "NaN": (b'{"resourceType":"Patient","id":"p1","multipleBirthInteger":NaN}', "not valid JSON"),
    "focus is an object without reference": (_r4b(focus={"identifier": {"value": "1"}}), "without a reference"),
    "timestamp is a number": (_r4b(timestamp=12), "timestamp must be a string"),
}


@pytest.mark.parametrize("case", sorted(CLIENT_INPUT))
def test_client_input_is_never_a_500(open_door, case: str) -> None:
    door = open_door()
    body, fragment = CLIENT_INPUT[case]
    assert refused(door, lambda: door.post(body), 400, fragment)["code"] == "invalid"
