"""FhirClient at its HTTP edge (``responses``): retries, typed errors, paging, conditional create, SSRF guard."""

from __future__ import annotations

import json

import pytest
import requests
import responses
from responses import matchers

from fhir_smartflow.config import Settings, load_settings
from fhir_smartflow.fhir.client import FhirClient
from fhir_smartflow.fhir.errors import (
    FhirBadRequest,
    FhirConflict,
    FhirForbidden,
    FhirNotFound,
    FhirServerError,
    FhirUnavailable,
    FhirUrlRejected,
)
from fhir_smartflow.fhir.urls import BaseUrl
from fhir_smartflow.retry import RetryPolicy

BASE = "https://ehr.example.org/fhir"


def outcome(text: str) -> dict:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "invalid", "diagnostics": text}],
    }


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def client(sleeps: list[float]) -> FhirClient:
    return FhirClient(BASE, retry=RetryPolicy(max_retries=3, base_seconds=0.5, max_seconds=30), sleep=sleeps.append)


@responses.activate
def test_read_sends_fhir_accept_and_returns_resource(client: FhirClient) -> None:
    responses.get(f"{BASE}/Patient/1", json={"resourceType": "Patient", "id": "1"})
    assert client.read("Patient/1") == {"resourceType": "Patient", "id": "1"}
    assert responses.calls[0].request.headers["Accept"] == "application/fhir+json"


@responses.activate
def test_read_missing_or_gone_is_none(client: FhirClient) -> None:
    responses.get(f"{BASE}/Patient/404", status=404, json=outcome("no such patient"))
    responses.get(f"{BASE}/Patient/410", status=410, json=outcome("deleted"))
    assert client.read("Patient/404") is None
    assert client.read(f"{BASE}/Patient/410") is None


@responses.activate
def test_retries_503_then_429_honouring_retry_after(client: FhirClient, sleeps: list[float]) -> None:
    url = f"{BASE}/Patient/1"
    responses.get(url, status=503, json=outcome("down"), headers={"Retry-After": "7"})
    responses.get(url, status=429, json=outcome("slow down"), headers={"Retry-After": "2"})
    responses.get(url, json={"resourceType": "Patient", "id": "1"})
    assert client.read("Patient/1")["id"] == "1"
    assert sleeps == [7.0, 2.0]
    assert len(responses.calls) == 3


@responses.activate
def test_backoff_without_retry_after_grows_and_gives_up(client: FhirClient, sleeps: list[float]) -> None:
    responses.get(f"{BASE}/Patient/1", status=502, json=outcome("bad gateway"))
    with pytest.raises(FhirUnavailable) as info:
        client.read("Patient/1")
    assert len(responses.calls) == 4  # first try + 3 retries
    assert len(sleeps) == 3
    assert 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0 and 1.0 <= sleeps[2] <= 2.0
    assert info.value.status == 502 and "bad gateway" in str(info.value)
    assert info.value.transient


@responses.activate
def test_connection_errors_are_retried(client: FhirClient, sleeps: list[float]) -> None:
    url = f"{BASE}/Patient/1"
    responses.get(url, body=requests.ConnectionError("refused"))
    responses.get(url, json={"resourceType": "Patient", "id": "1"})
    assert client.read("Patient/1")["id"] == "1"
    assert len(sleeps) == 1


@responses.activate
def test_plain_post_is_not_resent_after_a_server_error(client: FhirClient) -> None:
    # A 500 may mean the resource was created: resending a non-conditional POST could duplicate it.
    responses.post(f"{BASE}/Task", status=500, json=outcome("boom"))
    with pytest.raises(FhirServerError) as info:
        client.create({"resourceType": "Task", "status": "requested", "intent": "order"})
    assert info.value.transient  # the executor lets rq retry the plan; the write-back searches first
    assert len(responses.calls) == 1


@responses.activate
def test_conditional_post_is_retried(client: FhirClient) -> None:
    task = {"resourceType": "Task", "id": "9", "status": "requested", "intent": "order"}
    responses.post(f"{BASE}/Task", status=500, json=outcome("boom"))
    responses.post(f"{BASE}/Task", status=201, json=task)
    stored, created = client.create(task, if_none_exist="identifier=urn:x|a")
    assert created and stored["id"] == "9" and len(responses.calls) == 2


