"""The texts people read: merge fields from the referenced resources, the configured MRN, and every shipped
flow simulated for the shipped fixtures and for a sparse record reads without an empty field or dangling
punctuation."""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from fhir_smartflow.config import ClinicConfig
from fhir_smartflow.engine.merge_fields import sparse_problems, text_problems, unknown_fields
from fhir_smartflow.engine.plan import WriteResource
from fhir_smartflow.engine.planner import plan
from fhir_smartflow.engine.templating import compile_template, make_environment
from fhir_smartflow.engine.triggers import match_triggers
from fhir_smartflow.tooling.simulate import MemoryContext, simulate
from tests.support.engine import SETTINGS, appointment, event_for, patient, shipped_engine
from tests.support.procs import ROOT

SAMPLES = ROOT / "fhir_smartflow" / "data" / "samples"
AT = datetime(2026, 3, 10, 17, 0, tzinfo=UTC)

# (flow, resource, previous): every shipped flow on its shipped fixture
SHIPPED = [
    ("intake-forms", "patient.json", None),
    ("missed-appointment", "appointment-noshow.json", "appointment-booked.json"),
    ("previsit-questionnaire", "appointment-booked.json", None),
    ("weekly-checkin", "appointment-arrived.json", "appointment-booked.json"),
    ("careplan-updated", "careplan.json", "careplan-previous.json"),
    ("billing-insurance", "coverage.json", None),
    ("followup-form-submitted", "questionnaireresponse.json", None),
]


@pytest.fixture(scope="module")
def engine():
    return shipped_engine()


def _load(name: str) -> dict[str, Any]:
    return json.loads((SAMPLES / name).read_text())


def _sparse(resource: dict[str, Any]) -> dict[str, Any]:
    """Only what every record has: no identifier, no telecom, no display names, no payer name."""
    out = copy.deepcopy(resource)
    out.pop("identifier", None)
    out.pop("telecom", None)
    for participant in out.get("participant") or []:
        (participant.get("actor") or {}).pop("display", None)
    for payor in out.get("payor") or []:
        payor.pop("display", None)
    return out


