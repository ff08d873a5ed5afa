"""In-process unit tests of the operator tooling: FHIRPath root extraction, subscription derivation and
sync decisions, the in-memory context, lint edge cases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fhir_smartflow.config import load_settings
from fhir_smartflow.engine.model import Engine, Flow, MappingRule
from fhir_smartflow.tooling import subscriptions as subs
from fhir_smartflow.tooling.lint import Finding, lint, path_roots
from fhir_smartflow.tooling.simulate import MemoryContext

ROOT = Path(__file__).resolve().parent.parent


def test_path_roots_skip_functions_keywords_strings_and_variables() -> None:
    roots = path_roots("birthDate <= today() - 18 years and %patient.gender = 'x' and name.where($this.a = 'b')")
    assert roots == [("patient", "gender"), (None, "birthDate"), (None, "name")]
    assert path_roots("status in ('arrived' | 'fulfilled')") == [(None, "status")]
    assert path_roots("'Patient/' + id") == [(None, "id")]


def _engine(*rules: MappingRule, flows: dict[str, Any] | None = None) -> Engine:
    return Engine(mappings=rules, flows=flows or {}, templates={})


def test_unfiltered_search_absorbs_filtered_ones_and_task_lifecycle_is_included() -> None:
    rules = (
        MappingRule("patient.admitted", "Encounter", search="Encounter?status=in-progress"),
        MappingRule("patient.registered", "Patient", search="Patient?"),
        MappingRule("patient.discharged", "Patient", search="Patient?active=false"),
        MappingRule("task.completed", "Task", search="Task?status=completed"),
        MappingRule("appointment.booked", "Appointment", search="Appointment?status=booked"),
    )
    # No enabled flow: only the lifecycle subscription (task.completed) is needed.
    assert [w.search for w in subs.wanted_subscriptions(_engine(*rules))] == ["Task?status=completed"]
    engine = _engine(*rules, flows={"f": Flow("f", "F", "patient.registered", (), not_after="patient.discharged")})
    wanted = subs.wanted_subscriptions(engine)
    assert [(w.search, w.triggers) for w in wanted] == [
        ("Encounter?status=in-progress", ("patient.admitted",)),
        ("Patient?", ("patient.discharged", "patient.registered")),
        ("Task?status=completed", ("task.completed",)),
    ]


def test_each_subscription_gets_the_secret_of_an_entry_that_may_deliver_its_type(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        '[[subscriptions]]\nid = "patients"\nsecret_env = "S_P"\nheader = "X-P"\ncriteria = "Patient?"\n'
        '[[subscriptions]]\nid = "visits"\nsecret_env = "S_V"\nheader = "X-V"\nresource_types = ["Appointment"]\n'
    )
    settings = load_settings(config, env={})
    rules = (MappingRule("appointment.booked", "Appointment", search="Appointment?status=booked"),)
    engine = _engine(*rules, flows={"f": Flow("f", "F", "appointment.booked", ())})
    built = subs.build_subscriptions(engine, settings, "classic", "https://h.example/n", show_secrets=True,
                                     env={"S_P": "p", "S_V": "v"})  # fmt: skip
    by_criteria = {s["criteria"]: s["channel"]["header"] for s in built}
    assert by_criteria["Appointment?status=booked"] == ["X-V: v"]  # not the first entry's Patient secret


class FakeServer:
    """A SubscriptionServer fake (the protocol is ours; the real one is tested against the sandbox)."""

    def __init__(self, stored: list[dict[str, Any]]) -> None:
        self.stored = stored
        self.updates: list[dict[str, Any]] = []

    def search(self, resource_type: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return list(self.stored)  # ignores _tag, like servers that do not support it

    def create(self, resource: dict[str, Any], if_none_exist: str | None = None) -> tuple[dict[str, Any], bool]:
        raise AssertionError("nothing should be created")

    def update(self, resource: dict[str, Any], condition: str | None = None) -> dict[str, Any]:
        self.updates.append(resource)
        return resource

    def read(self, reference: str) -> dict[str, Any] | None:
        return next((r for r in self.updates if f"Subscription/{r.get('id')}" == reference), None)


def test_sync_filters_by_tag_client_side_and_reactivates_failed_subscriptions() -> None:
    settings = load_settings(env={})
    engine = _engine(MappingRule("task.completed", "Task", search="Task?status=completed"))
    (wanted,) = subs.build_subscriptions(engine, settings, "classic", "https://h.example/n")
    other = {"resourceType": "Subscription", "id": "x", "meta": {"tag": [{"system": "s", "code": "c"}]}}
    failed = {**wanted, "id": "s1", "status": "error", "error": "handshake failed"}
    server = FakeServer([other, failed])
    assert subs.sync_subscriptions(server, [wanted])[0]["action"] == "reactivated"
    assert server.updates[0]["id"] == "s1" and server.updates[0]["status"] == "requested"
    active = FakeServer(
        [other, {**wanted, "id": "s1", "status": "active", "meta": {**wanted["meta"], "versionId": "4"}}]
    )
    assert subs.sync_subscriptions(active, [wanted])[0]["action"] == "unchanged"
    assert active.updates == []


def test_memory_context_reads_and_searches() -> None:
    patient = {"resourceType": "Patient", "id": "p1", "identifier": [{"system": "urn:mrn", "value": "7"}]}
    coverage = {"resourceType": "Coverage", "id": "c1", "status": "active", "beneficiary": {"reference": "Patient/p1"}}
    other = {"resourceType": "Coverage", "id": "c2", "status": "cancelled", "beneficiary": {"reference": "Patient/p2"}}
    ctx = MemoryContext([patient, {"resourceType": "Bundle", "entry": [{"resource": coverage}, {"resource": other}]}])
    assert ctx.read("Patient/p1") == patient
    assert ctx.read("http://x/fhir/Patient/p1/_history/2") == patient
    assert ctx.read("Patient/nope") is None
    assert ctx.search("Coverage", {"beneficiary": "Patient/p1"}) == [coverage]
    assert ctx.search("Coverage", {"patient": "Patient/p1", "status": "active,draft", "_sort": "-period"}) == [coverage]
    assert ctx.search("Patient", {"identifier": "urn:mrn|7"}) == [patient]
    assert ctx.search("Coverage", {"status": "draft"}) == []


def test_lint_overlap_warning_and_finding_format(tmp_path: Path) -> None:
    settings = load_settings(env={})
    mappings = ROOT / "tests" / "fixtures" / "lint" / "bad" / "mappings.toml"
    template = ROOT / "tests" / "fixtures" / "lint" / "bad" / "template-sms.toml"
    body = """id = "{id}"