@pytest.mark.parametrize(
    ("status", "exc", "text"),
    [
        (400, FhirBadRequest, "Task.intent: required"),
        (422, FhirBadRequest, "Unknown code"),
        (404, FhirNotFound, "no such resource"),
        (409, FhirConflict, "version conflict"),
        (412, FhirConflict, "matched 2 resources"),
    ],
)
@responses.activate
def test_4xx_raise_typed_errors_at_once_with_outcome_text(client, sleeps, status, exc, text) -> None:
    responses.post(f"{BASE}/Task", status=status, json=outcome(text))
    with pytest.raises(exc) as info:
        client.create({"resourceType": "Task", "status": "requested", "intent": "order"}, if_none_exist="identifier=a")
    assert text in str(info.value)
    assert info.value.status == status
    assert info.value.outcome["issue"][0]["diagnostics"] == text
    assert not info.value.transient
    assert sleeps == [] and len(responses.calls) == 1


@responses.activate
def test_403_names_missing_scopes(client: FhirClient) -> None:
    responses.post(
        f"{BASE}/Task",
        status=403,
        json={
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "forbidden", "details": {"text": "token lacks system/Task.c"}}],
        },
    )
    with pytest.raises(FhirForbidden) as info:
        client.create({"resourceType": "Task", "status": "requested", "intent": "order"})
    assert "missing or insufficient scopes: system/Task.c" in str(info.value)


@responses.activate
def test_search_follows_next_links_across_pages(client: FhirClient) -> None:
    page2 = f"{BASE}/Task?_getpages=abc&_offset=2"
    responses.get(
        f"{BASE}/Task",
        match=[matchers.query_param_matcher({"status": "requested"})],
        json={
            "resourceType": "Bundle",
            "type": "searchset",
            "link": [{"relation": "next", "url": page2}],
            "entry": [
                {"resource": {"resourceType": "Task", "id": "1"}, "search": {"mode": "match"}},
                {"resource": {"resourceType": "Patient", "id": "p"}, "search": {"mode": "include"}},
            ],
        },
    )
    responses.get(
        page2,
        json={
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": {"resourceType": "Task", "id": "2"}}],
        },
    )
    assert [t["id"] for t in client.search("Task", {"status": "requested"})] == ["1", "2"]


@responses.activate
def test_next_link_outside_base_is_refused_without_request(client: FhirClient) -> None:
    responses.get(
        f"{BASE}/Task",
        json={
            "resourceType": "Bundle",
            "type": "searchset",
            "link": [{"relation": "next", "url": "http://169.254.169.254/latest/meta-data"}],
            "entry": [],
        },
    )
    with pytest.raises(FhirUrlRejected):
        client.search("Task", {})
    assert len(responses.calls) == 1


@pytest.mark.parametrize(
    "reference",
    [
        "http://169.254.169.254/latest/meta-data",
        "https://evil.example.org/fhir/Patient/1",
        "https://ehr.example.org.evil.com/fhir/Patient/1",
        "https://ehr.example.org@evil.com/fhir/Patient/1",
        "https://user:pw@ehr.example.org/fhir/Patient/1",
        "http://ehr.example.org/fhir/Patient/1",  # scheme downgrade
        "https://ehr.example.org:8443/fhir/Patient/1",
        "https://ehr.example.org/fhirx/Patient/1",
        "https://ehr.example.org/other/Patient/1",
        "https://ehr.example.org/fhir/../admin",
        "https://ehr.example.org/fhir/%2e%2e/admin",
        "https://ehr.example.org/fhir/%252e%252e/admin",
        "Patient/../../admin",
        "/admin/Patient/1",
        "//evil.com/fhir/Patient/1",
        "file:///etc/passwd",
        "https://ehr.example.org/fhir/Patient/1 extra",
        "",
    ],
)
@responses.activate
def test_focus_references_outside_base_are_refused(client: FhirClient, reference: str) -> None:
    with pytest.raises(FhirUrlRejected):
        client.read(reference)
    assert len(responses.calls) == 0


@responses.activate
def test_absolute_reference_under_base_and_default_port_are_accepted(client: FhirClient) -> None:
    responses.get(f"{BASE}/Patient/1", json={"resourceType": "Patient", "id": "1"})
    assert client.read("https://EHR.example.org:443/fhir/Patient/1")["id"] == "1"


@responses.activate
def test_conditional_create_sends_if_none_exist_and_reports_existing(client: FhirClient) -> None:
    existing = {"resourceType": "Task", "id": "5", "status": "requested", "intent": "order"}
    responses.post(f"{BASE}/Task", status=200, json=existing)
    stored, created = client.create(
        {"resourceType": "Task", "status": "requested", "intent": "order"},
        if_none_exist="identifier=urn:fhir-smartflow:id|intake/send/task/abc",
    )
    assert stored["id"] == "5" and created is False
    sent = responses.calls[0].request
    assert sent.headers["If-None-Exist"] == "identifier=urn:fhir-smartflow:id|intake/send/task/abc"
    assert sent.headers["Content-Type"] == "application/fhir+json"
    assert json.loads(sent.body)["resourceType"] == "Task"