def _sparse_context() -> MemoryContext:
    """The shipped patient without identifier or telecom; no Practitioner, Location or Questionnaire."""
    bundle = _load("context.json")
    kept = [_sparse(e["resource"]) for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"]
    return MemoryContext(kept)


def _texts(report: dict[str, Any]) -> list[str]:
    texts: list[str] = []
    for trigger in report["triggers"]:
        for flow in trigger["flows"]:
            for action in flow["actions"]:
                if action["kind"] == "message":
                    texts += [action["body"] or "", action.get("subject") or ""]
                if action["kind"] != "write":
                    continue
                resource = action["resource"]
                texts.append(resource.get("description") or "")
                texts += [p.get("contentString", "") for p in resource.get("payload") or []]
                texts.append(resource.get("topic", {}).get("text", ""))
                texts.append((resource.get("code") or {}).get("text", "") if action["resource_type"] == "Flag" else "")
                for content in resource.get("content") or []:
                    texts.append(base64.b64decode(content["attachment"].get("data", "")).decode())
    return [t for t in texts if t]


@pytest.mark.parametrize("record", ["shipped", "sparse"])
@pytest.mark.parametrize("case", SHIPPED, ids=[c[0] for c in SHIPPED])
def test_every_shipped_flow_reads_right_for_the_fixtures_and_a_sparse_record(engine, case, record):
    flow_id, resource_file, previous_file = case
    resource, previous = _load(resource_file), _load(previous_file) if previous_file else None
    if record == "sparse":
        resource, context = _sparse(resource), _sparse_context()
    else:
        context = MemoryContext([_load("context.json")])
    report = simulate(engine, SETTINGS, resource, previous, context, AT)
    runs = [f for t in report["triggers"] for f in t["flows"] if f["id"] == flow_id]
    assert runs and all(r["ran"] for r in runs), runs
    texts = _texts({"triggers": [{"flows": runs}]})
    assert texts, flow_id
    for text in texts:
        assert text_problems(text) == [], text
        assert "None" not in text and "MRN )" not in text, text


def test_clinician_and_location_come_from_the_referenced_resources(engine):
    # No display on the participants: the names are those of the Practitioner and the Location.
    noshow = _load("appointment-noshow.json")
    report = simulate(
        engine, SETTINGS, noshow, _load("appointment-booked.json"), MemoryContext([_load("context.json")]), AT
    )
    texts = _texts(report)
    assert any("with Dr. Lee Okafor at Main Street Clinic." in t for t in texts), texts
    assert any("Tuesday, March 10, 2026 at 11:00 AM EDT with Dr. Lee Okafor." in t for t in texts), texts


def test_a_practitioner_role_and_a_contained_location_resolve_too(engine):
    booked = appointment("a9", "noshow", "2026-03-10T15:00:00Z", "2026-03-10T16:00:00Z")
    booked["contained"] = [{"resourceType": "Location", "id": "room", "name": "Room 4"}]
    booked["participant"] = [
        {"actor": {"reference": "Patient/p1"}, "status": "accepted"},
        {"actor": {"reference": "PractitionerRole/r1"}, "status": "accepted"},
        {"actor": {"reference": "#room"}, "status": "accepted"},
    ]
    role = {"resourceType": "PractitionerRole", "id": "r1", "practitioner": {"reference": "Practitioner/d1"}}
    doctor = {"resourceType": "Practitioner", "id": "d1", "name": [{"given": ["Maya"], "family": "Chen"}]}
    previous = {**booked, "status": "booked"}
    (trigger,) = match_triggers(engine, event_for(booked), previous)
    p = plan(engine, trigger, MemoryContext([patient(), role, doctor]), SETTINGS, AT)
    notes = [a.resource for a in p.actions if isinstance(a, WriteResource) and a.resource_type == "DocumentReference"]
    text = base64.b64decode(notes[0]["content"][0]["attachment"]["data"]).decode()
    assert "with Maya Chen at Room 4." in text

    # A contained PractitionerRole whose practitioner is contained too (one list, the container's).
    booked["contained"] += [
        {"resourceType": "PractitionerRole", "id": "role", "practitioner": {"reference": "#doc"}},
        {"resourceType": "Practitioner", "id": "doc", "name": [{"text": "Dr. Sam Ortiz"}]},
    ]
    booked["participant"][1] = {"actor": {"reference": "#role"}, "status": "accepted"}
    (trigger,) = match_triggers(engine, event_for(booked), previous)
    p = plan(engine, trigger, MemoryContext([patient()]), SETTINGS, AT)
    notes = [a.resource for a in p.actions if isinstance(a, WriteResource) and a.resource_type == "DocumentReference"]
    assert "with Dr. Sam Ortiz at Room 4." in base64.b64decode(notes[0]["content"][0]["attachment"]["data"]).decode()


@pytest.mark.parametrize(
    ("clinic", "identifiers", "mrn"),
    [
        ({}, [{"type": {"coding": [{"code": "MR"}]}, "value": "A1"}], "A1"),
        ({"mrn_system": "urn:example:mrn"}, [{"system": "urn:example:mrn", "value": "MRN-1001"}], "MRN-1001"),
        ({}, [{"system": "urn:example:mrn", "value": "MRN-1001"}], ""),
        (
            {"mrn_type": "urn:x|CHART"},
            [{"type": {"coding": [{"system": "urn:x", "code": "CHART"}]}, "value": "C7"}],
            "C7",
        ),
    ],
)
def test_the_mrn_identifier_is_configurable(clinic, identifiers, mrn):
    from fhir_smartflow.engine.templating import build_catalog

    settings = dataclasses.replace(SETTINGS, clinic=dataclasses.replace(SETTINGS.clinic, **clinic))
    catalog = build_catalog(settings, patient=patient(identifier=identifiers))
    assert catalog["patient"]["mrn"] == mrn


def test_the_mrn_keys_load_from_the_config(tmp_path):
    from fhir_smartflow.config import load_settings

    path = tmp_path / "c.toml"
    path.write_text('[clinic]\nmrn_system = "urn:oid:1.2.3"\nmrn_type = "urn:x|MR"\n')
    clinic = load_settings(path, env={}).clinic
    assert (clinic.mrn_system, clinic.mrn_type) == ("urn:oid:1.2.3", "urn:x|MR")
    assert ClinicConfig().mrn_type == "MR"


def test_the_sparse_render_reports_unguarded_fields_and_dangling_punctuation():
    env = make_environment()
    bad = compile_template(env, "Call {{ patient.full_name }} (MRN {{ patient.mrn }}) at {{ patient.phone }}.")
    problems = sparse_problems(bad, SETTINGS)
    assert any("prints patient.mrn, patient.phone" in p for p in problems), problems
    assert any("a space before punctuation" in p for p in problems), problems
    good = compile_template(
        env,
        "Call {{ patient.full_name }}{% if patient.mrn %} (MRN {{ patient.mrn }}){% endif %}"
        "{{ ' at ' ~ patient.phone if patient.phone else '' }}.",
    )
    assert sparse_problems(good, SETTINGS) == []


def test_unknown_fields_list_the_close_ones():
    (unknown,) = unknown_fields("Hi {{ patient.first_nam }}")
    assert unknown.field == "patient.first_nam" and unknown.close[0] == "patient.first_name"
    assert unknown_fields("{% for x in [1] %}{{ loop.index }}{{ x }}{% endfor %}{{ clinic.name }}") == []


# --- date-only anchors ------------------------------------------------------------------------------


def _billing_task(engine, settings, start: str) -> dict[str, Any]:
    coverage = {**_load("coverage.json"), "period": {"start": start}}
    context = MemoryContext([_load("context.json")])
    (trigger,) = match_triggers(engine, event_for(coverage, "create"), None)
    p = plan(engine, trigger, context, settings, AT)
    (task,) = [a.resource for a in p.actions if isinstance(a, WriteResource) and a.resource_type == "Task"]
    return task


def test_a_date_only_anchor_is_due_at_the_clinic_default_time_and_reads_as_a_date(engine):
    # Coverage effective Thursday 2026-03-05 (no time) + 5 days = Tuesday 03-10 at 17:00 EDT = 21:00Z.
    task = _billing_task(engine, SETTINGS, "2026-03-05")
    assert task["restriction"]["period"]["end"] == "2026-03-10T21:00:00Z"
    assert task["description"].endswith("by Tuesday, March 10, 2026.")
    later = dataclasses.replace(SETTINGS, clinic=dataclasses.replace(SETTINGS.clinic, date_only_due_time="12:30"))
    assert _billing_task(engine, later, "2026-03-05")["restriction"]["period"]["end"] == "2026-03-10T16:30:00Z"


def test_an_anchor_with_a_time_keeps_it_in_the_text(engine):
    task = _billing_task(engine, SETTINGS, "2026-03-05T09:15:00-05:00")
    assert task["restriction"]["period"]["end"] == "2026-03-10T13:15:00Z"
    assert task["description"].endswith("by Tuesday, March 10, 2026 at 9:15 AM EDT.")


def test_date_only_due_time_must_be_hh_mm(tmp_path):
    from fhir_smartflow.config import ConfigError, load_settings

    path = tmp_path / "c.toml"
    path.write_text('[clinic]\ndate_only_due_time = "5pm"\n')
    with pytest.raises(ConfigError, match="date_only_due_time"):
        load_settings(path, env={})


# --- [roles] fallback -------------------------------------------------------------------------------


def test_the_role_fallback_is_read_from_roles_and_is_not_a_role(tmp_path):
    from fhir_smartflow.config import ConfigError, load_settings

    path = tmp_path / "c.toml"
    path.write_text('[roles]\nclinician = "urn:x|doc"\nfallback = "Group/on-call"\n')
    settings = load_settings(path, env={})
    assert settings.role_fallback == "Group/on-call" and set(settings.roles) == {"clinician"}
    path.write_text('[roles]\nfallback = "on-call team"\n')
    with pytest.raises(ConfigError, match=r"\[roles\] fallback"):
        load_settings(path, env={})


# --- simulate ---------------------------------------------------------------------------------------


def test_simulate_says_which_event_time_it_used_and_what_it_left_out(engine):
    from fhir_smartflow.tooling.simulate import format_report

    report = simulate(engine, SETTINGS, _load("patient.json"), None, MemoryContext([_load("context.json")]), AT)
    (trigger,) = report["triggers"]
    assert trigger["event_time"] == "2026-03-02T14:00:00Z"
    assert trigger["event_time_source"] == "meta.lastUpdated of Patient/p1"
    (run,) = trigger["flows"]
    assert run["notes"] == [
        "'Send intake packet': reminder skipped: it would be at 2026-03-04T14:00:00Z, before now (2026-03-10T17:00:00Z)"
    ]
    text = format_report(report)
    assert "event time 2026-03-02T14:00:00Z, from meta.lastUpdated of Patient/p1" in text
    assert "- left out: 'Send intake packet': reminder skipped" in text


def test_simulate_names_a_role_nobody_holds(engine):
    qr = _load("questionnaireresponse.json")
    report = simulate(engine, SETTINGS, qr, None, MemoryContext([_load("context.json")]), AT)
    (run,) = [f for t in report["triggers"] for f in t["flows"] if f["id"] == "followup-form-submitted"]
    assert run["notes"] == [
        "'Notify clinician': nobody holds role clinician (no active PractitionerRole): written not-done; "
        "the message goes to nobody: no [roles] fallback is configured"
    ]


def test_simulate_finds_the_role_holders_in_the_context(engine):
    system, _, code = SETTINGS.roles["clinician"].partition("|")
    role = {
        "resourceType": "PractitionerRole",
        "id": "r1",
        "active": True,
        "code": [{"coding": [{"system": system, "code": code}]}],
    }
    qr = _load("questionnaireresponse.json")
    report = simulate(engine, SETTINGS, qr, None, MemoryContext([_load("context.json"), role]), AT)
    (run,) = [f for t in report["triggers"] for f in t["flows"] if f["id"] == "followup-form-submitted"]
    assert run["notes"] == []
    (message,) = [a for a in run["actions"] if a["kind"] == "write" and a["resource_type"] == "Communication"]
    assert message["resource"]["recipient"] == [{"reference": "PractitionerRole/r1"}]
    assert message["resource"]["status"] == "completed"


def test_every_shipped_template_passes_the_sparse_render(engine):
    assert {t.id: dict(t.sparse_text) for t in engine.templates.values() if t.sparse_text} == {}


# --- follow-ups -------------------------------------------------------------------------------------


def _followup_engine(tmp_path):
    from fhir_smartflow.flowfiles import load_paths

    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "f.toml").write_text(
        'id = "f"\nname = "F"\ntrigger = "coverage.added"\n[[actions]]\nname = "Verify"\ncategory = "smartflow"\n'
        'type = "staff-message"\nitem = "billing-insurance"\ntemplate = "billing-insurance"\n'
        'due = { amount = 5, unit = "days", anchor = "insurance_effective" }\nowner = { role = "billing" }\n'
        'reminder = { amount = 1, unit = "days" }\noverdue = { notify_owner = true }\n'
    )
    engine, errors = load_paths(
        [str(ROOT / "mappings")], [str(tmp_path / "flows")], [str(ROOT / "templates")], SETTINGS
    )
    assert not errors, [str(e) for e in errors]
    return engine


