"""The sandbox FHIR store over real HTTP: CRUD, versions, conditional interactions, validation, metadata."""

from __future__ import annotations

from typing import Any

import pytest
import requests
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome

pytestmark = pytest.mark.integration

FHIR = {"Content-Type": "application/fhir+json"}


def patient(family: str = "Doe", mrn: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"resourceType": "Patient", "name": [{"family": family}], **extra}
    if mrn:
        body["identifier"] = [{"system": "urn:mrn", "value": mrn}]
    return body


def assert_outcome(response: requests.Response, status: int, text: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/fhir+json")
    body = response.json()
    OperationOutcome.model_validate(body)
    assert text in body["issue"][0]["diagnostics"], body
    return body


def test_create_read_update_vread_delete_then_gone(sandbox_server: str) -> None:
    created = requests.post(f"{sandbox_server}/Patient", json=patient(), headers=FHIR, timeout=5)
    assert created.status_code == 201
    body = created.json()
    pid = body["id"]
    assert body["meta"]["versionId"] == "1"
    assert created.headers["Location"] == f"{sandbox_server}/Patient/{pid}/_history/1"
    assert created.headers["ETag"] == 'W/"1"'

    read = requests.get(f"{sandbox_server}/Patient/{pid}", timeout=5).json()
    assert read == body

    updated = requests.put(
        f"{sandbox_server}/Patient/{pid}", json={**patient("Roe"), "id": pid}, headers=FHIR, timeout=5
    )
    assert updated.status_code == 200
    assert updated.json()["meta"]["versionId"] == "2"
    assert updated.json()["meta"]["lastUpdated"] > body["meta"]["lastUpdated"]

    v1 = requests.get(f"{sandbox_server}/Patient/{pid}/_history/1", timeout=5).json()
    v2 = requests.get(f"{sandbox_server}/Patient/{pid}/_history/2", timeout=5).json()
    assert v1["name"][0]["family"] == "Doe" and v2["name"][0]["family"] == "Roe"

    assert requests.delete(f"{sandbox_server}/Patient/{pid}", timeout=5).status_code == 200
    assert_outcome(requests.get(f"{sandbox_server}/Patient/{pid}", timeout=5), 410, "deleted")
    history = requests.get(f"{sandbox_server}/Patient/{pid}/_history", timeout=5).json()
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "PUT", "POST"]
    # create-on-update brings it back as version 4
    back = requests.put(f"{sandbox_server}/Patient/{pid}", json=patient(), headers=FHIR, timeout=5)
    assert back.status_code == 201 and back.json()["meta"]["versionId"] == "4"


def test_update_creates_with_client_id_and_if_match(sandbox_server: str) -> None:
    first = requests.put(f"{sandbox_server}/Patient/p-1", json=patient(), headers=FHIR, timeout=5)
    assert first.status_code == 201 and first.json()["id"] == "p-1"
    stale = requests.put(
        f"{sandbox_server}/Patient/p-1", json=patient(), headers={**FHIR, "If-Match": 'W/"7"'}, timeout=5
    )
    assert_outcome(stale, 412, "version 1, not 7")
    ok = requests.put(f"{sandbox_server}/Patient/p-1", json=patient(), headers={**FHIR, "If-Match": 'W/"1"'}, timeout=5)
    assert ok.status_code == 200
    mismatch = requests.put(f"{sandbox_server}/Patient/p-1", json={**patient(), "id": "other"}, headers=FHIR, timeout=5)
    assert_outcome(mismatch, 400, "does not match the URL id")


def test_unknown_ids_and_types(sandbox_server: str) -> None:
    assert_outcome(requests.get(f"{sandbox_server}/Patient/nope", timeout=5), 404, "Patient/nope is not known")
    assert_outcome(requests.get(f"{sandbox_server}/Patient/nope/_history/1", timeout=5), 404, "not known")
    assert_outcome(requests.get(f"{sandbox_server}/Unicorn", timeout=5), 404, "unknown resource type 'Unicorn'")
    assert_outcome(requests.get(f"{sandbox_server}/HumanName/1", timeout=5), 404, "unknown resource type")


def test_conditional_create_zero_one_many(sandbox_server: str) -> None:
    cond = {**FHIR, "If-None-Exist": "identifier=urn:mrn|42"}
    first = requests.post(f"{sandbox_server}/Patient", json=patient(mrn="42"), headers=cond, timeout=5)
    assert first.status_code == 201
    again = requests.post(f"{sandbox_server}/Patient", json=patient("Other", mrn="42"), headers=cond, timeout=5)
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"] and again.json()["name"][0]["family"] == "Doe"
    for _ in range(2):
        requests.post(f"{sandbox_server}/Patient", json=patient(mrn="dup"), headers=FHIR, timeout=5)
    many = requests.post(
        f"{sandbox_server}/Patient",
        json=patient(mrn="dup"),
        headers={**FHIR, "If-None-Exist": "identifier=dup"},
        timeout=5,
    )
    assert_outcome(many, 412, "2 Patient resources match")
    unsupported = requests.post(
        f"{sandbox_server}/Patient", json=patient(), headers={**FHIR, "If-None-Exist": "shoe-size=9"}, timeout=5
    )
    assert_outcome(unsupported, 400, "unsupported search parameters: shoe-size")
    total = requests.get(f"{sandbox_server}/Patient", timeout=5).json()["total"]
    assert total == 3