@responses.activate
def test_create_without_body_follows_location(client: FhirClient) -> None:
    responses.post(f"{BASE}/Task", status=201, headers={"Location": f"{BASE}/Task/77/_history/1"})
    responses.get(f"{BASE}/Task/77/_history/1", json={"resourceType": "Task", "id": "77", "meta": {"versionId": "1"}})
    stored, created = client.create({"resourceType": "Task", "status": "requested", "intent": "order"})
    assert created and stored["id"] == "77"


@responses.activate
def test_location_outside_base_is_refused(client: FhirClient) -> None:
    responses.post(f"{BASE}/Task", status=201, headers={"Location": "https://evil.example.org/Task/1"})
    with pytest.raises(FhirUrlRejected):
        client.create({"resourceType": "Task", "status": "requested", "intent": "order"})
    assert len(responses.calls) == 1


@responses.activate
def test_redirect_outside_base_is_not_followed(client: FhirClient) -> None:
    responses.get(f"{BASE}/Patient/1", status=302, headers={"Location": "http://127.0.0.1:6379/"})
    with pytest.raises(FhirUrlRejected):
        client.read("Patient/1")
    assert len(responses.calls) == 1


@responses.activate
def test_update_and_conditional_update(client: FhirClient) -> None:
    task = {"resourceType": "Task", "id": "3", "status": "cancelled", "intent": "order"}
    responses.put(f"{BASE}/Task/3", json={**task, "meta": {"versionId": "2"}})
    responses.put(
        f"{BASE}/Task", match=[matchers.query_param_matcher({"identifier": "urn:x|1"})], json={**task, "id": "4"}
    )
    assert client.update(task)["meta"]["versionId"] == "2"
    assert client.update(task, condition="identifier=urn:x|1")["id"] == "4"


@responses.activate
def test_transaction_and_operation(client: FhirClient) -> None:
    responses.post(BASE, json={"resourceType": "Bundle", "type": "transaction-response", "entry": []})
    responses.get(
        f"{BASE}/Subscription/s1/$events",
        match=[matchers.query_param_matcher({"eventsSinceNumber": "3", "eventsUntilNumber": "5"})],
        json={"resourceType": "Bundle", "type": "history"},
    )
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": []}
    assert client.transaction(bundle)["type"] == "transaction-response"
    assert client.operation("Subscription/s1/$events", {"eventsSinceNumber": 3, "eventsUntilNumber": 5})["type"] == (
        "history"
    )


def test_base_url_normalization() -> None:
    base = BaseUrl("HTTPS://Ehr.Example.org:443/fhir/")
    assert base.url == "https://ehr.example.org/fhir"
    assert base.relative("https://ehr.example.org/fhir/Patient/1/_history/2") == "Patient/1/_history/2"
    with pytest.raises(ValueError):
        BaseUrl("ftp://x/fhir")


def test_from_settings_defaults_to_sandbox(tmp_path) -> None:
    client = FhirClient.from_settings(Settings())
    assert client.base_url == "http://127.0.0.1:8080/sandbox/fhir"
    cfg = tmp_path / "c.toml"
    cfg.write_text('[fhir]\nbase_url = "https://ehr.example.org/r4"\nmax_retries = 2\n')
    client = FhirClient.from_settings(load_settings(cfg, env={}))
    assert client.base_url == "https://ehr.example.org/r4" and client.retry.max_retries == 2


def test_plain_post_is_retried_when_the_connection_was_refused() -> None:
    from tests.support.net import free_port

    sleeps: list[float] = []
    client = FhirClient(f"http://127.0.0.1:{free_port()}/fhir", retry=RetryPolicy(max_retries=2), sleep=sleeps.append)
    with pytest.raises(FhirUnavailable, match="3 attempt"):
        client.create({"resourceType": "Task", "status": "requested", "intent": "order"})
    assert len(sleeps) == 2  # nothing reached a server, so resending cannot duplicate


@responses.activate
def test_plain_post_is_not_resent_after_a_connection_reset(client: FhirClient, sleeps: list[float]) -> None:
    responses.post(f"{BASE}/Task", body=requests.ConnectionError("Connection reset by peer"))
    with pytest.raises(FhirUnavailable):
        client.create({"resourceType": "Task", "status": "requested", "intent": "order"})
    assert len(responses.calls) == 1 and sleeps == []
