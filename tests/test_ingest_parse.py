"""parse.py over every notification fixture and every malformed input class (pure, no I/O)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_smartflow.fhir.notifications import NotificationError, parse_notification
from fhir_smartflow.instants import parse_instant
from fhir_smartflow.refs import parse_reference

FIXTURES = Path(__file__).parent / "fixtures" / "notifications"
FHIR_JSON = {"Content-Type": "application/fhir+json"}


def load(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def parse(body: bytes, method: str = "POST", path: str | None = None, headers: dict[str, str] | None = None):
    return parse_notification(
        method,
        path,
        headers if headers is not None else FHIR_JSON,
        body,
        subscription="sub-a",
        received_at="2026-11-25T10:00:10+00:00",
        delivery_id="d1",
    )


def summary(n) -> list[tuple]:
    return [
        (e.reference, e.event_number, e.version_id, e.interaction, e.payload_content, e.resource is not None)
        for e in n.events
    ]


# fixture -> (kind, style, events_since_start, [(reference, number, version, interaction, content, has_resource)])
EXPECTED = {
    "backport-r4-handshake.json": ("handshake", "backport-r4", 0, []),
    "backport-r4-heartbeat.json": ("heartbeat", "backport-r4", 12, []),
    "backport-r4-query-status.json": ("query-status", "backport-r4", 12, []),
    "backport-r4-event-empty.json": ("event-notification", "backport-r4", 3, [(None, 3, None, None, "empty", False)]),
    "backport-r4-event-id-only.json": (
        "event-notification",
        "backport-r4",
        4,
        [("Patient/p1", 4, "2", None, "id-only", False)],
    ),
    "backport-r4-event-full-resource.json": (
        "event-notification",
        "backport-r4",
        5,
        [("Patient/p1", 5, "2", "update", "full-resource", True)],
    ),
    "backport-r4-event-full-resource-missing.json": (
        "event-notification",
        "backport-r4",
        6,
        [("Appointment/a7", 6, None, "update", "full-resource", False)],
    ),
    "backport-r4-event-delete.json": (
        "event-notification",
        "backport-r4",
        7,
        [("Appointment/a7", 7, None, "delete", "id-only", False)],
    ),
    "backport-r4-query-event.json": (
        "query-event",
        "backport-r4",
        9,
        [("Patient/p1", 8, "2", None, "full-resource", True), ("Appointment/a7", 9, "3", None, "full-resource", True)],
    ),
    "backport-r4-odd-counters-timestamps.json": (
        "event-notification",
        "backport-r4",
        11,
        [
            ("Patient/p1", 10, "2", None, "full-resource", True),
            ("Appointment/a7", 11, "3", None, "full-resource", True),
        ],
    ),
    "r4b-handshake.json": ("handshake", "r4b", 0, []),
    "r4b-event-full-resource.json": (
        "event-notification",
        "r4b",
        21,
        [("Patient/p1", 21, "2", "create", "full-resource", True)],
    ),
    "r5-heartbeat.json": ("heartbeat", "r5", 40, []),
    "r5-event-id-only.json": ("event-notification", "r5", 41, [("Appointment/a7", 41, "3", None, "id-only", False)]),
    "r5-event-empty.json": ("event-notification", "r5", 42, [(None, 42, None, None, "empty", False)]),
    "classic-resource.json": ("rest-hook", "rest-hook", None, [("Patient/p1", None, "2", None, "full-resource", True)]),
    "classic-bundle.json": (
        "rest-hook",
        "rest-hook",
        None,
        [
            ("Patient/p1", None, "2", None, "full-resource", True),
            ("Appointment/a7", None, "3", None, "full-resource", True),
        ],
    ),
}


def test_every_fixture_is_covered() -> None:
    names = {p.name for p in FIXTURES.glob("*.json")}
    assert names - set(EXPECTED) == {"hapi-appointment.json", "medplum-patient.json"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_shapes(name: str) -> None:
    kind, style, since, events = EXPECTED[name]
    n = parse(load(name))
    assert (n.kind, n.style, n.events_since_start) == (kind, style, since)
    assert summary(n) == events
    assert all(e.subscription == "sub-a" and e.received_at == "2026-11-25T10:00:10+00:00" for e in n.events)
    if style != "rest-hook":
        assert n.subscription_id == "smartflow-admission"
        assert n.topic == "http://hl7.org/SubscriptionTopic/admission"
        assert n.status == "active"


def test_backport_event_keeps_timestamp_topic_and_additional_context() -> None:
    n = parse(load("backport-r4-event-full-resource.json"))
    (event,) = n.events
    assert event.timestamp == "2026-11-25T10:00:02Z"
    assert event.topic == "http://hl7.org/SubscriptionTopic/admission"
    assert event.resource["name"][0]["family"] == "Quixote"
    assert n.additional_context == (("Encounter/e9",),)
    r4b = parse(load("r4b-event-full-resource.json"))
    assert r4b.additional_context == (("Encounter/e9",),)


def test_odd_timestamps_are_kept_as_sent_and_parse() -> None:
    n = parse(load("backport-r4-odd-counters-timestamps.json"))
    assert [e.timestamp for e in n.events] == ["2026-11-25", "2026-11-25T10:00:07.1234567+00:00"]
    assert parse_instant("2026-11-25") == datetime(2026, 11, 25, tzinfo=UTC)
    assert parse_instant("2026-11-25T10:00:07.1234567+00:00") == datetime(2026, 11, 25, 10, 0, 7, 123456, tzinfo=UTC)
    assert parse_instant("2026-11-25T05:00:00-05:00") == datetime(2026, 11, 25, 10, tzinfo=UTC)
    assert parse_instant("2026-11") == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_instant("not a date") is None


def test_missing_event_timestamp_falls_back_to_bundle_timestamp() -> None:
    bundle = json.loads(load("backport-r4-event-id-only.json"))
    parts = bundle["entry"][0]["resource"]["parameter"][-1]["part"]
    parts[:] = [p for p in parts if p["name"] != "timestamp"]
    (event,) = parse(json.dumps(bundle).encode()).events
    assert event.timestamp == bundle["timestamp"]


def test_string_and_numeric_counters() -> None:
    bundle = json.loads(load("backport-r4-heartbeat.json"))
    param = bundle["entry"][0]["resource"]["parameter"][-1]
    for value_key, value in [
        ("valueString", "7"),
        ("valueInteger64", "7"),
        ("valueUnsignedInt", 7),
        ("valueDecimal", 7.0),
    ]:
        param.clear()
        param.update({"name": "events-since-subscription-start", value_key: value})
        assert parse(json.dumps(bundle).encode()).events_since_start == 7
    param.clear()
    param.update({"name": "events-since-subscription-start", "valueString": "seven"})
    with pytest.raises(NotificationError) as err:
        parse(json.dumps(bundle).encode())
    assert err.value.status == 400 and "events-since-subscription-start" in err.value.message


def test_classic_empty_body_is_an_empty_payload_event() -> None:
    n = parse(b"", headers={})
    assert n.kind == "rest-hook"
    assert summary(n) == [(None, None, None, None, "empty", False)]
    other = parse_notification("POST", None, {}, b"", subscription="sub-a", received_at="t", delivery_id="d2")
    # Nothing in an empty body tells two deliveries apart: they must not dedupe into one.
    assert n.events[0].dedupe_key() != other.events[0].dedupe_key()


def test_hapi_put_and_delete() -> None:
    put = parse(load("hapi-appointment.json"), method="PUT", path="Appointment/a7")
    assert put.style == "hapi"
    assert summary(put) == [("Appointment/a7", None, "3", None, "full-resource", True)]
    delete = parse(b"", method="DELETE", path="Appointment/a7", headers={})
    assert summary(delete) == [("Appointment/a7", None, None, "delete", "id-only", False)]
    with pytest.raises(NotificationError) as err:
        parse(load("hapi-appointment.json"), method="PUT", path="Appointment/other")
    assert err.value.status == 400 and "Appointment/other" in err.value.message


def test_medplum_create_update_and_delete() -> None:
    headers = {**FHIR_JSON, "X-Medplum-Subscription": "sub-medplum-1", "X-Medplum-Interaction": "update"}
    n = parse(load("medplum-patient.json"), headers=headers)
    assert n.style == "medplum" and n.subscription == "sub-medplum-1"
    assert summary(n) == [("Patient/p1", None, "5d1c7a3e-2f1b-4c3a-9f0e-6c2b1a0d9e8f", "update", "full-resource", True)]
    deleted = parse(
        b"{}",
        headers={
            **FHIR_JSON,
            "X-Medplum-Subscription": "sub-medplum-1",
            "X-Medplum-Interaction": "delete",
            "X-Medplum-Deleted-Resource": "Patient/p1",
        },
    )
    assert summary(deleted) == [("Patient/p1", None, None, "delete", "id-only", False)]


def test_references() -> None:
    assert parse_reference("Patient/1") == ("Patient", "1", None)
    assert parse_reference("https://x.org/fhir/Patient/1/_history/4") == ("Patient", "1", "4")
    assert parse_reference("urn:uuid:1234") is None
    assert parse_reference("patient/1") is None


@pytest.mark.parametrize(
    ("body", "headers", "status", "fragment"),
    [
        (b"{not json", FHIR_JSON, 400, "not valid JSON"),
        (b"[1, 2]", FHIR_JSON, 400, "JSON object"),
        (b'{"foo": 1}', FHIR_JSON, 400, "no resourceType"),
        (b"{}", FHIR_JSON, 400, "empty JSON object"),
        (b'{"resourceType": "Patient"}', FHIR_JSON, 400, "no valid id"),
        (b'{"resourceType": "Patient", "id": "1"}', {"Content-Type": "text/plain"}, 415, "text/plain"),
        (b'{"resourceType": "Patient", "id": "1"}', {}, 415, "none"),
        (b"\xff\xfe{}", FHIR_JSON, 400, "UTF-8"),
        (
            b'{"resourceType": "Bundle", "type": "subscription-notification", "entry": [{"resource": '
            b'{"resourceType": "Patient", "id": "1"}}]}',
            FHIR_JSON,
            400,
            "SubscriptionStatus",
        ),
        (
            b'{"resourceType": "Bundle", "type": "history", "entry": [{"resource": {"resourceType": "Parameters",'
            b' "parameter": [{"name": "type", "valueCode": "party"}]}}]}',
            FHIR_JSON,
            400,
            "'party'",
        ),
        (
            b'{"resourceType": "Bundle", "type": "collection", "entry": [{"fullUrl": "urn:uuid:1"}]}',
            FHIR_JSON,
            400,
            "entry[0]",
        ),
    ],
)
def test_malformed_inputs(body: bytes, headers: dict[str, str], status: int, fragment: str) -> None:
    with pytest.raises(NotificationError) as err:
        parse(body, headers=headers)
    assert err.value.status == status
    assert fragment in err.value.message


def test_body_limit() -> None:
    with pytest.raises(NotificationError) as err:
        parse_notification("POST", None, FHIR_JSON, b"x" * 11, subscription="s", received_at="t", max_body_bytes=10)
    assert err.value.status == 413


def test_delete_without_path_is_refused() -> None:
    with pytest.raises(NotificationError) as err:
        parse(b"", method="DELETE", headers={})
    assert err.value.status == 400 and "<Type>/<id>" in err.value.message


def test_two_versions_of_one_resource_each_get_their_own_entry() -> None:
    """$events answers can carry several versions of one resource: each focus finds its own version."""
    base = "https://ehr.example.org/fhir"
    events = [
        {"name": "notification-event", "part": [
            {"name": "event-number", "valueString": str(n)},
            {"name": "focus", "valueReference": {"reference": f"{base}/Patient/p1/_history/{n}"}},
        ]}
        for n in (1, 2)
    ]  # fmt: skip
    status = {"resourceType": "Parameters", "parameter": [
        {"name": "subscription", "valueReference": {"reference": f"{base}/Subscription/s"}},
        {"name": "type", "valueCode": "query-event"}, *events]}  # fmt: skip
    entries = [
        {"fullUrl": f"{base}/Patient/p1", "resource": {"resourceType": "Patient", "id": "p1", "meta": {"versionId": v}}}
        for v in ("1", "2")
    ]
    bundle = {"resourceType": "Bundle", "type": "history", "entry": [{"resource": status}, *entries]}
    n = parse(json.dumps(bundle).encode())
    assert [(e.event_number, e.version_id, e.resource["meta"]["versionId"]) for e in n.events] == [
        (1, "1", "1"),
        (2, "2", "2"),
    ]


def test_limits_without_a_server() -> None:
    """The parser's own limits: counters are integer64, the event cap, a base URL for absolute references."""
    bundle = json.loads(load("backport-r4-query-event.json"))
    body = json.dumps(bundle).encode()
    with pytest.raises(NotificationError) as cap:
        parse_notification("POST", None, FHIR_JSON, body, subscription="s", received_at="t", max_events=1)
    assert cap.value.status == 413
    with pytest.raises(NotificationError) as foreign:
        parse_notification("POST", None, FHIR_JSON, body, subscription="s", received_at="t",
                           server_base="https://other.example/fhir")  # fmt: skip
    assert foreign.value.status == 400 and "not on the configured FHIR server" in foreign.value.message
    ok = parse_notification("POST", None, FHIR_JSON, body, subscription="s", received_at="t",
                            server_base="https://ehr.example.org/fhir/", max_events=2)  # fmt: skip
    assert len(ok.events) == 2


