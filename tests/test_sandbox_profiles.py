"""`fhir-smartflow sandbox --profile medplum|hapi|lenient`: each profile's server behaviours, against real
sandbox processes (one per profile for the module) and a real receiver for notifications."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import itertools
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from fhir_smartflow.config import Settings
from fhir_smartflow.fhir.backport import EXT_FILTER, EXT_PAYLOAD, PROFILE_SUBSCRIPTION, TOPIC_FOR_TYPE
from fhir_smartflow.openemr.local_store import LocalFhirStore
from fhir_smartflow.sandbox.secrets import EXT_SECRET, MASK
from fhir_smartflow.sandbox.subscriptions import EXT_INTERACTION
from tests.support.fhir import serve_sandbox
from tests.support.net import Receiver, free_port, wait_for
from tests.support.procs import Process, smartflow_cmd
from tests.support.service import SandboxProcess, start_sandbox, start_service
from tests.support.settle import event_state_from_metrics

pytestmark = pytest.mark.integration

FHIR = {"Content-Type": "application/fhir+json"}
STRICT = ("medplum", "hapi")


@pytest.fixture(scope="module")
def sandboxes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, SandboxProcess]]:
    """One sandbox process per profile; the medplum one writes http://localhost:<port> into its links."""
    logs = tmp_path_factory.mktemp("sandboxes")
    numbers = itertools.count()
    started: list[Process] = []

    def process(args: list[str], env: dict[str, str] | None = None, name: str = "proc") -> Process:
        started.append(Process(args, logs / f"{name}-{next(numbers)}.log", env))
        return started[-1]

    try:
        yield {
            "lenient": start_sandbox(process, profile="lenient"),
            "medplum": start_sandbox(process, profile="medplum", public_base_url="http://localhost:{port}/fhir"),
            "hapi": start_sandbox(process, profile="hapi"),
        }
    finally:
        for proc in reversed(started):
            proc.stop()


def _post(base: str, resource: dict[str, Any]) -> requests.Response:
    return requests.post(f"{base}/{resource['resourceType']}", json=resource, headers=FHIR, timeout=10)


def _put(base: str, resource: dict[str, Any]) -> requests.Response:
    url = f"{base}/{resource['resourceType']}/{resource['id']}"
    return requests.put(url, json=resource, headers=FHIR, timeout=10)


def _created(base: str, resource: dict[str, Any]) -> dict[str, Any]:
    answer = _post(base, resource)
    assert answer.status_code == 201, answer.text
    return answer.json()


def _diagnostics(answer: requests.Response) -> str:
    body = answer.json()
    assert body["resourceType"] == "OperationOutcome"
    return " ".join(issue.get("diagnostics", "") for issue in body["issue"])


def _task(owner: str, patient: str) -> dict[str, Any]:
    return {
        "resourceType": "Task",
        "status": "requested",
        "intent": "order",
        "for": {"reference": patient},
        "owner": {"reference": owner},
    }


# ---- server-assigned ids ------------------------------------------------------------------------------


def test_medplum_refuses_a_client_chosen_id_for_a_new_resource(sandboxes: dict[str, SandboxProcess]) -> None:
    base = sandboxes["medplum"].base
    answer = _put(base, {"resourceType": "Device", "id": "fhir-smartflow"})
    assert answer.status_code == 400
    assert "Invalid id" in _diagnostics(answer)
    assert requests.get(f"{base}/Device/fhir-smartflow", timeout=10).status_code == 404
    # Its own ids are fine: an update of what it created.
    device = _created(base, {"resourceType": "Device"})
    assert _put(base, {**device, "status": "active"}).status_code == 200


def test_hapi_refuses_purely_numeric_client_ids_only(sandboxes: dict[str, SandboxProcess]) -> None:
    base = sandboxes["hapi"].base
    numeric = _put(base, {"resourceType": "Device", "id": "12345"})
    assert numeric.status_code == 400
    assert "Invalid id" in _diagnostics(numeric)
    assert _put(base, {"resourceType": "Device", "id": "fhir-smartflow"}).status_code == 201


