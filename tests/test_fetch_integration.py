"""ClientResourceFetcher inside the real event job, against the sandbox FHIR store over HTTP and real Redis."""

from __future__ import annotations

import pytest

from fhir_smartflow.config import Settings, SubscriptionConfig
from fhir_smartflow.events import ResourceEvent
from fhir_smartflow.fhir.client import FhirClient
from fhir_smartflow.retry import RetryPolicy
from fhir_smartflow.worker import runtime
from fhir_smartflow.worker.context import ClientResourceFetcher
from fhir_smartflow.worker.jobs import handle_event
from fhir_smartflow.worker.seams import RecordingDispatcher
from tests.support.fhir import Sandbox, seed, set_faults

pytestmark = pytest.mark.integration


def _event(**kw) -> ResourceEvent:
    base = {"subscription": "smartflow-patient", "resource_type": "Patient", "received_at": "2026-03-02T15:00:00Z"}
    return ResourceEvent(**{**base, **kw})


def test_id_only_and_empty_notifications_are_completed_by_the_fetcher(redis_conn, sandbox_server: Sandbox) -> None:
    settings = Settings(subscriptions=[SubscriptionConfig(id="smartflow-patient", secret_env="X", criteria="Patient?")])
    server = sandbox_server
    p1 = seed(server, {"resourceType": "Patient", "id": "p1", "active": True})
    seed(server, {"resourceType": "Patient", "id": "p2"})
    client = FhirClient(server, retry=RetryPolicy(max_retries=3), sleep=lambda s: None)
    fetcher = ClientResourceFetcher(client, settings, conn=redis_conn)
    rt = runtime.build_runtime(settings, redis_conn, fetcher=fetcher)
    dispatcher = rt.dispatcher
    assert isinstance(dispatcher, RecordingDispatcher)

    set_faults(server, fail_first=1, statuses=[503], retry_after=0)
    id_only = _event(resource_id="p1", version_id="1", event_number=1, payload_content="id-only")
    assert handle_event(rt, id_only) == "processed"
    assert handle_event(rt, _event(resource_id="gone", event_number=2, payload_content="id-only")) == "processed"
    assert handle_event(rt, _event(resource_id=None, payload_content="empty", body_hash="b1")) == "processed"

    seen = [(e.reference, e.interaction, e.resource is not None) for e in dispatcher.dispatched()]
    assert seen[0] == ("Patient/p1", None, True)
    assert seen[1] == ("Patient/gone", "delete", False)
    # The empty notification re-queried the criteria: p1 v1 was already dispatched (same dedupe key
    # as the id-only event), so only p2 is new; a second empty notification dispatches nothing.
    assert seen[2:] == [("Patient/p2", None, True)]
    assert dispatcher.dispatched()[0].resource == p1
    handle_event(rt, _event(resource_id=None, payload_content="empty", body_hash="b2"))
    assert len(dispatcher.dispatched()) == 3
    # The focus read survived the injected 503 (one retry), and nothing was fetched off-base.
    assert server.log.count("GET", "/Patient/p1") == 2


def test_events_that_must_be_verified_are_acted_on_as_the_server_has_them(redis_conn, sandbox_server: Sandbox) -> None:
    settings = Settings(subscriptions=[SubscriptionConfig(id="smartflow-patient", secret_env="X", criteria="Patient?")])
    server = sandbox_server
    stored = seed(server, {"resourceType": "Patient", "id": "p1", "active": True})
    client = FhirClient(server, retry=RetryPolicy(max_retries=3), sleep=lambda s: None)
    rt = runtime.build_runtime(settings, redis_conn, fetcher=ClientResourceFetcher(client, settings, conn=redis_conn))
    dispatcher = rt.dispatcher
    assert isinstance(dispatcher, RecordingDispatcher)

    # verify: a forged body about a real resource is replaced by the server's copy at that version.
    forged = {"resourceType": "Patient", "id": "p1", "active": False, "meta": {"versionId": "1"}}
    assert handle_event(rt, _event(resource_id="p1", version_id="1", resource=forged, verify=True)) == "processed"
    # A path-addressed delete (HAPI's DELETE <endpoint>/Patient/p1) of a resource that still exists is no
    # delete: it is the version already processed.
    claimed = _event(resource_id="p1", interaction="delete", trusted_content=False, payload_content="id-only")
    assert handle_event(rt, claimed) == "deduplicated"
    # A claimed change of a resource the server does not have acts on nothing.
    ghost = _event(resource_id="ghost", trusted_content=False, payload_content="id-only", body_hash="g")
    assert handle_event(rt, ghost) == "processed"

    [seen] = dispatcher.dispatched()
    assert (seen.reference, seen.interaction, seen.resource) == ("Patient/p1", None, stored)
