"""End to end against the sandbox's strict server profiles, each a separate `sandbox --profile` process:
Medplum (server-assigned ids, references and their types checked, only `active` Subscriptions notify, the
secret in the subscription-secret extension signs deliveries, secrets masked on read) and HAPI FHIR (the
server activates `requested` Subscriptions, header secrets, masked on read).

`subscriptions sync` → `doctor` exits 0 → a new Patient → the intake resources exactly once → a second
sync prints that nothing changed → `doctor` exits 1 naming the broken piece when a Subscription is
deleted, its secret is wrong, or the Device is missing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests

from fhir_smartflow import defaults
from fhir_smartflow.engine.references import reference_type_problems
from tests.support.fhir import search_all
from tests.support.net import free_port, wait_for
from tests.support.procs import ROOT, run_cli, smartflow_cmd
from tests.support.service import start_sandbox
from tests.support.settle import event_state, wait_settled
from tests.support.toml import write_config

pytestmark = pytest.mark.integration
FHIR = {"Content-Type": "application/fhir+json"}
SECRET = "strict-e2e-secret"
INTAKE = (2, 3)  # Tasks, Communications (flows/examples/intake-forms.toml)
SERVER_CHECKS = ("fhir-base", "fhir-base-url", "service-device", "subscriptions", "webhook-auth")
# How each server authenticates deliveries: Medplum signs with the secret extension; HAPI sends a header.
AUTH = {"medplum": {"auth": "hmac", "header": "X-Signature"}, "hapi": {"header": "X-Smartflow-Secret"}}


def _doctor(env: dict[str, str]) -> tuple[int, list[dict[str, str]]]:
    done = run_cli("doctor", *[a for c in SERVER_CHECKS for a in ("--check", c)], "--json", env=env, timeout=60)
    return done.returncode, json.loads(done.stdout)


def _failing(findings: list[dict[str, str]]) -> list[dict[str, str]]:
    return [f for f in findings if f["status"] == "fail"]


@pytest.mark.parametrize("profile", ["medplum", "hapi"])
def test_sync_doctor_and_intake_against_a_strict_profile(
    profile: str, processes, redis_url: str, redis_conn, tmp_path: Path
) -> None:
    store = start_sandbox(processes, profile=profile).base
    port, prefix = free_port(), f"strict-{profile}:"
    subscription = {"id": "strict", "secret_env": "STRICT_SECRET", "criteria": "Patient?",
                    "resource_types": ["Patient", "Appointment", "Task", "QuestionnaireResponse", "Encounter",
                                       "EpisodeOfCare", "CarePlan", "Coverage"], **AUTH[profile]}  # fmt: skip
    sections = {
        "server": {"port": port},
        "redis": {"url": redis_url, "key_prefix": prefix},
        "fhir": {"base_url": store, "server": profile, "max_retries": 3, "backoff_base_seconds": 0.05},
        "engine": {"flows": [str(ROOT / "flows/examples")], "mappings": [str(ROOT / "mappings")],
                   "templates": [str(ROOT / "templates")]},
    }  # fmt: skip
    config = write_config(tmp_path / "smartflow.toml", sections, [subscription])
    env = {"STRICT_SECRET": SECRET, "SMARTFLOW_CONFIG": str(config)}
    serve = processes(smartflow_cmd("serve"), env, "serve")
    serve.wait_http(f"http://127.0.0.1:{port}/healthz")
    endpoint = f"http://127.0.0.1:{port}/fhir/notify"

    synced = run_cli("subscriptions", "sync", "--endpoint", endpoint, env=env, timeout=60)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    subs = search_all(store, "Subscription")
    assert subs and {s["status"] for s in subs} == {"active"}
    worker = processes(smartflow_cmd("worker"), env, "worker")
    code, findings = _doctor(env)
    assert code == 0, findings

    def logs() -> str:
        return serve.output() + worker.output()

    patient = {"resourceType": "Patient", "name": [{"family": "Strictperson"}], "birthDate": "1970-05-06",
               "telecom": [{"system": "phone", "value": "+15555550100", "use": "mobile"},
                           {"system": "email", "value": "strict@example.org"}]}  # fmt: skip
    created = requests.post(f"{store}/Patient", json=patient, headers=FHIR, timeout=10)
    assert created.status_code == 201, created.text
    ref = f"Patient/{created.json()['id']}"

    def written() -> list[dict[str, Any]]:
        return search_all(store, "Task", {"patient": ref}) + search_all(store, "Communication", {"subject": ref})

    wait_for(lambda: len(written()) >= sum(INTAKE), "the intake resources", log=logs, timeout=60)
    wait_settled(lambda: event_state(redis_conn, defaults.QUEUE_NAME, prefix), webhook_deliveries=1, log=logs)
    resources = written()
    assert sorted(r["resourceType"] for r in resources).count("Task") == INTAKE[0]
    assert len(resources) == sum(INTAKE)
    (device,) = search_all(store, "Device")
    provenances = search_all(store, "Provenance")
    assert len(provenances) == len(resources)  # exactly one per write
    for resource in resources + provenances:
        assert reference_type_problems(resource) == []
    assert {r.get("requester", r.get("sender", {})).get("reference") for r in resources} == {f"Device/{device['id']}"}
    assert "Strictperson" not in logs()

    again = run_cli("subscriptions", "sync", "--endpoint", endpoint, env=env, timeout=60)
    assert again.returncode == 0 and again.stdout.startswith("nothing changed"), again.stdout + again.stderr

    # A wrong secret: the Subscription for Patients rewritten by someone else.
    stored = next(s for s in search_all(store, "Subscription") if s["criteria"] == "Patient?")
    current = requests.get(f"{store}/Subscription/{stored['id']}", timeout=10).json()
    if profile == "medplum":
        current["extension"] = [{"url": "https://www.medplum.com/fhir/StructureDefinition/subscription-secret",
                                 "valueString": "wrong"}]  # fmt: skip
    else:
        current["channel"]["header"] = ["X-Smartflow-Secret: wrong"]
    assert requests.put(f"{store}/Subscription/{stored['id']}", json=current, headers=FHIR, timeout=10).ok
    # The server masks secrets on read: the refused delivery of the next change shows the wrong one.
    changed = {**requests.get(f"{store}/{ref}", timeout=10).json(), "gender": "unknown"}
    assert requests.put(f"{store}/{ref}", json=changed, headers=FHIR, timeout=10).ok
    key = f"{prefix}webhook"
    wait_for(lambda: redis_conn.hget(key, "last_auth_failure"), "the refused delivery", log=logs)
    code, findings = _doctor(env)
    failing = {f["check"]: f for f in _failing(findings)}
    assert code == 1 and "--rewrite-secrets" in failing["webhook-auth"]["fix"], findings
    assert set(failing) <= {"webhook-auth", "subscriptions"}  # the server may also have set it to error
    fixed = run_cli("subscriptions", "sync", "--endpoint", endpoint, "--rewrite-secrets", env=env, timeout=60)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    again = {**requests.get(f"{store}/{ref}", timeout=10).json(), "gender": "other"}
    assert requests.put(f"{store}/{ref}", json=again, headers=FHIR, timeout=10).ok
    wait_for(lambda: _doctor(env)[0] == 0, "doctor passing after --rewrite-secrets", log=logs)

    # Deleted.
    requests.delete(f"{store}/Subscription/{stored['id']}", timeout=10)
    code, findings = _doctor(env)
    (bad,) = _failing(findings)
    assert code == 1 and "Patient?: no Subscription" in bad["detail"], findings

    # The Device missing.
    requests.delete(f"{store}/Device/{device['id']}", timeout=10)
    code, findings = _doctor(env)
    assert code == 1 and "service-device" in {f["check"] for f in _failing(findings)}, findings


def test_doctor_names_the_write_scope_the_token_lacks(processes, redis_url: str, tmp_path: Path) -> None:
    sandbox_config = tmp_path / "sandbox.toml"
    sandbox_config.write_text(
        '[sandbox.clients.smartflow]\nsecret_env = "SANDBOX_CLIENT_SECRET"\nscopes = "system/*.rs system/Patient.cu"\n'
    )
    store = start_sandbox(processes, profile="medplum", config=sandbox_config,
                          env={"SANDBOX_CLIENT_SECRET": "client-secret"}).base  # fmt: skip
    fhir = {"base_url": store, "server": "medplum", "auth": "client-credentials", "client_id": "smartflow",
            "max_retries": 0}  # fmt: skip
    config = write_config(tmp_path / "smartflow.toml", {"redis": {"url": redis_url}, "fhir": fhir})
    env = {"SMARTFLOW_CONFIG": str(config), "SMARTFLOW_FHIR_CLIENT_SECRET": "client-secret"}
    done = run_cli("doctor", "--check", "fhir-auth", "--json", env=env, timeout=60)
    (finding,) = json.loads(done.stdout)
    assert done.returncode == 1 and finding["status"] == "fail", finding
    assert "Task" in finding["detail"], finding


def test_embedded_serve_on_a_strict_profile_writes_with_its_device(processes) -> None:
    port = free_port()
    env = {"SMARTFLOW_SANDBOX_PROFILE": "medplum"}
    proc = processes(smartflow_cmd("serve", "--embedded", "--port", str(port)), env, "embedded-medplum")
    base = f"http://127.0.0.1:{port}/sandbox/fhir"
    proc.wait_http(f"http://127.0.0.1:{port}/healthz")
    patient = {"resourceType": "Patient", "birthDate": "1970-05-06",
               "telecom": [{"system": "phone", "value": "+15555550100", "use": "mobile"}]}  # fmt: skip
    created = requests.post(f"{base}/Patient", json=patient, headers=FHIR, timeout=10)
    assert created.status_code == 201, created.text
    ref = f"Patient/{created.json()['id']}"
    tasks = wait_for(lambda: search_all(base, "Task", {"patient": ref}), "the intake Tasks", log=proc.output)
    (device,) = search_all(base, "Device")  # references are checked on write: the Device exists
    assert {t["requester"]["reference"] for t in tasks} == {f"Device/{device['id']}"}