def test_lenient_takes_any_client_id(sandboxes: dict[str, SandboxProcess]) -> None:
    base = sandboxes["lenient"].base
    assert _put(base, {"resourceType": "Device", "id": "777"}).status_code == 201
    assert _put(base, {"resourceType": "Device", "id": "fhir-smartflow"}).status_code == 201


def test_a_transaction_put_of_a_new_client_id_is_refused_as_a_whole(sandboxes: dict[str, SandboxProcess]) -> None:
    base = sandboxes["medplum"].base
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
            {
                "resource": {"resourceType": "Device", "id": "chosen-by-me"},
                "request": {"method": "PUT", "url": "Device/chosen-by-me"},
            },
        ],
    }
    before = requests.get(f"{base}/Patient", params={"_summary": "count"}, timeout=10).json()["total"]
    answer = requests.post(base, json=bundle, headers=FHIR, timeout=10)
    assert answer.status_code == 400
    assert "Invalid id" in _diagnostics(answer)
    after = requests.get(f"{base}/Patient", params={"_summary": "count"}, timeout=10).json()["total"]
    assert after == before  # rolled back


# ---- references checked on write ----------------------------------------------------------------------


@pytest.mark.parametrize("profile", STRICT)
def test_strict_profiles_refuse_a_reference_to_nothing(sandboxes: dict[str, SandboxProcess], profile: str) -> None:
    base = sandboxes[profile].base
    patient = _created(base, {"resourceType": "Patient"})
    answer = _post(base, _task("Device/nothing-here", f"Patient/{patient['id']}"))
    assert answer.status_code == 400
    text = _diagnostics(answer)
    assert "Invalid reference (Not found)" in text and "Task.owner" in text
    device = _created(base, {"resourceType": "Device"})
    assert _post(base, _task(f"Device/{device['id']}", f"Patient/{patient['id']}")).status_code == 201
    # A deleted resource is not there either.
    requests.delete(f"{base}/Device/{device['id']}", timeout=10)
    assert _post(base, _task(f"Device/{device['id']}", f"Patient/{patient['id']}")).status_code == 400
    # The references of a resource held inside another (a stored Bundle) are that resource's own.
    inner = {"fullUrl": "urn:uuid:6a1f4a0e-0000-4000-8000-00000000000a", "resource": _task("Device/x", "Patient/y")}
    assert _post(base, {"resourceType": "Bundle", "type": "collection", "entry": [inner]}).status_code == 201


def test_lenient_does_not_check_references(sandboxes: dict[str, SandboxProcess]) -> None:
    base = sandboxes["lenient"].base
    assert _post(base, _task("Device/nothing-here", "Patient/nobody")).status_code == 201


@pytest.mark.parametrize("profile", STRICT)
def test_transaction_references_resolve_within_the_transaction(
    sandboxes: dict[str, SandboxProcess], profile: str
) -> None:
    base = sandboxes[profile].base
    mrn = f"mrn-{profile}-tx"
    _created(base, {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": mrn}]})
    device_urn = "urn:uuid:6a1f4a0e-0000-4000-8000-000000000001"
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {  # a Task first: it points at the Device created later in the same transaction
                "fullUrl": "urn:uuid:6a1f4a0e-0000-4000-8000-000000000002",
                "resource": _task(device_urn, f"Patient?identifier=urn:mrn|{mrn}"),
                "request": {"method": "POST", "url": "Task"},
            },
            {
                "fullUrl": device_urn,
                "resource": {"resourceType": "Device"},
                "request": {"method": "POST", "url": "Device"},
            },
        ],
    }
    answer = requests.post(base, json=bundle, headers=FHIR, timeout=10)
    assert answer.status_code == 200, answer.text
    location = answer.json()["entry"][0]["response"]["location"]
    task = requests.get(location, timeout=10).json()
    patient = requests.get(f"{base}/Patient", params={"identifier": f"urn:mrn|{mrn}"}, timeout=10).json()
    assert task["for"]["reference"] == f"Patient/{patient['entry'][0]['resource']['id']}"
    assert task["owner"]["reference"].startswith("Device/")
    assert requests.get(f"{base}/{task['owner']['reference']}", timeout=10).status_code == 200


