"""The read-ahead of a ``process_events`` batch: every event's focus read in ONE FHIR ``batch`` Bundle,
each event's own fetch answered from it, and anything it cannot answer exactly read on its own.

Real parts: the suite's Redis, the sandbox FHIR store over HTTP, a real rq worker draining real jobs, the
shipped flows writing back through FhirWriteBack. Each scenario runs twice, as one batch job (read
ahead) and as one ``process_event`` job per event (never read ahead), and both must come out the same.
The HTTP edge cases a sandbox does not produce (a wrong version in an entry) use ``responses``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
import redis
import requests
import responses

from fhir_smartflow.config import RedisConfig, Settings
from fhir_smartflow.connections import Keys
from fhir_smartflow.events import ResourceEvent
from fhir_smartflow.fhir.client import FhirClient
from fhir_smartflow.fhir.writeback import FhirWriteBack
from fhir_smartflow.flowfiles import load_engine
from fhir_smartflow.retry import RetryPolicy
from fhir_smartflow.worker import runtime
from fhir_smartflow.worker.context import CachingContextSource, ClientResourceFetcher
from fhir_smartflow.worker.execute import PlanExecutor
from fhir_smartflow.worker.pipeline import EnginePipeline
from fhir_smartflow.worker.prior import RedisPriorState
from fhir_smartflow.worker.seams import Dispatcher, RecordingDispatcher
from tests.support.events import drain
from tests.support.fakes import FakeDeliverer, FakeScheduler
from tests.support.fhir import (
    FHIR,
    Sandbox,
    WsgiApp,
    fault_state,
    search_all,
    serve_sandbox,
    set_faults,
    without_transactions,
)
from tests.support.net import ThreadedWsgiServer
from tests.support.plans import NOW

pytestmark = pytest.mark.integration

ServeApp = Callable[..., ThreadedWsgiServer]
ADULTS = ("a1", "a2", "a3", "a4")


class BundleTypes:
    """WSGI middleware: the ``Bundle.type`` of every POST to the base (``batch`` | ``transaction``)."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, app: WsgiApp) -> WsgiApp:
        def wrapped(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            if environ["REQUEST_METHOD"] == "POST" and environ.get("PATH_INFO", "") in ("", "/"):
                body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
                environ["wsgi.input"] = io.BytesIO(body)  # the app reads it again
                self.seen.append(json.loads(body).get("type"))
            return app(environ, start_response)

        return wrapped


def store(serve_app: ServeApp, variant: Callable[[WsgiApp], WsgiApp] | None = None) -> tuple[Sandbox, BundleTypes]:
    bundles = BundleTypes()
    sandbox = serve_sandbox(serve_app, variant=(lambda app: bundles(variant(app))) if variant else bundles)
    return sandbox, bundles


@pytest.fixture
def stores(serve_app: ServeApp) -> Iterator[Callable[..., tuple[Sandbox, BundleTypes]]]:
    made: list[Sandbox] = []

    def make(variant: Callable[[WsgiApp], WsgiApp] | None = None) -> tuple[Sandbox, BundleTypes]:
        sandbox, bundles = store(serve_app, variant)
        made.append(sandbox)
        return sandbox, bundles

    yield make
    for sandbox in made:
        sandbox.close()


def put(base: str, resource: dict[str, Any]) -> dict[str, Any]:
    answer = requests.put(f"{base}/{resource['resourceType']}/{resource['id']}", json=resource, headers=FHIR, timeout=5)
    assert answer.status_code in (200, 201), answer.text
    return answer.json()


def adult(pid: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": pid,
        "birthDate": "1980-05-01",
        "name": [{"given": ["Ada"], "family": f"Example-{pid}"}],
        "telecom": [{"system": "phone", "value": "+15555550100"}, {"system": "email", "value": f"{pid}@example.org"}],
    }


def id_only(pid: str, number: int, version: str | None = "1", **kw: Any) -> ResourceEvent:
    """An id-only notification (the focus is read), as the webhook queues it."""
    return ResourceEvent(
        subscription="smartflow-patient",
        resource_type="Patient",
        resource_id=pid,
        received_at=NOW.isoformat(),
        event_number=number,
        version_id=version,
        timestamp=f"2026-11-25T10:00:{number:02d}Z",
        interaction="create",
        payload_content="id-only",
        body_hash=f"h{number}",
        **kw,
    )


def engine_pipeline(client: FhirClient, settings: Settings, conn: redis.Redis, keys: Keys) -> EnginePipeline:
    """The shipped flows writing back to the store (delivery and scheduling are fakes)."""
    executor = PlanExecutor(
        FhirWriteBack(client, settings.fhir.identifier_system, conn, keys),
        conn,
        keys,
        settings,
        deliverer=FakeDeliverer(),
        scheduler=FakeScheduler(),
        clock=lambda: NOW,
    )
    return EnginePipeline(
        load_engine(settings),
        settings,
        RedisPriorState(conn, keys),
        lambda event: CachingContextSource(client),
        executor,
        conn,
        keys,
        clock=lambda: NOW,
    )


def worker_runtime(
    base: str, redis_url: str, conn: redis.Redis, prefix: str, *, flows: bool = False, retries: int = 1
) -> runtime.Runtime:
    settings = Settings(redis=RedisConfig(url=redis_url, key_prefix=prefix, queue=f"{prefix}events"))
    client = FhirClient(base, retry=RetryPolicy(max_retries=retries), sleep=lambda s: None)
    dispatcher: Dispatcher | None = engine_pipeline(client, settings, conn, Keys(prefix)) if flows else None
    return runtime.build_runtime(
        settings, conn, dispatcher=dispatcher, fetcher=ClientResourceFetcher(client, settings, conn=conn)
    )


def run(rt: runtime.Runtime, events: list[ResourceEvent], *, batch: bool) -> None:
    """Queue the events as one batch job (or one job each) and drain them with a real rq worker."""
    assert drain(rt, events, batch=batch) == []


def dispatched(rt: runtime.Runtime) -> list[tuple[str | None, str | None, dict[str, Any] | None]]:
    """What reached the dispatcher, its resources without ``meta.lastUpdated`` (each store has its own)."""
    recorder = rt.dispatcher
    assert isinstance(recorder, RecordingDispatcher)
    return sorted(((e.reference, e.interaction, _undated(e.resource)) for e in recorder.dispatched()), key=str)


def _undated(resource: dict[str, Any] | None) -> dict[str, Any] | None:
    if resource is None:
        return None
    meta = {k: v for k, v in (resource.get("meta") or {}).items() if k != "lastUpdated"}
    return {**resource, "meta": meta}


def focus_gets(sandbox: Sandbox) -> list[str]:
    """The individual reads of a Patient (``/Patient/<id>`` and its versions), not searches."""
    return sorted(r.path for r in sandbox.log.requests if r.method == "GET" and r.path.startswith("/Patient/"))


def tasks(base: str) -> list[tuple[str, str, str]]:
    """Every Task as (patient, code, business identifier): what the flows wrote, without server ids."""
    return sorted(
        (
            task["for"]["reference"],
            (task.get("code") or {}).get("coding", [{}])[0].get("code", ""),
            task["identifier"][0]["value"],
        )
        for task in search_all(base, "Task")
    )


def test_a_batch_reads_every_focus_in_one_batch_bundle_and_writes_what_single_jobs_write(
    stores: Callable[..., tuple[Sandbox, BundleTypes]], redis_url: str, redis_conn: redis.Redis
) -> None:
    (ahead, ahead_bundles), (single, single_bundles) = stores(), stores()
    for base in (ahead, single):
        for pid in ADULTS:
            put(base, adult(pid))
    events = [id_only(pid, number) for number, pid in enumerate(ADULTS, start=1)]

    run(worker_runtime(ahead, redis_url, redis_conn, "ra1:", flows=True), events, batch=True)
    run(worker_runtime(single, redis_url, redis_conn, "ra2:", flows=True), events, batch=False)

    # One batch POST answered every focus read: no individual read of a Patient.
    assert ahead_bundles.seen.count("batch") == 1
    vreads = sorted(f"/Patient/{pid}/_history/1" for pid in ADULTS)
    assert [path for path in focus_gets(single) if "/_history/" in path] == vreads
    assert [path for path in focus_gets(ahead) if "/_history/" in path] == []
    # The flows' own reads of each patient's current version (planning context) are as before.
    assert [p for p in focus_gets(ahead) if p not in vreads] == [p for p in focus_gets(single) if p not in vreads]
    assert "batch" not in single_bundles.seen
    assert ahead.log.count("GET", "/metadata") == 1  # asked once, for the write-back and the read-ahead
    # The same Tasks, each exactly once: the intake task and the review task of every patient.
    written = tasks(ahead)
    assert written == tasks(single)
    assert len(written) == 2 * len(ADULTS)
    assert len({identifier for _, _, identifier in written}) == len(written)


def test_entries_the_batch_does_not_answer_with_the_resource_are_fetched_as_today(
    stores: Callable[..., tuple[Sandbox, BundleTypes]], redis_url: str, redis_conn: redis.Redis
) -> None:
    (ahead, ahead_bundles), (single, _) = stores(), stores()
    for base in (ahead, single):
        for pid in ("p1", "p2", "gone"):
            put(base, {"resourceType": "Patient", "id": pid})
        assert requests.delete(f"{base}/Patient/gone", timeout=5).status_code in (200, 204)
    events = [
        id_only("p1", 1),
        id_only("p2", 2),
        id_only("gone", 3, version="2"),  # the deletion: 410 Gone → a delete event, as today
        id_only("ghost", 4, trusted_content=False),  # a claimed change of nothing: nothing is done
        id_only("p1", 5, verify=True),  # p1 v1 again, verified: its read's answer went to event 1
    ]

    run(ahead_rt := worker_runtime(ahead, redis_url, redis_conn, "rb1:"), events, batch=True)
    run(single_rt := worker_runtime(single, redis_url, redis_conn, "rb2:"), events, batch=False)

    assert dispatched(ahead_rt) == dispatched(single_rt)
    assert ("Patient/gone", "delete", None) in dispatched(ahead_rt)
    assert not any(reference == "Patient/ghost" for reference, _, _ in dispatched(ahead_rt))
    assert ahead_bundles.seen == ["batch"]
    # Only what the batch could not answer was read on its own: the deleted patient (its vread, then
    # the current read), the unknown one, and p1's second verification (each answer is used once).
    assert focus_gets(ahead) == sorted(
        ["/Patient/gone/_history/2", "/Patient/gone", "/Patient/ghost", "/Patient/p1/_history/1"]
    )


def test_a_server_without_batch_gets_individual_reads(
    stores: Callable[..., tuple[Sandbox, BundleTypes]], redis_url: str, redis_conn: redis.Redis
) -> None:
    sandbox, bundles = stores(without_transactions)
    for pid in ("p1", "p2", "p3"):
        put(sandbox, {"resourceType": "Patient", "id": pid})
    rt = worker_runtime(sandbox, redis_url, redis_conn, "rc:")
    events = [id_only(pid, number) for number, pid in enumerate(("p1", "p2", "p3"), start=1)]

    run(rt, events, batch=True)
    run(rt, [id_only(pid, number) for number, pid in enumerate(("p1", "p2"), start=4)], batch=True)  # duplicates

    assert bundles.seen == []  # not even tried
    assert sandbox.log.count("GET", "/metadata") == 1  # asked once per process, not once per batch
    assert focus_gets(sandbox) == sorted(f"/Patient/{pid}/_history/1" for pid in ("p1", "p2", "p3"))
    assert [reference for reference, _, resource in dispatched(rt) if resource] == [
        "Patient/p1",
        "Patient/p2",
        "Patient/p3",
    ]


def test_a_failing_batch_request_falls_back_to_individual_reads(
    stores: Callable[..., tuple[Sandbox, BundleTypes]], redis_url: str, redis_conn: redis.Redis
) -> None:
    sandbox, bundles = stores()
    for pid in ("p1", "p2", "p3"):
        put(sandbox, {"resourceType": "Patient", "id": pid})
    rt = worker_runtime(sandbox, redis_url, redis_conn, "rd:", retries=1)
    set_faults(sandbox, fail_first=2, statuses=[503], methods=["POST"], retry_after=0)  # the batch and its retry

    run(rt, [id_only(pid, number) for number, pid in enumerate(("p1", "p2", "p3"), start=1)], batch=True)

    assert bundles.seen == ["batch", "batch"]
    assert fault_state(sandbox)["counters"]["failed"] == 2
    assert focus_gets(sandbox) == sorted(f"/Patient/{pid}/_history/1" for pid in ("p1", "p2", "p3"))
    assert [(reference, resource is not None) for reference, _, resource in dispatched(rt)] == [
        ("Patient/p1", True),
        ("Patient/p2", True),
        ("Patient/p3", True),
    ]
    assert rt.metrics.counter_value("events", result="processed") == 3


BASE = "https://ehr.example.org/fhir"
STATEMENT = {"resourceType": "CapabilityStatement", "rest": [{"mode": "server", "interaction": [{"code": "batch"}]}]}


def patient(pid: str, version: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "meta": {"versionId": version}}


def fetcher() -> ClientResourceFetcher:
    return ClientResourceFetcher(FhirClient(BASE, retry=RetryPolicy(max_retries=0)), Settings())


@responses.activate
def test_an_entry_that_is_not_the_version_asked_for_is_read_on_its_own() -> None:
    responses.get(f"{BASE}/metadata", json=STATEMENT)
    answer = {
        "resourceType": "Bundle",
        "type": "batch-response",
        "entry": [
            {"response": {"status": "200 OK"}, "resource": patient("1", "4")},  # asked for version 3
            {"response": {"status": "200"}, "resource": patient("2", "7")},
            {"response": {"status": "200 OK"}, "resource": {"resourceType": "Patient", "id": "someone-else"}},
        ],
    }
    batch = responses.post(BASE, json=answer)
    vread = responses.get(f"{BASE}/Patient/1/_history/3", json=patient("1", "3"))
    read = responses.get(f"{BASE}/Patient/3", json=patient("3", "1"))
    questions = [id_only("1", 1, version="3"), id_only("2", 2, version="7"), id_only("3", 3, version=None)]

    reading = fetcher().read_ahead(questions)
    fetched = [reading.fetch(q) for q in questions]

    assert batch.call_count == 1
    sent = json.loads(batch.calls[0].request.body)
    assert (sent["type"], [e["request"] for e in sent["entry"]]) == (
        "batch",
        [
            {"method": "GET", "url": "Patient/1/_history/3"},
            {"method": "GET", "url": "Patient/2/_history/7"},
            {"method": "GET", "url": "Patient/3"},
        ],
    )
    assert [e.resource for e in fetched] == [patient("1", "3"), patient("2", "7"), patient("3", "1")]
    assert (vread.call_count, read.call_count) == (1, 1)
    again = responses.get(f"{BASE}/Patient/2/_history/7", json=patient("2", "7"))
    assert reading.fetch(questions[1]).resource == patient("2", "7")  # each answer is used once
    assert again.call_count == 1


@responses.activate
def test_a_single_read_or_an_unanswerable_batch_is_not_read_ahead() -> None:
    responses.get(f"{BASE}/metadata", json=STATEMENT)
    one = fetcher()
    assert one.read_ahead([id_only("1", 1), id_only("1", 2)]) is one  # one distinct read: nothing to save
    assert len(responses.calls) == 0
    responses.post(BASE, body="<html>not FHIR</html>", status=200)
    assert one.read_ahead([id_only("1", 1), id_only("2", 2)]) is one  # the answer is no Bundle: no raise
    responses.replace(responses.POST, BASE, json={"resourceType": "Bundle", "type": "batch-response", "entry": []})
    assert one.read_ahead([id_only("1", 1), id_only("2", 2)]) is one  # not one entry per read
    responses.replace(responses.POST, BASE, json={"resourceType": "Bundle", "type": "batch-response", "entry": 2})
    assert one.read_ahead([id_only("1", 1), id_only("2", 2)]) is one  # no entry list at all
