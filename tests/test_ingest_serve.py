"""The real `fhir-smartflow serve` process over HTTP, real Redis, real rq workers.

Each test starts `serve` on a free port with a config file pointing at the test's own Redis DB; the
queue is drained by an rq SimpleWorker in the test (same code path as `fhir-smartflow worker`) or by
the real `fhir-smartflow worker --burst` process. Assertions are on what reached the dispatcher.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import rq

from fhir_smartflow.config import Settings, load_settings
from fhir_smartflow.ingest.auth import hmac_hex
from fhir_smartflow.worker import runtime
from fhir_smartflow.worker.gaps import GapTracker
from fhir_smartflow.worker.seams import RecordingDispatcher
from tests.support.net import free_port
from tests.support.procs import RedisServer, smartflow_cmd

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).parent / "fixtures" / "notifications"
PREFIX = "it:"
SECRETS = {
    "SMARTFLOW_TEST_SECRET_BACKPORT": "backport-secret",
    "SMARTFLOW_TEST_SECRET_R5": "r5-secret",
    "SMARTFLOW_TEST_SECRET_HAPI": "hapi-secret",
    "SMARTFLOW_TEST_SECRET_MEDPLUM": "medplum-secret",
}
SUBSCRIPTIONS = """
[[subscriptions]]
id = "backport"
header = "X-Smartflow-Secret"
secret_env = "SMARTFLOW_TEST_SECRET_BACKPORT"
resource_types = ["Patient", "Appointment"]

[[subscriptions]]
id = "r5"
header = "X-Smartflow-Secret"
secret_env = "SMARTFLOW_TEST_SECRET_R5"
resource_types = ["Patient", "Appointment"]

[[subscriptions]]
id = "hapi"
header = "X-Hapi-Secret"
secret_env = "SMARTFLOW_TEST_SECRET_HAPI"
criteria = "Appointment?"
resource_types = ["Patient", "Appointment"]
allow_path_addressed = true  # HAPI's DELETE <endpoint>/<Type>/<id> carries no body