@pytest.mark.parametrize("profile", STRICT)
def test_a_dangling_reference_fails_its_transaction_and_its_batch_entry(
    sandboxes: dict[str, SandboxProcess], profile: str
) -> None:
    base = sandboxes[profile].base
    patient = _created(base, {"resourceType": "Patient"})
    good = {"resource": {"resourceType": "Device"}, "request": {"method": "POST", "url": "Device"}}
    bad = {
        "resource": _task("Device/missing", f"Patient/{patient['id']}"),
        "request": {"method": "POST", "url": "Task"},
    }
    answer = requests.post(
        base, json={"resourceType": "Bundle", "type": "transaction", "entry": [good, bad]}, headers=FHIR, timeout=10
    )
    assert answer.status_code == 400
    assert "Invalid reference (Not found)" in _diagnostics(answer)
    unmatched = requests.post(
        base,
        json={"resourceType": "Bundle", "type": "transaction", "entry": [_conditional_task(patient["id"])]},
        headers=FHIR,
        timeout=10,
    )
    assert unmatched.status_code == 400
    assert "matches no Device" in _diagnostics(unmatched)
    batch = requests.post(
        base, json={"resourceType": "Bundle", "type": "batch", "entry": [good, bad]}, headers=FHIR, timeout=10
    )
    statuses = [e["response"]["status"] for e in batch.json()["entry"]]
    assert statuses[0].startswith("201") and statuses[1] == "400 Bad Request"
    assert "Invalid reference (Not found)" in str(batch.json()["entry"][1]["response"]["outcome"])


def _conditional_task(patient_id: str) -> dict[str, Any]:
    return {
        "resource": _task("Device?identifier=urn:none|none", f"Patient/{patient_id}"),
        "request": {"method": "POST", "url": "Task"},
    }


# ---- reference target types ----------------------------------------------------------------------------


@pytest.mark.parametrize("profile", STRICT)
def test_a_reference_type_the_element_does_not_allow_is_refused(
    sandboxes: dict[str, SandboxProcess], profile: str
) -> None:
    base = sandboxes[profile].base
    patient = _created(base, {"resourceType": "Patient"})
    group = _created(base, {"resourceType": "Group", "type": "practitioner", "actual": True})
    answer = _post(base, _task(f"Group/{group['id']}", f"Patient/{patient['id']}"))
    assert answer.status_code == 400
    text = _diagnostics(answer)
    assert "Invalid reference: got Group, expected Practitioner, PractitionerRole" in text
    assert "Task.owner" in text
    assert "Group" not in text.split("expected", 1)[1].split("(")[0]
    assert _post(base, _task(f"Patient/{patient['id']}", f"Patient/{patient['id']}")).status_code == 201
    lenient = sandboxes["lenient"].base
    assert _post(lenient, _task("Group/any", "Patient/any")).status_code == 201


# ---- transaction answers: stored resources only when asked for (HAPI) -----------------------------------


def _write_and_search(base: str, prefer: str | None) -> list[dict[str, Any]]:
    """The entries answering a transaction that creates a Patient and searches for it in the same Bundle."""
    mrn = uuid.uuid4().hex
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": mrn}]},
                "request": {"method": "POST", "url": "Patient"},
            },
            {"request": {"method": "GET", "url": f"Patient?identifier=urn:mrn|{mrn}"}},
        ],
    }
    headers = {**FHIR, "Prefer": prefer} if prefer else FHIR
    answer = requests.post(base, json=bundle, headers=headers, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()["entry"]


@pytest.mark.parametrize(
    ("profile", "prefer", "write_carries_resource"),
    [
        ("hapi", None, False),
        ("hapi", "return=representation", True),
        ("hapi", "return=minimal", False),
        ("medplum", None, True),
        ("lenient", None, True),
        ("lenient", "return=minimal", False),
    ],
)
def test_a_transaction_answer_carries_written_resources_as_the_server_would(
    sandboxes: dict[str, SandboxProcess], profile: str, prefer: str | None, write_carries_resource: bool
) -> None:
    written, searched = _write_and_search(sandboxes[profile].base, prefer)
    assert written["response"]["status"].startswith("201")
    assert "/Patient/" in written["response"]["location"]  # where it is, whatever the body says
    assert ("resource" in written) is write_carries_resource
    assert searched["resource"]["total"] == 1  # a read or search always answers with its resource


# ---- Subscriptions: activation, signatures, secrets ------------------------------------------------------


def _classic(endpoint: str, status: str, *, secret: str = "", header: str = "") -> dict[str, Any]:
    sub: dict[str, Any] = {
        "resourceType": "Subscription",
        "status": status,
        "reason": "profile test",
        "criteria": "Patient?",
        "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json"},
    }
    if secret:
        sub["extension"] = [{"url": EXT_SECRET, "valueString": secret}]
    if header:
        sub["channel"]["header"] = [header]
    return sub