def test_path_and_header_addressed_events_are_not_trusted() -> None:
    delete = parse(b"", method="DELETE", path="Appointment/a7", headers={})
    empty_put = parse(b"", method="PUT", path="Appointment/a7", headers={})
    deleted = {**FHIR_JSON, "X-Medplum-Subscription": "m", "X-Medplum-Deleted-Resource": "Patient/1"}
    medplum = parse(b"{}", headers=deleted)
    put = parse(load("hapi-appointment.json"), method="PUT", path="Appointment/a7")
    notes = (delete, empty_put, medplum, put)
    assert [n.path_addressed for n in notes] == [True, True, True, False]
    assert [e.trusted_content for n in notes for e in n.events] == [False, False, False, True]


# The shortcut `BaseUrl.check` takes for plain URLs must never accept one its full check refuses.
_URL_BASES = ("http://127.0.0.1:9/fhir", "https://ehr.example.org/r4/fhir", "http://[::1]:8080", "https://h.example")
_URL_TAILS = ["", "/", "/Patient/1", "/Patient/1/_history/2", "/Patient/a.b-c_d/", "/..", "/./Patient", "/Patient/..",
              "/%2e%2e/x", "/Patient?x=1", "/Patient#f", "@evil/x", ".evil.org/x", ":99/x", "/a b", "/a\\b", "X/y",
              "/Patient//1", "/.hidden", "/a/.", "/$status"]  # fmt: skip


