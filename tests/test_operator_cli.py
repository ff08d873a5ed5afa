"""The operator commands, run as the installed console script: simulate, lint, docs, subscriptions, export.

Subprocesses are started together where the test allows it (the machine is shared; each start imports the
engine), and their output and exit codes are asserted.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.plandefinition import PlanDefinition
from fhir.resources.R4B.subscription import Subscription

from fhir_smartflow import shipped
from tests.support.net import Receiver
from tests.support.procs import ROOT, child_env, smartflow_cmd

pytestmark = pytest.mark.integration

SIM = Path(str(shipped.locate(shipped.SAMPLES)))  # the sample resources shipped for simulate
LINT_BAD = ROOT / "tests" / "fixtures" / "lint" / "bad"
AT = "2026-03-02T14:05:00Z"


def run_all(*commands: list[str], env: dict[str, str] | None = None) -> list[subprocess.CompletedProcess[str]]:
    """Run the CLI invocations concurrently; results in order."""
    full_env = child_env(env)
    procs = [
        subprocess.Popen(smartflow_cmd(*c), cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
        for c in commands
    ]  # fmt: skip
    results = []
    for proc, cmd in zip(procs, commands, strict=True):
        out, err = proc.communicate(timeout=60)
        results.append(subprocess.CompletedProcess(cmd, proc.returncode, out, err))
    return results


# --- simulate ----------------------------------------------------------------------------------------

# (flow, resource, previous, trigger, resource types written, message channels, follow-up kinds)
SIMULATIONS = [
    ("intake-forms", "patient.json", None, "patient.registered",
     {"Task", "Communication"}, {"sms", "email"}, {"reminder"}),
    ("missed-appointment", "appointment-noshow.json", "appointment-booked.json", "appointment.no_show",
     {"Task", "Communication", "DocumentReference"}, {"sms"}, set()),
    ("previsit-questionnaire", "appointment-booked.json", None, "appointment.booked",
     {"Task", "Communication"}, {"sms", "email"}, {"overdue"}),
    ("weekly-checkin", "appointment-arrived.json", "appointment-booked.json", "appointment.first_kept",
     {"Task", "Communication"}, {"sms"}, {"recurrence"}),
    ("careplan-updated", "careplan.json", "careplan-previous.json", "careplan.updated",
     {"Communication"}, set(), set()),
    ("billing-insurance", "coverage.json", None, "coverage.added", {"Task"}, set(), set()),
    ("followup-form-submitted", "questionnaireresponse.json", None, "form.submitted",
     {"Communication", "Flag"}, set(), set()),
]  # fmt: skip


def _simulate_args(resource: str, previous: str | None) -> list[str]:
    args = ["simulate", "--resource", str(SIM / resource), "--context", str(SIM / "context.json"), "--at", AT]
    return [*args, "--previous", str(SIM / previous)] if previous else args


def invoke(args: list[str], env: dict[str, str] | None = None) -> Any:
    """The same click command in-process (each console-script start costs ~1.5 s of CPU on imports and
    engine load; the matrix tests below use this, the others the installed script)."""
    import logging

    from click.testing import CliRunner

    from fhir_smartflow.cli import main

    # The command configures logging for its process; in-process that must not leak into other tests.
    loggers = [logging.getLogger(), logging.getLogger("rq.worker"), logging.getLogger("werkzeug")]
    saved = [(lg, lg.handlers[:], lg.level) for lg in loggers]
    try:
        return CliRunner().invoke(main, args, env={"SMARTFLOW_CONFIG": None, **(env or {})}, catch_exceptions=False)
    finally:
        for lg, handlers, level in saved:
            lg.handlers[:] = handlers
            lg.setLevel(level)


@pytest.mark.parametrize("case", SIMULATIONS, ids=[c[0] for c in SIMULATIONS])
def test_simulate_every_example_flow(case: tuple[Any, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    flow_id, res, prev, trigger, types, channels, followups = case
    monkeypatch.chdir(ROOT)
    result = invoke([*_simulate_args(res, prev), "--json"])
    assert result.exit_code == 0, f"{flow_id}: {result.output}"
    report = json.loads(result.output)
    fired = {t["trigger"]: t for t in report["triggers"]}
    assert trigger in fired, f"{flow_id}: triggers {list(fired)}"
    run = next(f for f in fired[trigger]["flows"] if f["id"] == flow_id)
    assert run["ran"], f"{flow_id}: {run['reason']}"
    writes = [a for a in run["actions"] if a["kind"] == "write"]
    assert {w["resource_type"] for w in writes} == types, flow_id
    for write in writes:  # valid FHIR, checked here independently of the command's own check
        get_fhir_model_class(write["resource_type"]).model_validate(write["resource"])
        assert write["valid"], write["problems"]
    assert {a["channel"] for a in run["actions"] if a["kind"] == "message"} >= channels, flow_id
    assert {a["schedule"] for a in run["actions"] if a["kind"] == "schedule"} == followups, flow_id
    assert report["invalid_resources"] == 0


def test_simulate_text_output_and_no_match() -> None:
    text, nothing, bad = run_all(
        _simulate_args("appointment-noshow.json", "appointment-booked.json"),
        # A no-show seen again with the same status: `previous` makes the mapping not fire.
        _simulate_args("appointment-noshow.json", "appointment-noshow.json"),
        ["simulate", "--resource", str(SIM / "missing.json")],
    )
    assert text.returncode == 0, text.stderr
    assert "Trigger appointment.no_show" in text.stdout
    assert "Flow missed-appointment v2: RUNS" in text.stdout
    assert "message via sms to Patient/p1" in text.stdout
    assert "| Hi Ana, we missed you" in text.stdout  # the rendered text, merge fields filled
    assert '"resourceType": "DocumentReference"' in text.stdout
    assert nothing.returncode == 0 and "No trigger matched" in nothing.stdout
    assert bad.returncode == 2 and "missing.json: no such file" in bad.stderr


# --- lint --------------------------------------------------------------------------------------------


def test_lint_finds_each_problem_and_passes_the_examples() -> None:
    bad_json, examples = run_all(["lint", "--json", str(LINT_BAD)], ["lint"])
    assert bad_json.returncode == 1
    findings = json.loads(bad_json.stdout)
    by_code = {(f["code"], Path(f["file"]).name) for f in findings}
    assert ("unmapped-trigger", "flow-never-fires.toml") in by_code
    assert ("unknown-path", "flow-bad-path.toml") in by_code
    assert ("duplicate-automation", "flow-dup-b.toml") in by_code
    assert ("reminder-not-before-due", "flow-reminder-late.toml") in by_code
    assert ("unbounded-recurrence", "flow-endless.toml") in by_code
    assert ("unused-template", "template-unused.toml") in by_code
    # Nothing else: the well-formed parts of the fixtures raise no finding.
    assert len(findings) == 6, findings
    bad_path = next(f for f in findings if f["code"] == "unknown-path")
    assert (bad_path["severity"], bad_path["line"], bad_path["flow"]) == ("error", 5, "bad-path")
    assert examples.returncode == 0, examples.stdout + examples.stderr
    assert "error" not in examples.stdout and "warning:" not in examples.stdout


# --- docs --------------------------------------------------------------------------------------------


def test_docs_are_deterministic_with_a_mermaid_block_per_flow(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    r1, r2 = run_all(["docs", "--out", str(first)], ["docs", "--out", str(second)])
    assert r1.returncode == 0 and r2.returncode == 0, r1.stderr + r2.stderr
    pages = sorted(p.name for p in first.iterdir())
    assert pages == sorted(p.name for p in second.iterdir())
    for name in pages:
        assert (first / name).read_text() == (second / name).read_text(), name
    flow_pages = [p for p in pages if p != "index.md"]
    assert len(flow_pages) >= 7
    index = (first / "index.md").read_text()
    for name in flow_pages:
        text = (first / name).read_text()
        assert text.count("```mermaid") == 1, name
        assert f"]({name})" in index
    intake = (first / "intake-forms.md").read_text()
    assert "3 days after the trigger event (weekends: next-monday)" in intake
    assert "Reminder: 1 day before the due date" in intake
    assert "{{ form.link }}" in intake  # template text


# --- subscriptions -----------------------------------------------------------------------------------

CONFIG = """
[[subscriptions]]
id = "appointments"
header = "X-Smartflow-Secret"
secret_env = "TEST_SUB_SECRET"
criteria = "Appointment?"