def _status(base: str, sid: str) -> dict[str, Any]:
    return requests.get(f"{base}/Subscription/{sid}", timeout=10).json()


def _wait_status(base: str, sid: str, status: str) -> dict[str, Any]:
    return wait_for(lambda: (s := _status(base, sid))["status"] == status and s, f"Subscription/{sid} {status}")


def test_medplum_notifies_only_active_subscriptions_and_signs_them(
    sandboxes: dict[str, SandboxProcess], receiver: Receiver
) -> None:
    base = sandboxes["medplum"].base
    requested = _created(base, _classic(f"{receiver.url}/requested", "requested"))
    active = _created(base, _classic(f"{receiver.url}/active", "active", secret="medplum-secret"))
    backport = _created(base, _backport(f"{receiver.url}/backport"))
    assert requested["status"] == "requested" and active["status"] == "active"
    patient = _created(base, {"resourceType": "Patient", "active": True})
    # All three were judged in the same store listener call: once the active one is delivered, the others
    # would have been queued too.
    seen = receiver.wait_for(lambda got: any(r.path == "/active" and b'"Patient"' in r.body for r in got))
    paths = {r.path for r in seen}
    assert "/requested" not in paths and "/backport" not in paths
    delivery = next(r for r in seen if r.path == "/active")
    assert delivery.json()["id"] == patient["id"]
    expected = hmac.new(b"medplum-secret", delivery.body, hashlib.sha256).hexdigest()
    assert delivery.headers["X-Signature"] == expected
    # Medplum never activates a requested Subscription itself.
    assert _status(base, requested["id"])["status"] == "requested"
    assert _status(base, backport["id"])["status"] == "active"


def _backport(endpoint: str) -> dict[str, Any]:
    return {
        "resourceType": "Subscription",
        "meta": {"profile": [PROFILE_SUBSCRIPTION]},
        "status": "active",
        "reason": "profile test",
        "criteria": TOPIC_FOR_TYPE["Patient"],
        "_criteria": {"extension": [{"url": EXT_FILTER, "valueString": "Patient?"}]},
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": EXT_PAYLOAD, "valueCode": "id-only"}]},
        },
    }


def test_hapi_activates_requested_subscriptions_and_sends_their_headers(
    sandboxes: dict[str, SandboxProcess], receiver: Receiver
) -> None:
    base = sandboxes["hapi"].base
    sub = _created(base, _classic(f"{receiver.url}/hapi", "requested", header="X-Smartflow-Secret: hapi-secret"))
    _wait_status(base, sub["id"], "active")
    _created(base, {"resourceType": "Patient"})
    seen = receiver.wait_for(lambda got: any(r.path == "/hapi" for r in got))
    delivery = next(r for r in seen if r.path == "/hapi")
    assert delivery.headers["X-Smartflow-Secret"] == "hapi-secret"
    assert "X-Signature" not in delivery.headers


