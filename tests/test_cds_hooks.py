"""The CDS Hooks service for real: `serve` with [cds] on the suite's Redis, the sandbox as the EHR (its store,
JWK Set and CDS client signing with its own key), record-prompt Flags as the flows write them."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
import redis
import requests

from fhir_smartflow.defaults import IDENTIFIER_SYSTEM
from fhir_smartflow.engine import resources as fr
from tests.support.cds import WORKLIST, CdsStack, ec_key, start_cds_stack
from tests.support.net import Receiver
from tests.support.procs import Process
from tests.support.service import start_sandbox

pytestmark = pytest.mark.integration

PATIENT = "cds-p1"
PATIENT_NAME = "Zelda Quixote"  # must never reach a log
NURSE = ("http://terminology.hl7.org/CodeSystem/practitioner-role", "nurse")


def _flag(
    fid: str, text: str, *, practitioners: tuple[str, ...] = (), roles: tuple[tuple[str, str], ...] = ()
) -> dict[str, Any]:
    flag = fr.build_flag(
        identifier_system=IDENTIFIER_SYSTEM,
        identifier_value=f"intake-review/{fid}/Flag/0123456789abcdef0123",
        text=text,
        subject=f"Patient/{PATIENT}",
        author="Device/smartflow",
        start="2026-01-01T00:00:00Z",
        practitioners=practitioners,
        roles=[fr.concept(f"{s}|{c}", "nurse") for s, c in roles],
    )
    flag["id"] = fid
    return flag


def _seed(stack: CdsStack) -> None:
    stack.put({"resourceType": "Patient", "id": PATIENT, "name": [{"text": PATIENT_NAME}]})
    for pid in ("dr-allowed", "dr-outsider", "rn-1"):
        stack.put({"resourceType": "Practitioner", "id": pid})
    stack.put(
        {
            "resourceType": "PractitionerRole",
            "id": "rn-1-role",
            "active": True,
            "practitioner": {"reference": "Practitioner/rn-1"},
            "code": [{"coding": [{"system": NURSE[0], "code": NURSE[1]}]}],
        }
    )
    stack.put(
        _flag("only-dr", f"Ask {PATIENT_NAME} about the missed intake", practitioners=("Practitioner/dr-allowed",))
    )
    stack.put(_flag("only-nurses", "Nurses: check vitals consent", roles=(NURSE,)))
    stack.put(_flag("everyone", "Record review pending"))
    foreign = _flag("not-ours", "Someone else's flag")
    foreign["identifier"] = [{"system": "urn:other", "value": "x"}]
    stack.put(foreign)


@pytest.fixture
def stack(processes: Callable[..., Process], tmp_path: Path, redis_url: str) -> CdsStack:
    started = start_cds_stack(processes, tmp_path, redis_url=redis_url, prefix="cdstest:")
    _seed(started)
    return started


def _summaries(answer: dict[str, Any]) -> set[str]:
    assert answer["status"] == 200, answer
    return {card["summary"] for card in answer["body"]["cards"]}


def _view(stack: CdsStack, user: str) -> dict[str, Any]:
    return stack.through_ehr("patient-view", {"patientId": PATIENT, "userId": user})


def test_discovery_lists_patient_view_with_its_prefetch(stack: CdsStack) -> None:
    services = requests.get(f"{stack.serve_url}/cds-services", timeout=10).json()["services"]
    assert [(s["hook"], s["id"]) for s in services] == [("patient-view", "patient-view")]
    assert services[0]["prefetch"]["patientFlags"] == "Flag?patient={{context.patientId}}&status=active"
    assert services[0]["description"]


def test_cards_follow_the_prompts_audience_and_feedback_reaches_the_history(
    stack: CdsStack, redis_url: str, run_cli: Callable[..., Any]
) -> None:
    allowed = _view(stack, "Practitioner/dr-allowed")
    assert _summaries(allowed) == {f"Ask {PATIENT_NAME} about the missed intake", "Record review pending"}
    assert _summaries(_view(stack, "Practitioner/dr-outsider")) == {"Record review pending"}
    assert _summaries(_view(stack, "PractitionerRole/rn-1-role")) == {
        "Nurses: check vitals consent",
        "Record review pending",
    }
    assert _summaries(_view(stack, "Patient/" + PATIENT)) == set()  # record prompts are for staff

    card = next(c for c in allowed["body"]["cards"] if c["summary"].startswith("Ask"))
    assert card["indicator"] == "info" and card["source"]["label"]
    assert card["links"] == [
        {"label": "Open the worklist", "url": WORKLIST, "type": "smart", "appContext": '{"flag":"Flag/only-dr"}'}
    ]

    outcome = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-03-01T10:00:00Z"}
    outcome["overrideReason"] = {
        "reason": {"system": "urn:x", "code": "later"},
        "userComment": f"{PATIENT_NAME} is away",
    }
    assert stack.through_ehr("feedback", {"feedback": [outcome]})["status"] == 200

    runs = run_cli("history", "--patient", PATIENT, "--json", env=stack.env)
    assert runs.returncode == 0, runs.stderr
    (record,) = json.loads(runs.stdout)
    assert record["kind"] == "cds-feedback"
    assert record["feedback"]["outcome"] == "overridden"
    assert record["feedback"]["flag"] == "Flag/only-dr" and record["feedback"]["flow"] == "intake-review"
    assert record["feedback"]["reason"] == {"system": "urn:x", "code": "later"}
    printed = run_cli("history", "--patient", PATIENT, env=stack.env).stdout
    assert "cds.card.overridden  Flag/only-dr" in printed and "card overridden by Practitioner/dr-allowed" in printed
    assert redis.Redis.from_url(redis_url).llen("cdstest:cds:feedback") == 1

    logs = stack.serve.output()
    assert "patient-view" in logs
    assert PATIENT_NAME not in logs and PATIENT not in logs and "missed intake" not in logs


def _body(prefetch: dict[str, Any] | None = None, **more: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/dr-outsider", "patientId": PATIENT},
        "prefetch": {"patientFlags": None} if prefetch is None else prefetch,
    }
    body.update(more)
    return body


def test_refused_tokens_get_401(stack: CdsStack, serve_app: Callable[..., Any]) -> None:
    good = stack.token()
    assert stack.call(_body(), good).status_code == 200
    assert stack.call(_body(), good).status_code == 401  # replayed jti

    now = int(time.time())
    attacker = ec_key()
    jwks = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(attacker.public_key()))
    elsewhere = Receiver(body={"keys": [{**jwks, "kid": "evil", "alg": "ES384", "use": "sig"}]}).listen(serve_app)
    refused = {
        "expired": stack.token(iat=now - 600, exp=now - 300),
        "wrong aud": stack.token(aud=f"{stack.serve_url}/cds-services/other"),
        "untrusted iss": stack.token(iss="https://ehr.elsewhere.example"),
        "bad signature": stack.token(key=attacker),
        "untrusted jku": stack.token(key=attacker, header={"kid": "evil", "jku": f"{elsewhere.url}/jwks"}),
        "too long-lived": stack.token(exp=now + 3600),
        "no jti": jwt.encode(
            {"iss": stack.ehr.base, "aud": stack.service_url, "iat": now, "exp": now + 60},
            stack.key,
            algorithm="ES384",
            headers={"kid": json.loads(requests.get(stack.jwks_url, timeout=5).text)["keys"][0]["kid"]},
        ),
        "hmac": jwt.encode(
            {"iss": stack.ehr.base, "aud": stack.service_url, "iat": now, "exp": now + 60, "jti": "h"},
            "shared-secret-that-is-long-enough-for-hs256",
            algorithm="HS256",
        ),
        "unsigned": jwt.encode(
            {"iss": stack.ehr.base, "aud": stack.service_url, "iat": now, "exp": now + 60, "jti": "n"},
            None,
            algorithm="none",
        ),
    }
    for why, token in refused.items():
        resp = stack.call(_body(), token)
        assert resp.status_code == 401, (why, resp.text)
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert requests.post(stack.service_url, json=_body(), timeout=10).status_code == 401  # no token at all
    assert elsewhere.requests == []  # an untrusted jku is never fetched
    logs = stack.serve.output()
    assert "jku" in logs and "replay" in logs


def test_a_slow_fhir_server_does_not_delay_the_answer(
    processes: Callable[..., Process], tmp_path: Path, redis_url: str
) -> None:
    slow = start_sandbox(processes, faults=True)
    stack = start_cds_stack(processes, tmp_path, redis_url=redis_url, prefix="cdsslow:", fhir_base=slow.base)
    _seed(stack)
    stack.call(_body())  # the JWK Set is fetched once, before the clock starts
    stalled = requests.post(
        f"{slow.base}/$faults", json={"stall_rate": 1.0, "stall_seconds": 3, "methods": ["GET"]}, timeout=10
    )
    assert stalled.status_code == 200, stalled.text
    access = {
        "access_token": "ehr-issued",
        "token_type": "Bearer",
        "expires_in": 60,
        "scope": "user/Flag.rs",
        "subject": "svc",
    }
    flags = requests.get(f"{stack.ehr.base}/Flag", params={"patient": PATIENT, "status": "active"}, timeout=10).json()

    # Flags prefetched, the nurse's roles only on the slow server: what is known is answered in time.
    nurse = _body({"patientFlags": flags}, fhirServer=slow.base, fhirAuthorization=access)
    nurse["context"]["userId"] = "Practitioner/rn-1"
    started = time.monotonic()
    resp = stack.call(nurse)
    assert time.monotonic() - started < 0.5
    assert resp.status_code == 200, resp.text
    assert {c["summary"] for c in resp.json()["cards"]} == {"Record review pending"}  # role-limited: not known

    # Nothing prefetched: the Flags would come from the slow server; the answer comes within the budget.
    started = time.monotonic()
    resp = stack.call(_body({}, fhirServer=slow.base, fhirAuthorization=access))
    assert time.monotonic() - started < 0.5
    assert resp.status_code == 200 and resp.json() == {"cards": []}

    # A fhirServer that is not the configured FHIR base is never fetched from: prefetch only (412 without it).
    resp = stack.call(_body({}, fhirServer=stack.ehr.base, fhirAuthorization=access))
    assert resp.status_code == 412
    logs = stack.serve.output()
    assert "not in time" in logs and "not the configured FHIR base" in logs
    assert PATIENT not in logs and PATIENT_NAME not in logs
