"""Structural fuzzing of real notification shapes against the real app over HTTP.

Seeds: the Subscriptions Backport IG examples (R4 ``Parameters`` status: handshake, id-only,
full-resource, multi-resource with additional context; R4B ``SubscriptionStatus``; R5
``subscription-notification``), HAPI FHIR's ``PUT`` / ``DELETE <endpoint>/<Type>/<id>`` and empty
``POST``, Medplum's signed ``POST`` and its ``{}`` + ``X-Medplum-Deleted-Resource`` delete, a classic
``collection`` Bundle. Hypothesis mutates them structurally (drop a key, retype a value, duplicate or
nest a subtree, swap in another resource type / Bundle type / method, huge counters, lone surrogates,
nesting hundreds deep), re-signs Medplum bodies so they reach the parser, and posts them.

Properties, per request: never a 5xx; always an OperationOutcome; a refusal queues nothing; an
acceptance queues exactly the number of events it reports. Short form in CI (a few seconds);
``--chaos-long`` runs 5,000 examples.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhir_smartflow.app import create_app
from fhir_smartflow.batch_queueing import backlog_events_key
from fhir_smartflow.config import load_settings
from fhir_smartflow.fhir.backport import PROFILE_STATUS
from fhir_smartflow.ingest.auth import hmac_hex
from tests.support.net import ThreadedWsgiServer
from tests.support.procs import RedisServer
from tests.support.toml import write_config

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

BASE = "https://example.org/fhir"  # the IG examples' server
SHORT_EXAMPLES, LONG_EXAMPLES = 150, 5000
HEADER_SECRET = ("FUZZ_NOTIFY_SECRET", "fuzz-header-secret")
HMAC_SECRET = ("FUZZ_NOTIFY_HMAC", "fuzz-hmac-secret")
TYPES = ["Encounter", "Patient", "Appointment"]
ENCOUNTER_ID = "86009987-eabe-42bf-8c02-b112b18cb616"
PATIENT_ID = "1599eb66-431a-447c-a3de-6897fe9ae9a1"
QUEUED = re.compile(r"(\d+) event\(s\) queued")


# ------------------------------------------------------------------------------------------ seeds


def _r4_status(kind: str, events: list[list[dict[str, Any]]], since: int = 2) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": "subscription", "valueReference": {"reference": f"{BASE}/Subscription/admission"}},
        {"name": "topic", "valueCanonical": "http://hl7.org/SubscriptionTopic/admission"},
        {"name": "status", "valueCode": "active"},
        {"name": "type", "valueCode": kind},
        {"name": "events-since-subscription-start", "valueString": str(since)},
    ]
    params += [{"name": "notification-event", "part": parts} for parts in events]
    return {
        "fullUrl": "urn:uuid:2d5afc69-6ef2-420f-a8d1-8500c99eb96c",
        "resource": {
            "resourceType": "Parameters",
            "meta": {"profile": [PROFILE_STATUS]},
            "parameter": params,
        },
        "request": {"method": "GET", "url": f"{BASE}/Subscription/admission/$status"},
        "response": {"status": "200"},
    }


def _event_parts(number: int, focus: str | None, context: str | None = None) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [
        {"name": "event-number", "valueString": str(number)},
        {"name": "timestamp", "valueInstant": "2020-05-29T11:44:13.1882432-05:00"},
    ]
    if focus:
        parts.append({"name": "focus", "valueReference": {"reference": focus}})
    if context:
        parts.append({"name": "additional-context", "valueReference": {"reference": context}})
    return parts


def _encounter() -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": ENCOUNTER_ID,
        "meta": {"versionId": "1"},
        "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "VR"},
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
    }


def _patient() -> dict[str, Any]:
    return {"resourceType": "Patient", "id": PATIENT_ID, "meta": {"versionId": "3"}, "active": True}


def _entry(resource: dict[str, Any] | None, rtype: str, rid: str, method: str = "POST") -> dict[str, Any]:
    entry: dict[str, Any] = {
        "fullUrl": f"{BASE}/{rtype}/{rid}",
        "request": {"method": method, "url": rtype if method == "POST" else f"{rtype}/{rid}"},
        "response": {"status": "201" if method == "POST" else "200"},
    }
    if resource is not None:
        entry["resource"] = resource
    return entry


def _history(*entries: dict[str, Any], bundle_type: str = "history") -> dict[str, Any]:
    return {"resourceType": "Bundle", "id": "notification", "type": bundle_type,
            "timestamp": "2020-05-29T11:44:13.1882432-05:00", "entry": list(entries)}  # fmt: skip


def _r4b_status(kind: str, with_event: bool) -> dict[str, Any]:
    status: dict[str, Any] = {
        "resourceType": "SubscriptionStatus",
        "id": "3dd3c88d-1f7c-40ce-bf41-6b0d8186c311",
        "status": "active",
        "type": kind,
        "eventsSinceSubscriptionStart": "2",
        "subscription": {"reference": f"{BASE}/Subscription/admission"},
        "topic": "http://hl7.org/SubscriptionTopic/admission",
    }
    if with_event:
        status["notificationEvent"] = [
            {
                "eventNumber": "2",
                "timestamp": "2020-05-29T11:44:13.1882432-05:00",
                "focus": {"reference": f"{BASE}/Encounter/{ENCOUNTER_ID}"},
                "additionalContext": [{"reference": f"{BASE}/Patient/{PATIENT_ID}"}],
            }
        ]
    return {
        "fullUrl": f"urn:uuid:{status['id']}",
        "resource": status,
        "request": {"method": "GET", "url": f"{BASE}/Subscription/admission/$status"},
        "response": {"status": "200"},
    }


@dataclass
class Seed:
    method: str
    path: str  # appended to the notify path
    body: dict[str, Any] | None
    headers: dict[str, str]
    signed: bool = False  # Medplum: X-Signature over the (mutated) body


def seeds() -> dict[str, Seed]:
    enc = f"{BASE}/Encounter/{ENCOUNTER_ID}"
    pat = f"{BASE}/Patient/{PATIENT_ID}"
    event = "event-notification"
    id_only, full = _entry(None, "Encounter", ENCOUNTER_ID), _entry(_encounter(), "Encounter", ENCOUNTER_ID)
    r5 = "subscription-notification"
    classic = _history({"resource": _patient()}, {"fullUrl": enc, "resource": _encounter()}, bundle_type="collection")
    medplum = {"X-Medplum-Subscription": "mp-sub-1", "X-Medplum-Interaction": "update"}
    deleted = {**medplum, "X-Medplum-Interaction": "delete", "X-Medplum-Deleted-Resource": f"Patient/{PATIENT_ID}"}
    multi = _history(
        _r4_status(event, [_event_parts(2, enc, pat)]), full, _entry(_patient(), "Patient", PATIENT_ID, "PUT")
    )
    return {
        "ig-r4-handshake": Seed("POST", "", _history(_r4_status("handshake", [], since=0)), {}),
        "ig-r4-heartbeat": Seed("POST", "", _history(_r4_status("heartbeat", [])), {}),
        "ig-r4-empty": Seed("POST", "", _history(_r4_status(event, [_event_parts(2, None)])), {}),
        "ig-r4-id-only": Seed("POST", "", _history(_r4_status(event, [_event_parts(2, enc)]), id_only), {}),
        "ig-r4-full-resource": Seed("POST", "", _history(_r4_status(event, [_event_parts(2, enc)]), full), {}),
        "ig-r4-multi-resource": Seed("POST", "", multi, {}),
        "ig-r4b-id-only": Seed("POST", "", _history(_r4b_status(event, True), id_only), {}),
        "r5-full-resource": Seed("POST", "", _history(_r4b_status(event, True), full, bundle_type=r5), {}),
        "r5-heartbeat": Seed("POST", "", _history(_r4b_status("heartbeat", False), bundle_type=r5), {}),
        "classic-collection": Seed("POST", "", classic, {}),
        "classic-resource": Seed("POST", "", _patient(), {}),
        "classic-empty": Seed("POST", "", None, {}),
        "hapi-put": Seed("PUT", f"/Patient/{PATIENT_ID}", _patient(), {}),
        "hapi-delete": Seed("DELETE", f"/Encounter/{ENCOUNTER_ID}", None, {}),
        "medplum-update": Seed("POST", "", _patient(), medplum, signed=True),
        "medplum-delete": Seed("POST", "", {}, deleted, signed=True),
    }


SEEDS = seeds()

# ------------------------------------------------------------------------------------------ mutations

DEEP = "__fuzz_deep_{}__"
VOCABULARY = ["Patient", "Patientx", "Encounter", "Appointment", "HumanName", "Bundle", "Parameters",
              "SubscriptionStatus", "history", "searchset", "document", "collection", "transaction",
              "subscription-notification", "event-notification", "query-event", "handshake", "heartbeat",
              "POST", "PUT", "DELETE", "PATCH", "urn:uuid:1", f"{BASE}/Patient/{PATIENT_ID}",
              "https://evil.example/fhir/Patient/1", "Patient/../x", "Subscription/admission", "2", "-1",
              "9" * 5000, "\ud800", "x\udfffy", ""]  # fmt: skip
_KEYS = st.sampled_from(["name", "value", "reference", "resourceType", "id", "part"])
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.sampled_from(VOCABULARY),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_KEYS, children, max_size=3),
    max_leaves=8,
)
OPERATIONS = ["drop", "replace", "vocabulary", "duplicate", "wrap-list", "wrap-object", "deep", "swap"]


def _paths(value: Any) -> list[tuple[Any, ...]]:
    """Every path (keys / indices) into ``value``, root excluded, iteratively."""
    found: list[tuple[Any, ...]] = []
    stack: list[tuple[tuple[Any, ...], Any]] = [((), value)]
    while stack:
        path, item = stack.pop()
        children = item.items() if isinstance(item, dict) else enumerate(item) if isinstance(item, list) else ()
        for key, child in children:
            found.append((*path, key))
            stack.append(((*path, key), child))
    return found


def _get(value: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        value = value[key]
    return value


def mutate(body: Any, data: st.DataObject) -> Any:
    body = copy.deepcopy(body)
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        paths = _paths(body)
        if not paths:
            return data.draw(JSON_VALUES, label="root")
        path = data.draw(st.sampled_from(paths), label="path")
        parent, key = _get(body, path[:-1]), path[-1]
        op = data.draw(st.sampled_from(OPERATIONS), label="op")
        if op == "drop":
            del parent[key]
        elif op == "replace":
            parent[key] = data.draw(JSON_VALUES, label="value")
        elif op == "vocabulary":
            parent[key] = data.draw(st.sampled_from(VOCABULARY), label="word")
        elif op == "duplicate" and isinstance(parent, list):
            parent[key + 1 : key + 1] = [copy.deepcopy(parent[key]) for _ in range(data.draw(st.integers(1, 1200)))]
        elif op == "wrap-list":
            parent[key] = [parent[key]]
        elif op == "wrap-object":
            parent[key] = {"value": parent[key]}
        elif op == "deep":
            parent[key] = DEEP.format(data.draw(st.sampled_from([99, 101, 499, 600, 998, 3000])))
        elif op == "swap":
            other = data.draw(st.sampled_from(paths), label="other")
            if other[: len(path)] != path and path[: len(other)] != other:  # neither inside the other
                other_parent, other_key = _get(body, other[:-1]), other[-1]
                parent[key], other_parent[other_key] = other_parent[other_key], parent[key]
    return body


def encode(body: Any) -> bytes:
    text = json.dumps(body)  # lone surrogates become \\udXXX escapes, as an attacker would send them
    for depth in re.findall(r'"__fuzz_deep_(\d+)__"', text):
        n = int(depth)
        text = text.replace(f'"{DEEP.format(n)}"', '{"a":' * n + "1" + "}" * n, 1)
    return text.encode()


# ------------------------------------------------------------------------------------------ the webhook


@dataclass
class Webhook:
    url: str
    conn: redis.Redis
    session: requests.Session

    def snapshot(self) -> tuple[int, int, int]:
        """Events waiting in the queue, jobs, events received."""
        jobs = sum(1 for _ in self.conn.scan_iter("rq:job:*", count=1000))
        received = sum(int(v) for v in self.conn.hvals("fuzz:metric:events_received"))
        return self.queued_events(), jobs, received

    def queued_events(self) -> int:
        """One per queued job, or its list's length for a backlog batch (deliveries here come one at a
        time, with no worker: after the first two, they join backlog batches)."""
        waiting = self.conn.lrange("rq:queue:smartflow", 0, -1)
        return sum(self.conn.llen(backlog_events_key("fuzz:", job_id.decode())) or 1 for job_id in waiting)

    def send(
        self, seed: Seed, body: bytes | None, method: str, path: str, headers: dict[str, str]
    ) -> requests.Response:
        sent = {"Content-Type": "application/fhir+json", **headers}
        data = body or b""
        if seed.signed:
            sent["X-Signature"] = hmac_hex(HMAC_SECRET[1].encode(), data)
        else:
            sent["X-Smartflow-Secret"] = HEADER_SECRET[1]
        return self.session.request(method, f"{self.url}/fhir/notify{path}", data=data, headers=sent, timeout=30)


@pytest.fixture(scope="module")
def webhook(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Webhook]:
    tmp: Path = tmp_path_factory.mktemp("fuzz-notifications")
    (tmp / "redis").mkdir()
    rs = RedisServer(tmp / "redis").start()
    subscriptions = [
        {"id": "hook", "header": "X-Smartflow-Secret", "secret_env": HEADER_SECRET[0], "resource_types": TYPES,
         "allow_path_addressed": True},
        {"id": "medplum", "auth": "hmac", "header": "X-Signature", "secret_env": HMAC_SECRET[0],
         "resource_types": TYPES, "allow_path_addressed": True},
    ]  # fmt: skip
    config = write_config(
        tmp / "smartflow.toml",
        {"redis": {"url": rs.url, "key_prefix": "fuzz:"}, "fhir": {"base_url": BASE},
         "server": {"max_body_bytes": 512 * 1024}},
        subscriptions,
    )  # fmt: skip
    saved = {name: os.environ.get(name) for name, _ in (HEADER_SECRET, HMAC_SECRET)}
    os.environ.update(dict([HEADER_SECRET, HMAC_SECRET]))
    server = None
    try:
        server = ThreadedWsgiServer(create_app(load_settings(config, env={})))
        session = requests.Session()
        yield Webhook(server.url, rs.client(), session)
        assert session.get(f"{server.url}/healthz", timeout=5).status_code == 200
        session.close()
    finally:
        if server is not None:
            server.stop()
        rs.stop()
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def check(hook: Webhook, seed: Seed, body: bytes | None, method: str, path: str, headers: dict[str, str]) -> int:
    """One request and the properties; returns its status."""
    before = hook.snapshot()
    response = hook.send(seed, body, method, path, headers)
    shown = (body or b"")[:300]
    assert response.status_code < 500, f"{response.status_code} for {method} {path} {shown!r}: {response.text[:300]}"
    outcome = response.json()
    assert outcome.get("resourceType") == "OperationOutcome" and outcome.get("issue"), response.text[:300]
    after = hook.snapshot()
    if response.status_code >= 400:
        assert after == before, f"refused ({response.status_code}) but the queue changed: {shown!r}"
    else:
        match = QUEUED.search(outcome["issue"][0].get("diagnostics", ""))
        queued = int(match.group(1)) if match else 0
        assert after[0] - before[0] == queued, f"accepted, reported {queued} queued, queue grew {after[0] - before[0]}"
    return response.status_code


def test_every_seed_is_accepted(webhook: Webhook) -> None:
    """The control: unmutated seeds are valid deliveries, so what the mutations break is the point."""
    for name, seed in SEEDS.items():
        body = encode(seed.body) if seed.body is not None else None
        assert check(webhook, seed, body, seed.method, seed.path, seed.headers) == 200, name


@pytest.fixture
def examples(request: pytest.FixtureRequest) -> int:
    return LONG_EXAMPLES if request.config.getoption("--chaos-long") else SHORT_EXAMPLES


METHODS = st.sampled_from(["POST", "PUT", "DELETE"])
PATHS = st.sampled_from(["", f"/Patient/{PATIENT_ID}", f"/Encounter/{ENCOUNTER_ID}", "/Patientx/1", "/Patient/p.1",
                         "/Appointment/a1", "/Observation/o1"])  # fmt: skip
_PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
HEADER_VALUES = st.one_of(
    st.sampled_from([w for w in VOCABULARY if w.isascii() and len(w) < 200]), st.text(_PRINTABLE, max_size=40)
).map(str.strip)  # what an HTTP client can send at all


def test_mutated_notifications_never_get_a_5xx(webhook: Webhook, examples: int) -> None:
    statuses: dict[int, int] = {}

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
    @given(name=st.sampled_from(sorted(SEEDS)), data=st.data())
    def run(name: str, data: st.DataObject) -> None:
        seed = SEEDS[name]
        body = None
        if seed.body is not None:
            mutated = data.draw(st.integers(0, 5), label="body mutation") > 0
            body = encode(mutate(seed.body, data) if mutated else seed.body)
        method, path, headers = seed.method, seed.path, dict(seed.headers)
        if data.draw(st.integers(0, 4), label="request mutation") == 0:
            method, path = data.draw(METHODS, label="method"), data.draw(PATHS, label="path")
            for header in list(headers):
                if data.draw(st.booleans(), label=f"mutate {header}"):
                    headers[header] = data.draw(HEADER_VALUES, label=header)
        status = check(webhook, seed, body, method, path, headers)
        statuses[status] = statuses.get(status, 0) + 1

    run()
    # Not vacuous: both accepted and refused deliveries were exercised.
    assert statuses.get(200) and any(s >= 400 for s in statuses), statuses