def test_hapi_sets_error_with_the_reason_when_it_cannot_serve_a_subscription(
    sandboxes: dict[str, SandboxProcess],
) -> None:
    base = sandboxes["hapi"].base
    bad_endpoint = _created(base, _classic("ftp://127.0.0.1/x", "requested"))
    assert bad_endpoint["status"] == "error"
    assert "endpoint" in bad_endpoint["error"] and "endpoint" in bad_endpoint["reason"]
    assert _status(base, bad_endpoint["id"])["status"] == "error"
    # Criteria it cannot evaluate are refused at write, not stored.
    bad_criteria = _post(base, {**_classic("http://127.0.0.1:9/x", "requested"), "criteria": "Nonsense?x=1"})
    assert bad_criteria.status_code == 422
    assert "Nonsense" in _diagnostics(bad_criteria)
    # The lenient sandbox refuses what it cannot serve.
    lenient = _post(sandboxes["lenient"].base, _classic("ftp://127.0.0.1/x", "requested"))
    assert lenient.status_code == 422


@pytest.mark.parametrize("profile", STRICT)
def test_reads_never_return_a_subscription_secret(
    sandboxes: dict[str, SandboxProcess], receiver: Receiver, profile: str
) -> None:
    base = sandboxes[profile].base
    wanted = _classic(f"{receiver.url}/{profile}-masked", "active", secret="ext-secret", header="X-Key: hdr-secret")
    created = _post(base, wanted)
    assert created.status_code == 201
    sid = created.json()["id"]
    shown = [
        created.text,
        requests.get(f"{base}/Subscription/{sid}", timeout=10).text,
        requests.get(f"{base}/Subscription", params={"_id": sid}, timeout=10).text,
        requests.get(f"{base}/Subscription/{sid}/_history", timeout=10).text,
        requests.get(f"{base}/Subscription/{sid}/_history/1", timeout=10).text,
    ]
    for text in shown:
        assert "ext-secret" not in text and "hdr-secret" not in text
    read = requests.get(f"{base}/Subscription/{sid}", timeout=10).json()
    assert read["channel"]["header"] == [f"X-Key: {MASK}"]
    assert read["extension"][0]["valueString"] == MASK
    # Writing back what was read keeps the stored secrets: deliveries still carry them.
    assert _put(base, {**read, "reason": "changed"}).status_code == 200
    _created(base, {"resourceType": "Patient"})
    seen = receiver.wait_for(lambda got: any(r.path == f"/{profile}-masked" for r in got))
    assert next(r for r in seen if r.path == f"/{profile}-masked").headers["X-Key"] == "hdr-secret"


# ---- its own base URL in links ---------------------------------------------------------------------------


def test_paging_links_carry_the_public_base_url(sandboxes: dict[str, SandboxProcess]) -> None:
    sandbox = sandboxes["medplum"]
    assert sandbox.public.startswith("http://localhost:") and sandbox.base.startswith("http://127.0.0.1:")
    for _ in range(2):
        _created(sandbox.base, {"resourceType": "Patient"})
    page = requests.get(f"{sandbox.base}/Patient", params={"_count": "1"}, timeout=10).json()
    links = {link["relation"]: link["url"] for link in page["link"]}
    assert links["next"].startswith(sandbox.public + "/Patient?")
    assert page["entry"][0]["fullUrl"].startswith(sandbox.public + "/Patient/")
    # A reference by absolute URL under its own base is its own resource.
    patient = page["entry"][0]["resource"]
    task = _task(f"{sandbox.public}/Patient/{patient['id']}", f"Patient/{patient['id']}")
    assert _post(sandbox.base, task).status_code == 201
    assert _post(sandbox.base, {**task, "owner": {"reference": f"{sandbox.public}/Patient/none"}}).status_code == 400


# ---- files readable by their owner only -----------------------------------------------------------------


def test_sqlite_files_are_created_0600(processes: Callable[..., Process], tmp_path: Path) -> None:
    database = tmp_path / "store.sqlite"
    sandbox = start_sandbox(processes, profile="hapi", database=database)
    _created(sandbox.base, {"resourceType": "Patient"})
    for path in [database, *tmp_path.glob("store.sqlite-*")]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    local = tmp_path / "local.sqlite"
    settings = Settings()
    LocalFhirStore(dataclasses.replace(settings, openemr=dataclasses.replace(settings.openemr, local_store=str(local))))
    assert stat.S_IMODE(local.stat().st_mode) == 0o600  # the OpenEMR bridge's local store