[[subscriptions]]
id = "medplum"
auth = "hmac"
header = "X-Signature"
secret_env = "SMARTFLOW_TEST_SECRET_MEDPLUM"
criteria = "Patient?"
allow_path_addressed = true  # Medplum's delete is {} + X-Medplum-Deleted-Resource
"""
FHIR = "application/fhir+json"
PHI = ("Zebulon", "Quixote", "555-0100")


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC) - timedelta(minutes=1)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Service:
    url: str
    proc: Any
    config: Path
    settings: Settings
    conn: redis.Redis

    def post(
        self, body: bytes, secret: str | None = "backport-secret", path: str = "", method: str = "POST", **headers: str
    ) -> requests.Response:
        sent = {"Content-Type": FHIR, **headers}
        if secret is not None:
            sent.setdefault("X-Smartflow-Secret", secret)
        return requests.request(method, f"{self.url}/fhir/notify{path}", data=body, headers=sent, timeout=10)

    def drain(self, clock: Clock | None = None) -> None:
        """Run the queued jobs with an in-test SimpleWorker (the worker command's default class)."""
        rt = runtime.build_runtime(self.settings, self.conn, clock=clock or Clock())
        runtime.install(rt)
        try:
            rq.SimpleWorker([rt.queue], connection=self.conn).work(burst=True, logging_level="WARNING")
        finally:
            runtime.install(None)

    def dispatched(self) -> list[tuple]:
        events = RecordingDispatcher(self.conn, PREFIX).dispatched()
        return [(e.subscription, e.reference, e.version_id, e.interaction) for e in events]

    def metric(self, name: str, **labels: str) -> int:
        rt = runtime.build_runtime(self.settings, self.conn)
        return rt.metrics.counter_value(name, **labels)


def write_config(tmp_path: Path, redis_url: str, extra: str = "", subscriptions: str = SUBSCRIPTIONS) -> Path:
    path = tmp_path / "smartflow.toml"
    path.write_text(
        f'[server]\nmax_body_bytes = 65536\nretry_after_seconds = 7\n\n[redis]\nurl = "{redis_url}"\n'
        f'key_prefix = "{PREFIX}"\n{extra}\n'
        # These tests look at the ingest path alone: events are recorded, not run through flows, and
        # a FHIR base is set so `serve` does not mount (and subscribe itself to) the sandbox store.
        '[engine]\ndispatch = "record"\n\n[fhir]\nbase_url = "https://ehr.example.org/fhir"\n\n'
        f"{subscriptions}"
    )
    return path


def start_serve(processes, config: Path, *args: str) -> tuple[str, Any]:
    port = free_port()
    proc = processes(smartflow_cmd("--config", str(config), "serve", "--port", str(port), *args), SECRETS, "serve")
    url = f"http://127.0.0.1:{port}"
    proc.wait_http(f"{url}/healthz")
    return url, proc


@pytest.fixture
def service(processes, tmp_path: Path, redis_url: str, redis_conn: redis.Redis) -> Iterator[Service]:
    config = write_config(tmp_path, redis_url)
    url, proc = start_serve(processes, config)
    yield Service(url, proc, config, load_settings(config, SECRETS), redis_conn)
    runtime.install(None)


def outcome(response: requests.Response) -> dict[str, Any]:
    assert response.headers["Content-Type"].startswith(FHIR), response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    return body["issue"][0]


def test_every_notification_shape_reaches_the_dispatcher(service: Service) -> None:
    medplum = fixture("medplum-patient.json")
    posts = [
        service.post(fixture("backport-r4-handshake.json")),
        service.post(fixture("backport-r4-event-full-resource.json")),
        service.post(fixture("backport-r4-event-empty.json")),
        service.post(fixture("backport-r4-event-full-resource-missing.json")),
        service.post(fixture("backport-r4-event-delete.json")),
        service.post(fixture("r4b-event-full-resource.json"), secret="r5-secret"),
        service.post(fixture("r5-event-id-only.json"), secret="r5-secret"),
        service.post(fixture("r5-heartbeat.json"), secret="r5-secret"),
        service.post(fixture("classic-bundle.json"), secret=None, **{"X-Hapi-Secret": "hapi-secret"}),
        service.post(
            fixture("hapi-appointment.json"),
            secret=None,
            path="/Appointment/a7",
            method="PUT",
            **{"X-Hapi-Secret": "hapi-secret"},
        ),
        service.post(b"", secret=None, path="/Appointment/a7", method="DELETE", **{"X-Hapi-Secret": "hapi-secret"}),
        service.post(
            medplum,
            secret=None,
            **{
                "X-Signature": hmac_hex(b"medplum-secret", medplum),
                "X-Medplum-Subscription": "mp-1",
                "X-Medplum-Interaction": "create",
            },
        ),
        service.post(
            b"{}",
            secret=None,
            **{
                "X-Signature": hmac_hex(b"medplum-secret", b"{}"),
                "X-Medplum-Subscription": "mp-1",
                "X-Medplum-Interaction": "delete",
                "X-Medplum-Deleted-Resource": "Patient/p1",
            },
        ),
    ]
    assert [r.status_code for r in posts] == [200] * len(posts), [r.text for r in posts]
    issues = [outcome(r) for r in posts]
    assert all(i["severity"] == "information" for i in issues)
    assert "0 event(s) queued" in issues[0]["diagnostics"] and "2 event(s) queued" in issues[8]["diagnostics"]
    # Handshakes and heartbeats are recorded at once, before any worker runs.
    record = service.conn.hgetall(f"{PREFIX}sub:backport")
    assert record[b"count:handshake"] == b"1" and b"last_seen" in record
    assert service.conn.hget(f"{PREFIX}sub:r5", "count:heartbeat") == b"1"

    service.drain()
    assert service.dispatched() == [
        ("backport", "Patient/p1", "2", "update"),
        ("backport", None, None, None),  # payload "empty": the fetcher re-queries (pass-through for now)
        ("backport", "Appointment/a7", None, "update"),  # full-resource without the resource
        ("backport", "Appointment/a7", None, "delete"),
        ("r5", "Patient/p1", "2", "create"),
        ("r5", "Appointment/a7", "3", None),
        ("hapi", "Patient/p1", "2", None),
        ("hapi", "Appointment/a7", "3", None),
        # HAPI's PUT of Appointment/a7 v3 is the same change as the Bundle's entry: deduplicated.
        ("hapi", "Appointment/a7", None, "delete"),
        ("medplum", "Patient/p1", "5d1c7a3e-2f1b-4c3a-9f0e-6c2b1a0d9e8f", "create"),
        ("medplum", "Patient/p1", None, "delete"),
    ]
    received = service.metric("events_received", source="webhook")
    processed = service.metric("events", result="processed")
    deduplicated = service.metric("events", result="deduplicated")
    assert (received, processed, deduplicated) == (12, 11, 1)


def backport(number: int, rid: str, version: str, second: int, kind: str = "event-notification") -> bytes:
    """A full-resource R4 Backport notification for Patient/<rid>, event <number>."""
    timestamp = f"2026-11-25T10:{second // 60:02d}:{second % 60:02d}Z"
    parameters = [
        {"name": "subscription", "valueReference": {"reference": "Subscription/admission"}},
        {"name": "status", "valueCode": "active"},
        {"name": "type", "valueCode": kind},
        {"name": "events-since-subscription-start", "valueString": str(number)},
    ]
    entries: list[dict[str, Any]] = [{"resource": {"resourceType": "Parameters", "parameter": parameters}}]
    if kind == "event-notification":
        parameters.append(
            {
                "name": "notification-event",
                "part": [
                    {"name": "event-number", "valueString": str(number)},
                    {"name": "timestamp", "valueInstant": timestamp},
                    {"name": "focus", "valueReference": {"reference": f"Patient/{rid}"}},
                ],
            }
        )
        resource = {"resourceType": "Patient", "id": rid, "meta": {"versionId": version}, "active": True}
        entries.append({"fullUrl": f"https://ehr.example.org/fhir/Patient/{rid}", "resource": resource})
    return json.dumps({"resourceType": "Bundle", "type": "history", "timestamp": timestamp, "entry": entries}).encode()


def test_duplicates_out_of_order_restart_and_gap(service: Service) -> None:
    clock = Clock()
    # Duplicates x3 and out-of-order delivery (#4 before #3).
    for body in (
        [backport(1, "p1", "1", 1)]
        + [backport(2, "p1", "2", 2)] * 3
        + [
            backport(4, "p1", "4", 4),
            backport(3, "p1", "3", 3),
        ]
    ):
        assert service.post(body).status_code == 200
    service.drain(clock)
    assert [v for _, _, v, _ in service.dispatched()] == ["1", "2", "4", "3"]
    assert service.metric("events", result="deduplicated") == 2

    # The server restarts: a heartbeat reports 0 events, then numbering starts over with new changes.
    assert service.post(backport(0, "", "", 0, kind="heartbeat")).status_code == 200
    for body in (backport(1, "p9", "1", 101), backport(2, "p9", "2", 102)):
        assert service.post(body).status_code == 200
    service.drain(clock)
    assert [(r, v) for _, r, v, _ in service.dispatched()[4:]] == [("Patient/p9", "1"), ("Patient/p9", "2")]
    assert service.metric("server_restarts", subscription="backport") == 1

    # A jump from #2 to #5: pending within the grace period, recorded as a gap after it.
    assert service.post(backport(5, "p9", "5", 105)).status_code == 200
    service.drain(clock)
    tracker = GapTracker(
        service.conn, runtime.build_runtime(service.settings, service.conn).keys, None, 30, None, clock
    )  # type: ignore[arg-type]
    assert tracker.pending("backport") == [3, 4] and tracker.gaps("backport") == []
    clock.now += timedelta(seconds=31)
    assert service.post(backport(6, "p9", "6", 106)).status_code == 200
    service.drain(clock)
    assert [(g.first, g.last, g.after_timestamp) for g in tracker.gaps("backport")] == [(3, 4, "2026-11-25T10:01:42Z")]
    assert service.metric("gaps", subscription="backport") == 1
    assert len(service.dispatched()) == 8


BAD_INPUTS: list[tuple[dict[str, Any], int, str, str]] = [
    ({"body": b'{"resourceType": "Patient", "id": "p1"}', "secret": None}, 401, "login", "X-Smartflow-Secret"),
    ({"body": b'{"resourceType": "Patient", "id": "p1"}', "secret": "nope"}, 401, "login", "do not match"),
    (
        {"body": b'{"resourceType": "Patient", "id": "p1"}', "secret": None, "X-Signature": "00" * 32},
        401,
        "login",
        "do not match",
    ),
    ({"body": b"x" * 70_000}, 413, "too-costly", "65536"),
    ({"body": b"{}", "Content-Type": "text/plain"}, 415, "not-supported", "text/plain"),
    ({"body": b"{not json"}, 400, "invalid", "not valid JSON"),
    ({"body": b'{"foo": 1}'}, 400, "invalid", "resourceType"),
    ({"body": b'{"resourceType": "Patient"}'}, 400, "invalid", "no valid id"),
    (
        {"body": backport(1, "p1", "1", 1).replace(b'"valueString": "1"', b'"valueString": "one"')},
        400,
        "invalid",
        "event",
    ),
    (
        {"body": b'{"resourceType": "Patient", "id": "p1"}', "path": "/Patient/other", "method": "PUT"},
        400,
        "invalid",
        "path",
    ),
    ({"body": b"", "method": "DELETE"}, 405, "not-supported", "not allowed"),
    ({"body": b"", "path": "/not/a/resource/path"}, 404, "not-found", "not found"),
]


def test_bad_input_and_auth_failures_answer_with_operation_outcome(service: Service) -> None:
    """Every bad-input class against one running server: status, OperationOutcome, nothing queued."""
    for case, status, code, fragment in BAD_INPUTS:
        kwargs = dict(case)
        response = service.post(kwargs.pop("body"), **kwargs)
        assert response.status_code == status, (case, response.text)
        issue = outcome(response)
        assert (issue["severity"], issue["code"]) == ("error", code), case
        assert fragment in issue["diagnostics"], (case, issue)
    # A chunked body (no Content-Length) over the limit is refused too.
    chunks = (b"x" * 1000 for _ in range(100))
    chunked = requests.post(
        f"{service.url}/fhir/notify",
        data=chunks,
        headers={"Content-Type": FHIR, "X-Smartflow-Secret": "backport-secret"},
    )
    assert chunked.status_code == 413 and outcome(chunked)["code"] == "too-costly"
    assert len(rq.Queue(service.settings.redis.queue, connection=service.conn)) == 0
    assert service.metric("auth_failures", reason="missing") == 1
    assert service.metric("auth_failures", reason="invalid") == 2
    assert service.metric("notifications", type="unknown", result="rejected") == 6  # one 415, five 400s


@pytest.fixture
def redis_started_later(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of its own, not started yet (the test starts it); stopped at the end."""
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()


def test_redis_down_answers_503_and_nothing_is_lost_when_it_is_back(
    processes, tmp_path: Path, redis_started_later: RedisServer
) -> None:
    redis_url = redis_started_later.url
    config = write_config(tmp_path, redis_url)
    url, _ = start_serve(processes, config)
    body = fixture("backport-r4-event-full-resource.json")
    headers = {"Content-Type": FHIR, "X-Smartflow-Secret": "backport-secret"}
    down = requests.post(f"{url}/fhir/notify", data=body, headers=headers, timeout=10)
    assert down.status_code == 503 and down.headers["Retry-After"] == "7"
    assert outcome(down)["code"] == "transient"
    assert requests.get(f"{url}/readyz", timeout=10).status_code == 503

    redis_started_later.start()  # returns once it answers
    conn = redis.Redis.from_url(redis_url)
    assert requests.get(f"{url}/readyz", timeout=10).status_code == 200
    # The server retries the delivery it was refused: now it is kept and processed.
    assert requests.post(f"{url}/fhir/notify", data=body, headers=headers, timeout=10).status_code == 200
    settings = load_settings(config, SECRETS)
    Service(url, None, config, settings, conn).drain()
    assert Service(url, None, config, settings, conn).dispatched() == [("backport", "Patient/p1", "2", "update")]


def test_real_worker_process_and_no_phi_in_info_logs(service: Service, processes) -> None:
    body = fixture("backport-r4-event-full-resource.json")
    assert b"Zebulon" in body
    assert service.post(body).status_code == 200
    wrong = service.post(body, secret="wrong-secret")
    assert wrong.status_code == 401 and outcome(wrong)["code"] == "login"
    worker = processes(smartflow_cmd("--config", str(service.config), "worker", "--burst"), SECRETS, "worker")
    assert worker.proc.wait(timeout=30) == 0, worker.output()
    assert service.dispatched() == [("backport", "Patient/p1", "2", "update")]
    logs = service.proc.output() + worker.output()
    assert "Patient/p1" in logs  # references are logged ...
    for secret in PHI:  # ... names and phone numbers are not
        assert secret not in logs


def test_serve_refuses_to_start_without_subscriptions(tmp_path: Path, redis_url: str) -> None:
    from click.testing import CliRunner

    from fhir_smartflow.cli import main

    config = write_config(tmp_path, redis_url, subscriptions="")
    result = CliRunner().invoke(main, ["--config", str(config), "serve", "--port", str(free_port())])
    assert result.exit_code == 2
    assert "--insecure-dev" in result.output


def test_embedded_serve_processes_in_process(processes, tmp_path: Path) -> None:
    port = free_port()
    proc = processes(smartflow_cmd("serve", "--embedded", "--port", str(port)), {}, "embedded")
    url = f"http://127.0.0.1:{port}"
    proc.wait_http(f"{url}/healthz")
    response = requests.post(
        f"{url}/fhir/notify", data=fixture("r4b-event-full-resource.json"), headers={"Content-Type": FHIR}, timeout=10
    )
    assert response.status_code == 200, response.text
    proc.wait_output("trigger patient.registered on Patient/p1", timeout=10)  # the flows ran in-process
    output = proc.output()
    assert "NOT FOR PRODUCTION" in output and "insecure-dev" in output