def test_concurrent_conditional_creates_make_one_resource(sandbox_server: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    cond = {**FHIR, "If-None-Exist": "identifier=urn:mrn|race"}

    def post(_: int) -> int:
        return requests.post(
            f"{sandbox_server}/Patient", json=patient(mrn="race"), headers=cond, timeout=10
        ).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(post, range(16)))
    assert statuses.count(201) == 1 and statuses.count(200) == 15
    assert requests.get(f"{sandbox_server}/Patient?identifier=race", timeout=5).json()["total"] == 1


def test_conditional_update(sandbox_server: str) -> None:
    url = f"{sandbox_server}/Patient?identifier=urn:mrn|7"
    created = requests.put(url, json=patient(mrn="7"), headers=FHIR, timeout=5)
    assert created.status_code == 201
    updated = requests.put(url, json=patient("Changed", mrn="7"), headers=FHIR, timeout=5)
    assert updated.status_code == 200 and updated.json()["id"] == created.json()["id"]
    assert updated.json()["meta"]["versionId"] == "2"
    requests.post(f"{sandbox_server}/Patient", json=patient(mrn="7"), headers=FHIR, timeout=5)
    assert_outcome(requests.put(url, json=patient(mrn="7"), headers=FHIR, timeout=5), 412, "match")


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        ({"resourceType": "Patient", "birthDate": "not-a-date"}, 422, "Patient.birthDate"),
        ({"resourceType": "Patient", "shoeSize": 9}, 422, "Patient.shoeSize: Extra inputs are not permitted"),
        ({"resourceType": "Task", "status": "requested"}, 422, "Task.intent"),
        ({"resourceType": "Observation", "status": "final", "code": {"text": "x"}}, 400, "does not match the URL"),
        ({"name": [{"family": "x"}]}, 400, "resourceType is missing"),
        ([1, 2], 400, "JSON object"),
    ],
)
def test_invalid_resources_are_refused_with_an_outcome(sandbox_server: str, body: Any, status: int, text: str) -> None:
    response = requests.post(f"{sandbox_server}/Patient", json=body, headers=FHIR, timeout=5)
    if body == {"resourceType": "Task", "status": "requested"}:
        response = requests.post(f"{sandbox_server}/Task", json=body, headers=FHIR, timeout=5)
    assert_outcome(response, status, text)


def test_content_types_and_bad_json(sandbox_server: str) -> None:
    as_json = requests.post(
        f"{sandbox_server}/Patient", json=patient(), headers={"Content-Type": "application/json"}, timeout=5
    )
    assert as_json.status_code == 201
    text = requests.post(f"{sandbox_server}/Patient", data="hello", headers={"Content-Type": "text/plain"}, timeout=5)
    assert_outcome(text, 415, "Content-Type must be")
    broken = requests.post(f"{sandbox_server}/Patient", data='{"resourceType": ', headers=FHIR, timeout=5)
    assert_outcome(broken, 400, "not valid JSON")
    assert_outcome(requests.patch(f"{sandbox_server}/Patient/1", json={}, timeout=5), 405, "")


def test_prefer_return_minimal(sandbox_server: str) -> None:
    response = requests.post(
        f"{sandbox_server}/Patient", json=patient(), headers={**FHIR, "Prefer": "return=minimal"}, timeout=5
    )
    assert response.status_code == 201 and response.content == b""
    assert response.headers["Location"].startswith(f"{sandbox_server}/Patient/")


def test_capability_statement_validates_and_lists_support(sandbox_server: str) -> None:
    response = requests.get(f"{sandbox_server}/metadata", timeout=5)
    assert response.status_code == 200
    statement = response.json()
    CapabilityStatement.model_validate(statement)
    rest = statement["rest"][0]
    task = next(r for r in rest["resource"] if r["type"] == "Task")
    names = {p["name"] for p in task["searchParam"]}
    assert {"identifier", "patient", "subject", "status", "group-identifier", "based-on", "_lastUpdated"} <= names
    assert task["conditionalCreate"] is True
    assert {i["code"] for i in rest["interaction"]} == {"transaction", "batch"}
    assert statement["implementation"]["url"] == sandbox_server
    subscription = next(r for r in rest["resource"] if r["type"] == "Subscription")
    assert {op["name"] for op in subscription["operation"]} == {"status", "events"}


def test_mounted_under_a_prefix_builds_urls_from_the_script_root(serve_app) -> None:
    from flask import Flask
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    from fhir_smartflow.config import Settings
    from fhir_smartflow.sandbox.app import create_sandbox_app

    outer = Flask("outer")
    sandbox = create_sandbox_app(Settings(), start_notifier=False)
    outer.wsgi_app = DispatcherMiddleware(outer.wsgi_app, {"/sandbox/fhir": sandbox})  # type: ignore[method-assign]
    base = f"{serve_app(outer).url}/sandbox/fhir"
    created = requests.post(f"{base}/Patient", json=patient(), headers=FHIR, timeout=5)
    assert created.headers["Location"].startswith(f"{base}/Patient/")
    requests.post(f"{base}/Patient", json=patient(), headers=FHIR, timeout=5)
    page = requests.get(f"{base}/Patient?_count=1", timeout=5).json()
    next_url = next(link["url"] for link in page["link"] if link["relation"] == "next")
    assert next_url.startswith(f"{base}/Patient?")
    assert requests.get(next_url, timeout=5).json()["entry"][0]["fullUrl"].startswith(f"{base}/Patient/")
    assert sandbox.extensions["sandbox"].notifier.base_url == base