# ---- SMART scopes on writes -----------------------------------------------------------------------------


def _clients_config(tmp_path: Path) -> Path:
    config = tmp_path / "sandbox.toml"
    config.write_text(
        """
[sandbox.clients.v2-client]
secret_env = "SANDBOX_V2_SECRET"
scopes = "system/*.rs system/Patient.cu"

[sandbox.clients.v1-client]
secret_env = "SANDBOX_V1_SECRET"
scopes = "system/*.read system/Task.write"
"""
    )
    return config


def _token(base: str, client: str, secret: str, scope: str | None = None, basic: bool = True) -> dict[str, Any]:
    form = {"grant_type": "client_credentials", **({"scope": scope} if scope else {})}
    if basic:
        answer = requests.post(f"{base}/oauth2/token", data=form, auth=(client, secret), timeout=10)
    else:
        form |= {"client_id": client, "client_secret": secret}
        answer = requests.post(f"{base}/oauth2/token", data=form, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_strict_profiles_enforce_smart_scopes_with_registered_clients(
    processes: Callable[..., Process], tmp_path: Path
) -> None:
    env = {"SANDBOX_V2_SECRET": "v2-secret", "SANDBOX_V1_SECRET": "v1-secret"}
    sandbox = start_sandbox(processes, profile="medplum", config=_clients_config(tmp_path), env=env)
    base = sandbox.base
    config = requests.get(f"{base}/.well-known/smart-configuration", timeout=10).json()
    assert config["token_endpoint"] == f"{base}/oauth2/token"
    security = requests.get(f"{base}/metadata", timeout=10).json()["rest"][0]["security"]
    assert security["extension"][0]["extension"][0]["valueUri"] == f"{base}/oauth2/token"
    assert requests.get(f"{base}/Patient", timeout=10).status_code == 401
    assert (
        requests.post(
            f"{base}/oauth2/token", data={"grant_type": "client_credentials"}, auth=("v2-client", "no"), timeout=10
        ).status_code
        == 401
    )

    v2 = _token(base, "v2-client", "v2-secret")
    assert v2["expires_in"] == 3600 and set(v2["scope"].split()) == {"system/*.rs", "system/Patient.cu"}
    as_v2 = {**FHIR, "Authorization": f"Bearer {v2['access_token']}"}
    assert requests.get(f"{base}/Patient", headers=as_v2, timeout=10).status_code == 200
    patient = requests.post(f"{base}/Patient", json={"resourceType": "Patient"}, headers=as_v2, timeout=10)
    assert patient.status_code == 201
    pid = patient.json()["id"]
    task = requests.post(f"{base}/Task", json=_task(f"Patient/{pid}", f"Patient/{pid}"), headers=as_v2, timeout=10)
    assert task.status_code == 403
    assert "Task" in _diagnostics(task)
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": _task(f"Patient/{pid}", f"Patient/{pid}"), "request": {"method": "POST", "url": "Task"}}
        ],
    }
    assert requests.post(base, json=bundle, headers=as_v2, timeout=10).status_code == 403

    v1 = _token(base, "v1-client", "v1-secret", basic=False)
    as_v1 = {**FHIR, "Authorization": f"Bearer {v1['access_token']}"}
    assert requests.post(base, json=bundle, headers=as_v1, timeout=10).status_code == 200
    assert (
        requests.post(f"{base}/Patient", json={"resourceType": "Patient"}, headers=as_v1, timeout=10).status_code == 403
    )

    # A token asked for less covers less; a scope beyond the allowance is left out of the grant.
    narrow = _token(base, "v2-client", "v2-secret", scope="system/Patient.rs system/Task.c")
    assert narrow["scope"] == "system/Patient.rs"
    as_narrow = {**FHIR, "Authorization": f"Bearer {narrow['access_token']}"}
    assert (
        requests.post(f"{base}/Patient", json={"resourceType": "Patient"}, headers=as_narrow, timeout=10).status_code
        == 403
    )