@given(
    st.sampled_from(_URL_BASES),
    st.lists(st.sampled_from(_URL_TAILS) | st.text("/.-_aZ9%@:?#\\ $", max_size=12), max_size=4),
)
@settings(max_examples=400, deadline=None)
def test_the_plain_url_shortcut_accepts_only_what_the_full_check_accepts(base: str, tails: list[str]) -> None:
    from fhir_smartflow.fhir.urls import BaseUrl

    url = base + "".join(tails)
    guard = BaseUrl(base)
    if guard.plain.fullmatch(url):
        assert guard.check_strictly(url) == url  # raises FhirUrlRejected if the shortcut was wrong


@pytest.mark.parametrize("tail", ["/..", "/fhir/../x", "/%2e%2e", "/Patient/1?_format=xml", "/.x", "@h"])
def test_urls_off_the_plain_path_still_get_the_full_check(tail: str) -> None:
    from fhir_smartflow.fhir.urls import BaseUrl

    assert not BaseUrl("http://127.0.0.1:9/fhir").plain.fullmatch("http://127.0.0.1:9/fhir" + tail)


@pytest.mark.parametrize("verify", [True, False])
def test_every_event_carries_the_verify_it_was_parsed_with(verify: bool) -> None:
    n = parse_notification(
        "POST",
        None,
        FHIR_JSON,
        load("backport-r4-event-full-resource.json"),
        subscription="sub-a",
        received_at="2026-11-25T10:00:10+00:00",
        verify=verify,
    )
    assert n.events and all(e.verify is verify for e in n.events)