def test_follow_ups_keep_a_date_only_due_and_route_an_overdue_notice_to_the_fallback(tmp_path):
    from fhir_smartflow.engine.followups import plan_followup
    from fhir_smartflow.engine.plan import Schedule

    engine = _followup_engine(tmp_path)
    settings = dataclasses.replace(SETTINGS, role_fallback="Group/on-call")
    coverage = {**_load("coverage.json"), "period": {"start": "2026-03-05"}}
    context = MemoryContext([_load("context.json"), coverage])
    (trigger,) = match_triggers(engine, event_for(coverage, "create"), None)
    now = datetime(2026, 3, 3, tzinfo=UTC)
    first = plan(engine, trigger, context, settings, now)
    schedules = {a.kind: a for a in first.actions if isinstance(a, Schedule)}
    assert schedules["reminder"].payload["due_date_only"] is True
    task = {"resourceType": "Task", "status": "requested"}

    reminder = plan_followup(engine, "reminder", schedules["reminder"].payload, task, context, settings, now)
    not_done, routed = [a.resource for a in reminder.actions if isinstance(a, WriteResource)]
    originals = {a.identifier for a in first.actions if isinstance(a, WriteResource)}
    assert not originals & {a.identifier for a in reminder.actions if isinstance(a, WriteResource)}
    assert not_done["status"] == "not-done" and routed["recipient"] == [{"reference": "Group/on-call"}]
    assert not_done["payload"][0]["contentString"].endswith("by Tuesday, March 10, 2026.")

    overdue = plan_followup(engine, "overdue", schedules["overdue"].payload, task, context, settings, now)
    (notice,) = [a for a in overdue.actions if isinstance(a, WriteResource)]
    assert notice.resource["recipient"] == [{"reference": "Group/on-call"}] and notice.unrouted == ("billing",)
    assert notice.resource["status"] == "completed"
    alone = plan_followup(engine, "overdue", schedules["overdue"].payload, task, context, SETTINGS, now)
    (nobody,) = [a.resource for a in alone.actions if isinstance(a, WriteResource)]
    assert nobody["status"] == "not-done" and nobody["statusReason"]["coding"][0]["code"] == "recipient-unavailable"


@pytest.mark.integration
def test_the_run_history_keeps_what_a_run_left_out(engine, redis_conn):
    from fhir_smartflow.connections import Keys
    from fhir_smartflow.worker.history import RunHistory

    (trigger,) = match_triggers(engine, event_for(_load("patient.json")), None)
    p = plan(engine, trigger, MemoryContext([_load("context.json")]), SETTINGS, AT)
    history = RunHistory(redis_conn, Keys("texts:"), max_runs=5, ttl=60)
    record = history.get(history.record(p))
    assert record is not None
    (flow,) = record["flows"]
    assert flow["notes"] == [
        "'Send intake packet': reminder skipped: it would be at 2026-03-04T14:00:00Z, before now (2026-03-10T17:00:00Z)"
    ]