def test_start_sandbox_registers_clients(processes: Callable[..., Process], tmp_path: Path) -> None:
    clients = {"smartflow": ("s3cret", "system/*.rs system/Task.cu")}
    sandbox = start_sandbox(processes, profile="hapi", clients=clients, workdir=tmp_path)
    token = _token(sandbox.base, "smartflow", "s3cret")["access_token"]
    as_client = {**FHIR, "Authorization": f"Bearer {token}"}
    answer = requests.post(f"{sandbox.base}/Patient", json={"resourceType": "Patient"}, headers=as_client, timeout=10)
    assert answer.status_code == 403
    assert "system/Patient.c" in _diagnostics(answer)


def test_a_client_whose_secret_is_not_set_stops_the_sandbox(run_cli: Callable[..., Any], tmp_path: Path) -> None:
    result = run_cli(
        "sandbox", "--port", "0", "--profile", "hapi", env={"SMARTFLOW_CONFIG": str(_clients_config(tmp_path))}
    )
    assert result.returncode == 2
    assert "secret_env" in result.stderr and "Traceback" not in result.stderr


def test_embedded_serve_subscribes_itself_the_way_the_profile_needs(processes: Callable[..., Process]) -> None:
    port = free_port()
    env = {"SMARTFLOW_SANDBOX_PROFILE": "medplum"}
    proc = processes(smartflow_cmd("serve", "--embedded", "--port", str(port)), env, "embedded-medplum")
    base = f"http://127.0.0.1:{port}/sandbox/fhir"
    proc.wait_http(f"http://127.0.0.1:{port}/healthz")
    subs = requests.get(f"{base}/Subscription", timeout=10).json()["entry"]
    assert subs
    for entry in subs:
        sub = entry["resource"]
        # Medplum activates nothing and serves no topics: written active and classic, secret masked.
        assert sub["status"] == "active" and not sub["criteria"].startswith("http")
        assert all(line.endswith(MASK) for line in sub["channel"]["header"])
    _created(base, {"resourceType": "Patient"})
    metrics = f"http://127.0.0.1:{port}/metrics"

    def received() -> int:
        return sum(event_state_from_metrics(requests.get(metrics, timeout=10).text).received.values())

    wait_for(lambda: received() >= 1, "the Patient notification at the webhook", log=proc.output)


def test_the_capability_statement_says_which_subscriptions_the_profile_serves(
    sandboxes: dict[str, SandboxProcess],
) -> None:
    def subscription_entry(profile: str) -> dict[str, Any]:
        statement = requests.get(f"{sandboxes[profile].base}/metadata", timeout=10).json()
        assert profile in statement["description"]
        return next(r for r in statement["rest"][0]["resource"] if r["type"] == "Subscription")

    assert "extension" not in subscription_entry("medplum") and "operation" not in subscription_entry("medplum")
    assert subscription_entry("hapi")["extension"] and subscription_entry("lenient")["operation"]
    statement = requests.get(f"{sandboxes['medplum'].base}/metadata", timeout=10).json()
    assert statement["implementation"]["url"] == sandboxes["medplum"].public
    assert "security" not in statement["rest"][0]


def _event_numbers(seen: list[Any], path: str) -> list[int]:
    numbers = []
    for received in seen:
        if received.path != path:
            continue
        status = received.json()["entry"][0]["resource"]
        for param in status["parameter"]:
            if param["name"] == "notification-event":
                numbers += [int(p["valueString"]) for p in param["part"] if p["name"] == "event-number"]
    return numbers