[[subscriptions]]
id = "everything-else"
header = "X-Smartflow-Secret"
secret_env = "TEST_SUB_SECRET"
criteria = "Patient?"
"""


def test_subscriptions_print_validates_for_both_styles(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(CONFIG)
    env = {"TEST_SUB_SECRET": "very-secret-value"}
    base = ["--config", str(cfg), "subscriptions", "print", "--json", "--endpoint", "https://hooks.example.org/n"]
    classic, backport = run_all([*base, "--style", "classic"], [*base, "--style", "backport"], env=env)
    shown = invoke([*base, "--show-secrets"], env=env)
    assert shown.exit_code == 0
    for result in (classic, backport):
        assert result.returncode == 0, result.stderr
    classic_subs, backport_subs = json.loads(classic.stdout), json.loads(backport.stdout)
    for sub in classic_subs + backport_subs:
        Subscription.model_validate(sub)
        assert sub["channel"]["endpoint"] == "https://hooks.example.org/n"
    assert "very-secret-value" not in classic.stdout + backport.stdout
    assert "very-secret-value" in shown.output
    criteria = {s["criteria"] for s in classic_subs}
    assert {"Appointment?status=noshow", "Task?status=completed", "Patient?"} <= criteria
    noshow = next(s for s in classic_subs if s["criteria"] == "Appointment?status=noshow")
    assert noshow["channel"]["header"] == ["X-Smartflow-Secret: ********"]
    assert noshow["channel"]["payload"] == "application/fhir+json"
    for sub in backport_subs:
        assert sub["meta"]["profile"] == [
            "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription"
        ]
        assert sub["criteria"].startswith("http://fhir-smartflow.example/SubscriptionTopic/")
        urls = {e["url"].rsplit("/", 1)[1] for e in sub["channel"]["extension"]}
        assert urls == {"backport-heartbeat-period", "backport-timeout"}
        assert sub["channel"]["_payload"]["extension"][0]["valueCode"] == "full-resource"
    filtered = [s for s in backport_subs if "_criteria" in s]
    assert any(e["valueString"] == "Appointment?status=noshow" for s in filtered for e in s["_criteria"]["extension"])


@pytest.fixture
def webhook(receiver: Receiver) -> str:
    """A real listener that accepts every notification (so backport handshakes succeed)."""
    return receiver.url


def _sandbox_subscriptions(base: str) -> dict[str, dict[str, Any]]:
    bundle = requests.get(f"{base}/Subscription", params={"_count": "1000"}, timeout=10).json()
    return {e["resource"]["id"]: e["resource"] for e in bundle.get("entry") or []}


def _ours(resource: dict[str, Any]) -> dict[str, Any]:
    """What sync owns (the server manages status, error and meta.versionId / lastUpdated)."""
    return {k: v for k, v in resource.items() if k not in {"status", "error", "meta"}} | {
        "tag": resource["meta"]["tag"]
    }


def test_subscriptions_sync_against_the_sandbox_is_idempotent(
    sandbox_server: str, webhook: str, tmp_path: Path
) -> None:
    style = "backport"  # the richer of the two (topic, filter, channel extensions, handshake)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[fhir]\nbase_url = "{sandbox_server}"\nmax_retries = 0\n' + CONFIG)
    hook = f"{webhook}/fhir/notify"
    args = ["--config", str(cfg), "subscriptions", "sync", "--style", style, "--json", "--endpoint", hook]
    env = {"TEST_SUB_SECRET": "s3"}
    (first,) = run_all(args, env=env)
    assert first.returncode == 0, first.stderr
    created = json.loads(first.stdout)
    assert created and {r["action"] for r in created} == {"created"}
    stored = _sandbox_subscriptions(sandbox_server)
    assert set(stored) == {r["id"] for r in created}
    (second,) = run_all(args, env=env)
    assert second.returncode == 0, second.stderr
    assert {r["action"] for r in json.loads(second.stdout)} == {"unchanged"}
    again = _sandbox_subscriptions(sandbox_server)
    assert {k: _ours(v) for k, v in again.items()} == {k: _ours(v) for k, v in stored.items()}
    for sub in again.values():
        Subscription.model_validate(sub)
        kept = sandbox_server.app.extensions["sandbox"].store.read("Subscription", sub["id"])
        assert kept["channel"]["header"] == ["X-Smartflow-Secret: s3"]  # sync sends the real secret (reads mask it)
    # A changed endpoint updates in place: same ids, nothing new.
    (third,) = run_all([*args[:-1], hook + "/v2"], env=env)
    assert third.returncode == 0, third.stderr
    assert {r["action"] for r in json.loads(third.stdout)} == {"updated"}
    latest = _sandbox_subscriptions(sandbox_server)
    assert set(latest) == set(stored)
    assert {s["channel"]["endpoint"] for s in latest.values()} == {hook + "/v2"}
    assert {s["status"] for s in latest.values()} == {"active"}  # read back: the sandbox activated them
    (fourth,) = run_all([a for a in args[:-1] if a != "--json"] + [hook + "/v2"], env=env)
    assert fourth.returncode == 0, fourth.stderr
    assert fourth.stdout.startswith("nothing changed"), fourth.stdout
    devices = requests.get(f"{sandbox_server}/Device", timeout=10).json().get("entry") or []
    assert len(devices) == 1  # the service's Device, created once


def test_sync_needs_the_secrets(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(CONFIG)
    (missing,) = run_all(["--config", str(cfg), "subscriptions", "sync"])
    assert missing.returncode == 2 and "TEST_SUB_SECRET" in missing.stderr


# --- export ------------------------------------------------------------------------------------------


def test_export_plandefinition_is_valid_r4b() -> None:
    good, unknown = run_all(["export", "plandefinition", "intake-forms"], ["export", "plandefinition", "nope"])
    assert good.returncode == 0, good.stderr
    resource = json.loads(good.stdout)
    PlanDefinition.model_validate(resource)
    first = resource["action"][0]
    assert first["trigger"] == [{"type": "named-event", "name": "patient.registered"}]
    assert first["condition"][0]["expression"] == {
        "language": "text/fhirpath", "expression": "birthDate <= today() - 18 years"
    }  # fmt: skip
    assert first["definitionCanonical"] == "http://example.org/fhir/Questionnaire/intake"
    assert first["timingDuration"] == {"value": 3, "unit": "days", "system": "http://unitsofmeasure.org", "code": "d"}
    assert first["participant"] == [{"type": "patient"}]
    assert first["action"][0]["relatedAction"][0]["relationship"] == "before-end"
    review = resource["action"][1]
    assert review["participant"][0]["role"]["coding"][0]["code"] == "768832004"
    assert unknown.returncode == 2 and "unknown flow 'nope'" in unknown.stderr
