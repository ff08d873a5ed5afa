"""Security properties as tests: no SSRF through notifications, sandboxed templates, no PHI in INFO logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from benchmarks import _payloads, _procs
from benchmarks._stack import DATA, Stack, patient_ref
from tests.support.net import Receiver, wait_for
from tests.support.procs import ROOT

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

NOT_FOUND = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-found"}]}


@pytest.fixture
def recorders(serve_app) -> tuple[Receiver, Receiver]:
    """Two listeners that record every request and answer 404 with an OperationOutcome."""
    # The worker creates the service's Device at start: the inside server takes that one write.
    device = {"resourceType": "Device", "id": "dev-1", "status": "active"}
    inside = Receiver(status=404, body=NOT_FOUND, routes={("POST", "/fhir/Device"): (201, device)})
    outside = Receiver(status=404, body=NOT_FOUND)
    return inside.listen(serve_app), outside.listen(serve_app)


# ------------------------------------------------------------------------------------------ templates

SSTI = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ self._TemplateReference__context }}",
    "{{ ''|attr('__class__') }}",
    "{{ patient.__class__ }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
]


@pytest.mark.parametrize("body", SSTI)
def test_templates_cannot_reach_python_internals(tmp_path: Path, body: str) -> None:
    from fhir_smartflow.config import load_settings
    from fhir_smartflow.flowfiles import load_paths

    templates = tmp_path / "templates"
    templates.mkdir()
    text = (DATA / "templates" / "bench-intake.toml").read_text(encoding="utf-8")
    start = text.index('body = """')
    end = text.index('"""', start + 10) + 3
    (templates / "bench-intake.toml").write_text(text[:start] + f"body = {json.dumps(body)}" + text[end:], "utf-8")
    engine, errors = load_paths(
        [str(ROOT / "mappings" / "patient.toml")], [str(DATA / "flows")], [str(templates)], load_settings(env={})
    )
    assert engine is None, f"a template reaching Python internals loaded: {body}"
    assert any("bench-intake.toml" in e.file and e.field for e in errors), [str(e) for e in errors]
    leaked = " ".join(str(e) for e in errors)
    assert "<class" not in leaked, f"the error message leaks internals: {leaked}"


@pytest.mark.parametrize("body", SSTI)
def test_rendering_internals_raises_in_the_sandbox(body: str) -> None:
    from fhir_smartflow.engine import templating

    template = templating.compile_template(templating.make_environment(), body)
    with pytest.raises(Exception) as excinfo:  # SecurityError or UndefinedError: never a rendered object
        templating.render(template, {"patient": {"first_name": "A"}})
    assert "<class" not in str(excinfo.value)


# ------------------------------------------------------------------------------------------ SSRF


def test_focus_outside_the_fhir_base_triggers_no_request(
    tmp_path: Path, redis_url: str, recorders: tuple[Receiver, Receiver]
) -> None:
    inside, outside = recorders
    stack = Stack(tmp_path, redis_url, flows=[DATA / "flows"], templates=[DATA / "templates"])
    stack.fhir_base = f"http://127.0.0.1:{inside.port}/fhir"
    focuses = [
        f"http://127.0.0.1:{inside.port}/fhir/Patient/control",  # the control: under the base, must be fetched
        f"http://127.0.0.1:{outside.port}/fhir/Patient/evil",  # another port
        f"http://127.0.0.1:{inside.port}/fhir-evil/Patient/evil",  # a prefix of the base, not under it
        f"http://127.0.0.1:{inside.port}/fhir/../admin/Patient/evil",  # climbing out of the base
        f"http://localhost:{inside.port}/fhir/Patient/evil",  # another host name
    ]
    try:
        stack.start_serve()
        for n, focus in enumerate(focuses, start=1):
            bundle = _payloads.backport_notification(stack.fhir_base, _procs.SUBSCRIPTION_ID, n, "Patient/x", "id-only")
            status_parts = bundle["entry"][0]["resource"]["parameter"][-1]["part"]
            next(p for p in status_parts if p["name"] == "focus")["valueReference"]["reference"] = focus
            bundle["entry"][1]["fullUrl"] = focus
            r = requests.post(f"{stack.serve_url}/fhir/notify", data=_payloads.encode(bundle), headers=stack.headers())
            assert r.status_code < 500, r.text
        worker = stack.start_worker("ssrf", burst=True)
        worker.proc.wait(timeout=60)
    finally:
        stack.stop()
    # Without the control the test could pass by never fetching anything at all.
    assert any(p.startswith("/fhir/Patient/control") for _, p in inside.calls()), (
        f"the id-only focus under the base was never fetched (worker fetch not wired?): {inside.calls()}"
    )
    assert outside.calls() == [], f"requests sent outside the FHIR base: {outside.calls()}"
    escaped = [(m, p) for m, p in inside.calls() if not p.startswith("/fhir/") or ".." in p]
    assert escaped == [], f"requests outside /fhir/ on the base host: {escaped}"


# ------------------------------------------------------------------------------------------ PHI in logs

FAMILY, GIVEN, PHONE, EMAIL = "Quixotewhistle", "Zebulonia", "+15550198877", "zebulonia@example.org"
BODY_MARKER = "Kumquatrhapsody"


def test_info_logs_of_a_full_run_carry_no_phi(tmp_path: Path, redis_url: str) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    text = (DATA / "templates" / "bench-intake.toml").read_text(encoding="utf-8")
    (templates / "bench-intake.toml").write_text(text.replace("Hi {{", f"{BODY_MARKER} Hi {{{{"), "utf-8")
    stack = Stack(tmp_path, redis_url, templates=[templates], log_level="INFO")
    try:
        stack.start_sandbox()
        stack.start_serve()
        stack.start_worker("phi")
        (patient,) = stack.create_patients(1, family=FAMILY, given=GIVEN, phone=PHONE)
        patient["telecom"][1]["value"] = EMAIL
        r = requests.post(
            f"{stack.serve_url}/fhir/notify", data=stack.notify_body(patient, 1), headers=stack.headers(), timeout=10
        )
        assert r.status_code == 200, r.text
        ref = f"Patient/{patient['id']}"
        # The control: PHI really went through serve and the worker (the message holds name + marker).
        comms = wait_for(
            lambda: [c for c in stack.search_all("Communication") if patient_ref(c["subject"]["reference"]) == ref],
            "the flow's Communication (PHI through serve and the worker)",
            timeout=60,
            interval=0.2,
            log=stack.service_logs,
        )
        assert BODY_MARKER in json.dumps(comms) and GIVEN in json.dumps(comms)
        logs = stack.service_logs()
    finally:
        stack.stop()
    assert logs.strip(), "no INFO logs at all: the check would be vacuous"
    for secret in (FAMILY, GIVEN, PHONE, PHONE[2:], EMAIL, BODY_MARKER):
        assert secret not in logs, f"PHI {secret!r} in INFO logs:\n" + "\n".join(
            line for line in logs.splitlines() if secret in line
        )