@pytest.mark.parametrize(("profile", "after_restart"), [("hapi", 1), ("lenient", 2)])
def test_topic_event_numbers_after_a_restart(
    processes: Callable[..., Process], tmp_path: Path, receiver: Receiver, profile: str, after_restart: int
) -> None:
    database, port = tmp_path / "events.sqlite", free_port()
    first = start_sandbox(processes, profile=profile, database=database, port=port)
    path = f"/{profile}-events"
    _created(first.base, _backport(receiver.url + path))
    _created(first.base, {"resourceType": "Patient"})
    receiver.wait_for(lambda got: _event_numbers(got, path) == [1])
    assert first.process.stop() == 0
    second = start_sandbox(processes, profile=profile, database=database, port=port)
    _created(second.base, {"resourceType": "Patient"})
    # HAPI counts events in memory: after a restart they start again at 1.
    seen = receiver.wait_for(lambda got: len(_event_numbers(got, path)) == 2)
    assert _event_numbers(seen, path) == [1, after_restart]


def test_an_in_process_sandbox_takes_a_profile(serve_app: Callable[..., Any]) -> None:
    sandbox = serve_sandbox(serve_app, profile="hapi")
    try:
        assert _put(sandbox, {"resourceType": "Device", "id": "42"}).status_code == 400
        assert _post(sandbox, _task("Device/none", "Patient/none")).status_code == 400
    finally:
        sandbox.close()


def test_medplum_notifies_deletes_only_when_asked_and_says_what_happened(
    sandboxes: dict[str, SandboxProcess], receiver: Receiver
) -> None:
    base = sandboxes["medplum"].base
    default = _created(base, _classic(f"{receiver.url}/default", "active"))
    asked = _classic(f"{receiver.url}/deletes", "active")
    asked["extension"] = [{"url": EXT_INTERACTION, "valueCode": "delete"}]
    asked = _created(base, asked)
    patient = _created(base, {"resourceType": "Patient"})
    created = receiver.wait_for(lambda got: any(r.path == "/default" for r in got))
    first = next(r for r in created if r.path == "/default")
    assert first.headers["X-Medplum-Interaction"] == "create"
    assert first.headers["X-Medplum-Subscription"] == default["id"]
    assert "/deletes" not in {r.path for r in created}  # it names delete only
    requests.delete(f"{base}/Patient/{patient['id']}", timeout=10)
    seen = receiver.wait_for(lambda got: any(r.path == "/deletes" for r in got))
    deleted = next(r for r in seen if r.path == "/deletes")
    assert deleted.json() == {}
    assert deleted.headers["X-Medplum-Deleted-Resource"] == f"Patient/{patient['id']}"
    assert deleted.headers["X-Medplum-Subscription"] == asked["id"]
    # Judged in the same listener call: the default one (create and update) got no delete.
    assert [r.headers["X-Medplum-Interaction"] for r in seen if r.path == "/default"] == ["create"]


def test_notifications_about_subscriptions_carry_no_secret(
    sandboxes: dict[str, SandboxProcess], receiver: Receiver
) -> None:
    base = sandboxes["hapi"].base
    watcher = _created(base, {**_classic(f"{receiver.url}/watcher", "requested"), "criteria": "Subscription?"})
    _wait_status(base, watcher["id"], "active")
    secret = _created(base, _classic("http://127.0.0.1:9/elsewhere", "requested", header="X-Key: do-not-leak"))
    seen = receiver.wait_for(lambda got: any(r.path == "/watcher" and secret["id"].encode() in r.body for r in got))
    about = [r for r in seen if r.path == "/watcher" and secret["id"].encode() in r.body]
    assert all(b"do-not-leak" not in r.body for r in about)
    assert about[0].json()["channel"]["header"] == [f"X-Key: {MASK}"]


def test_start_service_runs_the_service_against_a_profile(
    processes: Callable[..., Process], redis_url: str, tmp_path: Path
) -> None:
    clients = {"smartflow": ("svc-secret", "system/*.cruds")}
    service = start_service(
        processes,
        tmp_path,
        redis_url=redis_url,
        prefix="sbx-profile",
        secret=("SBX_PROFILE_SECRET", "s"),
        workers=0,
        profile="hapi",
        sandbox_clients=clients,
    )
    assert "profile hapi" in requests.get(f"{service.store}/metadata", timeout=10).json()["description"]
    assert requests.get(f"{service.store}/Patient", timeout=10).status_code == 401  # its clients want tokens
    assert _token(service.store, "smartflow", "svc-secret")["scope"] == "system/*.cruds"