name = "{id}"
trigger = "appointment.no_show"
{condition}
[[actions]]
name = "Text"
category = "smartflow"
type = "patient-message"
item = "{id}-text"
template = "lint-sms"
methods = ["sms"]
"""
    (tmp_path / "a.toml").write_text(body.format(id="a", condition=""))
    (tmp_path / "b.toml").write_text(body.format(id="b", condition="condition = \"status = 'noshow'\""))
    findings = lint([str(mappings), str(template), str(tmp_path)], settings)
    assert [(f.severity, f.code, Path(f.file).name) for f in findings] == [("warning", "overlapping-flows", "b.toml")]
    assert str(findings[0]).startswith(f"{tmp_path / 'b.toml'}:3: warning: overlapping-flows: flows 'a'")
    assert str(Finding("info", "x", "f.toml", None, "m")) == "f.toml: info: x: m"


def test_unknown_path_on_multi_type_triggers_and_patient_variable(tmp_path: Path) -> None:
    (tmp_path / "m.toml").write_text(
        '[[mapping]]\ntrigger = "patient.discharged"\nresource = "Patient"\nwhen = "active = false"\n'
        "patient = \"'Patient/' + id\"\n\n"
        '[[mapping]]\ntrigger = "patient.discharged"\nresource = "Encounter"\nwhen = "status = \'finished\'"\n'
        'patient = "subject.reference"\n'
    )
    (tmp_path / "t.toml").write_text('id = "t"\nname = "t"\nbody = "Call {{ patient.full_name }}."\n')
    flow = """id = "{id}"
name = "{id}"
trigger = "patient.discharged"
condition = "{condition}"
[[actions]]
name = "Call"
category = "smartflow"
type = "staff-task"
item = "{id}-call"
template = "t"
owner = {{ role = "case-manager" }}
"""
    # Encounter has `period` (Patient does not): the condition can be true, no finding.
    (tmp_path / "ok.toml").write_text(flow.format(id="ok", condition="period.exists()"))
    (tmp_path / "bad.toml").write_text(flow.format(id="bad", condition="%patient.shoeSize > 40"))
    findings = lint([str(tmp_path)], load_settings(env={}))
    assert [(f.code, Path(f.file).name) for f in findings if f.severity != "info"] == [("unknown-path", "bad.toml")]
    assert "%patient (a Patient)" in findings[0].message
