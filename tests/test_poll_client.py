"""The poller reads through the one FhirClient: its URL guard on `next` links, its retries, its metrics and
its cached CapabilityStatement (the sandbox over real HTTP, real Redis)."""

from __future__ import annotations

import pytest
import redis
import requests

from fhir_smartflow.config import PollConfig
from fhir_smartflow.connections import Keys
from fhir_smartflow.fhir.client import FhirClient
from fhir_smartflow.fhir.errors import FhirUrlRejected
from fhir_smartflow.ingest.poll import LAST_UPDATED, Poller
from fhir_smartflow.metrics import Metrics
from fhir_smartflow.retry import RetryPolicy

pytestmark = pytest.mark.integration

FHIR = {"Content-Type": "application/fhir+json"}
CONFIG = PollConfig(page_size=2, overlap_seconds=0, jitter_seconds=0, initial_lookback_hours=1)


def add_patients(base: str, count: int) -> list[str]:
    ids = []
    for i in range(count):
        resp = requests.post(
            f"{base}/Patient", json={"resourceType": "Patient", "name": [{"family": f"P{i}"}]}, headers=FHIR, timeout=5
        )
        ids.append(resp.json()["id"])
    return ids


def sent_urls(client: FhirClient) -> list[str]:
    urls: list[str] = []
    client.session.hooks["response"].append(lambda r, *a, **k: urls.append(r.request.url))
    return urls


def test_a_next_link_to_another_host_is_refused_and_the_watermark_keeps_the_pages_before_it(
    sandbox_server: str, redis_conn: redis.Redis
) -> None:
    ids = add_patients(sandbox_server, 3)
    # Like Medplum: the server writes its own configured host into paging links.
    sandbox_server.app.extensions["sandbox"].base_url = sandbox_server.replace("127.0.0.1", "localhost")
    client = FhirClient(sandbox_server, retry=RetryPolicy(max_retries=0))
    urls = sent_urls(client)
    queued: list[str] = []
    poller = Poller(
        client, lambda events: queued.extend(e.resource_id for e in events), redis_conn, Keys("t:"), CONFIG, ["Patient"]
    )
    with pytest.raises(FhirUrlRejected, match="host is not the FHIR server's"):
        poller.run_once()
    assert queued == ids[:2]  # the first page was queued ...
    assert all(u.startswith(sandbox_server) for u in urls)  # ... and the foreign next link never requested
    first_page_newest = requests.get(f"{sandbox_server}/Patient/{ids[1]}", timeout=5).json()["meta"]["lastUpdated"]
    assert poller.watermark("Patient").isoformat().startswith(first_page_newest[:19])


def test_poll_requests_are_retried_and_counted_by_the_client(sandbox_server: str, redis_conn: redis.Redis) -> None:
    ids = add_patients(sandbox_server, 3)
    metrics = Metrics(redis_conn, "t:")
    sleeps: list[float] = []
    client = FhirClient(sandbox_server, retry=RetryPolicy(max_retries=3), sleep=sleeps.append, metrics=metrics)
    queued: list[str] = []
    poller = Poller(
        client, lambda events: queued.extend(e.resource_id for e in events), redis_conn, Keys("t:"), CONFIG, ["Patient"]
    )
    assert [p.strategy for p in poller.plans()] == [LAST_UPDATED]
    requests.post(f"{sandbox_server}/$faults", json={"fail_first": 2, "methods": ["GET"]}, timeout=5)
    [result] = poller.run_once()
    assert (result.found, result.pages, result.error) == (3, 2, None)
    assert sorted(queued) == sorted(ids) and len(sleeps) == 2  # two 503s absorbed by the client's retries
    assert metrics.counter_value("fhir_requests", method="GET", status="503") == 2
    assert metrics.counter_value("fhir_requests", method="GET", status="200") == 3  # metadata + two pages


def test_the_capability_statement_is_read_once_per_client(sandbox_server: str, redis_conn: redis.Redis) -> None:
    client = FhirClient(sandbox_server, retry=RetryPolicy(max_retries=0))
    urls = sent_urls(client)
    for _ in range(3):  # a restarted poller in the same process, and the write-back, share the client
        Poller(client, lambda events: [], redis_conn, Keys("t:"), CONFIG, ["Patient"]).plans()
    assert client.capabilities()["resourceType"] == "CapabilityStatement"
    assert [u for u in urls if u.endswith("/metadata")] == [f"{sandbox_server}/metadata"]
    client.capabilities(refresh=True)
    assert len([u for u in urls if u.endswith("/metadata")]) == 2
