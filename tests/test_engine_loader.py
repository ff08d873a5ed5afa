"""Loader: the shipped files load; each kind of mistake is one clear `file:line: field: reason` error."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from fhir_smartflow.flowfiles import EngineLoadError, LoadError, load_engine, load_paths
from tests.support.engine import ROOT, SETTINGS, shipped_engine

MAPPINGS = [str(ROOT / "mappings")]
TEMPLATES = [str(ROOT / "templates")]

GOOD_FLOW = """\
id = "test-flow"
name = "Test flow"
trigger = "appointment.no_show"

[[actions]]
name = "Text patient"
category = "smartflow"
type = "patient-message"
item = "missed-appointment-sms"
template = "missed-appointment-sms"
methods = ["sms"]
"""


def load_flow(tmp_path: Path, text: str, name: str = "flow.toml") -> list[LoadError]:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    engine, errors = load_paths(MAPPINGS, [str(tmp_path)], TEMPLATES, SETTINGS)
    assert (engine is None) == bool(errors)
    return errors


def test_shipped_files_load_and_index():
    engine = shipped_engine()
    assert {
        "patient.registered",
        "appointment.no_show",
        "form.submitted",
        "task.completed",
        "careplan.updated",
        "appointment.first_kept",
        "patient.discharged",
    } <= engine.triggers()
    assert [f.id for f in engine.flows_for("appointment.no_show")] == ["missed-appointment"]
    assert engine.resource_types() >= {
        "Patient",
        "Appointment",
        "QuestionnaireResponse",
        "CarePlan",
        "Coverage",
        "Task",
        "Encounter",
        "EpisodeOfCare",
    }
    assert {m.trigger for m in engine.mappings_for("Appointment")} >= {"appointment.no_show", "appointment.kept"}
    assert "status" in engine.prior_fields()
    flow, action = engine.action_for("missed-appointment/case-manager-call-back/Deliver/abc")
    assert (flow.id, action.notify_on_failure) == ("missed-appointment", True)
    assert engine.action_for("missed-appointment/nope/Task/x") is None and engine.action_for("x") is None


def test_good_flow_loads(tmp_path):
    assert load_flow(tmp_path, GOOD_FLOW) == []


def test_load_engine_raises_with_all_errors(tmp_path):
    (tmp_path / "bad.toml").write_text(GOOD_FLOW.replace('trigger = "appointment.no_show"', 'trigger = "nope.x"'))
    settings = SETTINGS.__class__(
        **{
            **SETTINGS.__dict__,
            "engine": SETTINGS.engine.__class__(mappings=MAPPINGS, flows=[str(tmp_path)], templates=TEMPLATES),
        }
    )
    with pytest.raises(EngineLoadError) as info:
        load_engine(settings)
    (error,) = info.value.errors
    assert (
        str(error)
        == f"{tmp_path / 'bad.toml'}:3: trigger: unknown trigger 'nope.x' (known: "
        + ", ".join(sorted(shipped_engine().triggers()))
        + ")"
    )


@pytest.mark.parametrize(
    ("change", "field", "reason", "line"),
    [
        (('name = "Test flow"', 'name = "Test flow"\ncolour = "blue"'), "colour", "unknown key", 3),
        (('name = "Test flow"\n', ""), "name", "required", None),
        (('type = "patient-message"', 'type = "fax-blast"'), "actions[1].type", "unknown action type 'fax-blast'", 8),
        (('category = "smartflow"', 'category = "billing"'), "actions[1].category", "must be 'smartflow'", 7),
        (
            ('template = "missed-appointment-sms"', 'template = "no-such"'),
            "actions[1].template",
            "unknown template 'no-such'",
            10,
        ),
        (
            ('template = "missed-appointment-sms"', 'template = "discharge-summary-note"'),
            "actions[1].template",
            "is disabled",
            10,
        ),
        (('methods = ["sms"]', 'methods = ["pigeon"]'), "actions[1].methods", "'pigeon' cannot be used", 11),
        (
            ('methods = ["sms"]', 'methods = ["sms"]\ndue = { amount = 2, unit = "fortnights" }'),
            "actions[1].due.unit",
            "unknown unit 'fortnights'",
            12,
        ),
        (
            ('methods = ["sms"]', 'methods = ["sms"]\ndue = { amount = "two", unit = "days" }'),
            "actions[1].due.amount",
            "expected a whole number",
            12,
        ),
        (
            ('methods = ["sms"]', 'methods = ["sms"]\ndue = { amount = 2, unit = "days", anchor = "moon" }'),
            "actions[1].due.anchor",
            "unknown anchor 'moon'",
            12,
        ),
        (('methods = ["sms"]', 'methods = ["sms"]\nweekend = "sunday"'), "actions[1].weekend", "must be one of", 12),
        (
            ('methods = ["sms"]', 'methods = ["sms"]\nowner = { role = "janitor" }'),
            "actions[1].owner.role",
            "unknown role 'janitor'",
            12,
        ),
        (
            ('trigger = "appointment.no_show"', 'trigger = "appointment.no_show"\ncondition = "status = = 1"'),
            "condition",
            "not valid FHIRPath",
            4,
        ),
        (
            ('trigger = "appointment.no_show"', 'trigger = "appointment.no_show"\ncondition = "status.frobnicate()"'),
            "condition",
            "unknown function frobnicate()",
            4,
        ),
        (('id = "test-flow"', 'id = "Test Flow!"'), "id", "lower-case letters", 1),
        (
            ('methods = ["sms"]', 'methods = ["sms"]\nrecurring = { every = "weekly" }'),
            "actions[1].recurring",
            "needs an end",
            12,
        ),
        (
            ('methods = ["sms"]', 'methods = ["sms"]\nreminder = { amount = 1, unit = "days" }'),
            "actions[1].reminder",
            "add `due`",
            12,
        ),
        (
            ('methods = ["sms"]', 'methods = ["sms"]\nrecurring = { cron = "every tuesday", count = 3 }'),
            "actions[1].recurring.cron",
            "not a valid cron expression",
            12,
        ),
        (("enabled = true", ""), None, None, None),
    ],
)
def test_flow_errors(tmp_path, change, field, reason, line):
    old, new = change
    text = GOOD_FLOW.replace(old, new) if old in GOOD_FLOW else GOOD_FLOW
    errors = load_flow(tmp_path, text)
    if field is None:
        assert errors == []
        return
    matching = [e for e in errors if e.field == field and reason in e.reason]
    assert matching, [str(e) for e in errors]
    assert matching[0].line == line
    assert matching[0].file == str(tmp_path / "flow.toml")


def test_not_toml(tmp_path):
    (error,) = load_flow(tmp_path, 'id = "x\n')
    assert error.field == "file" and "not valid TOML" in error.reason and error.line == 1


def test_staff_task_needs_owner(tmp_path):
    text = GOOD_FLOW.replace('type = "patient-message"', 'type = "staff-task"').replace('methods = ["sms"]\n', "")
    (error,) = load_flow(tmp_path, text)
    assert error.field == "actions[1].owner" and "needs an owner" in error.reason


def test_notify_on_failure_needs_a_staff_owner_to_tell(tmp_path):
    (error,) = load_flow(tmp_path, GOOD_FLOW + "notify_on_failure = true\n")
    assert error.field == "actions[1].notify_on_failure" and "staff owner" in error.reason
    patient_owner = GOOD_FLOW + 'owner = "patient"\nnotify_on_failure = true\n'
    assert [e.field for e in load_flow(tmp_path, patient_owner)] == ["actions[1].notify_on_failure"]
    assert load_flow(tmp_path, GOOD_FLOW + 'owner = { role = "case-manager" }\nnotify_on_failure = true\n') == []


def test_duplicate_automation_names_both_files(tmp_path):
    (tmp_path / "a.toml").write_text(GOOD_FLOW)
    errors = load_flow(tmp_path, GOOD_FLOW.replace('id = "test-flow"', 'id = "test-flow-2"'), "b.toml")
    (error,) = errors
    assert error.file == str(tmp_path / "b.toml") and error.field == "actions[1].item" and error.line == 9
    assert "duplicate automation: flow 'test-flow'" in error.reason and "a.toml" in error.reason
    # A disabled copy, or a different condition, is not a duplicate.
    assert (
        load_flow(tmp_path, GOOD_FLOW.replace('id = "test-flow"', 'id = "test-flow-2"\nenabled = false'), "b.toml")
        == []
    )
    assert (
        load_flow(tmp_path, GOOD_FLOW.replace('id = "test-flow"', 'id = "test-flow-2"\ncondition = "true"'), "b.toml")
        == []
    )


def test_duplicate_flow_id(tmp_path):
    (tmp_path / "a.toml").write_text(GOOD_FLOW)
    other = GOOD_FLOW.replace('item = "missed-appointment-sms"', 'item = "other"')
    (error,) = load_flow(tmp_path, other, "b.toml")
    assert error.field == "id" and "duplicate flow id 'test-flow'" in error.reason


def write_template(tmp_path: Path, text: str) -> list[LoadError]:
    tdir = tmp_path / "templates"
    tdir.mkdir(exist_ok=True)
    (tdir / "t.toml").write_text(textwrap.dedent(text))
    _, errors = load_paths(MAPPINGS, [], [str(tdir)], SETTINGS)
    return errors


def test_template_with_unknown_field_fails_at_load(tmp_path):
    (error,) = write_template(tmp_path, 'id = "t"\nname = "T"\nmethods = ["sms"]\nbody = "Hi {{ patient.nickname }}"\n')
    assert error.field == "body" and error.line == 4
    assert "unknown merge field patient.nickname" in error.reason and "'dict object'" not in error.reason


def test_unknown_merge_field_names_the_close_ones_and_its_line(tmp_path):
    text = (
        'id = "t"\nname = "T"\nmethods = ["sms"]\n'
        'body = """Hi {{ patient.first_name }},\nsee you {{ appointmnt.start }}\nMRN {{ patient.first_nam }}"""\n'
    )
    first, second = write_template(tmp_path, text)
    assert (first.line, second.line) == (5, 6)
    assert first.reason.startswith("unknown merge field appointmnt (did you mean appointment?)")
    assert second.reason.startswith("unknown merge field patient.first_nam (did you mean patient.first_name")
    assert str(second).startswith(f"{tmp_path}/templates/t.toml:6: body: unknown merge field patient.first_nam")


def test_template_touching_python_internals_fails(tmp_path):
    (error,) = write_template(tmp_path, 'id = "t"\nname = "T"\nbody = "{{ \'\'.__class__.__mro__ }}"\n')
    assert error.field == "body" and "does not render" in error.reason


def test_template_other_errors(tmp_path):
    errors = write_template(
        tmp_path,
        """\
        id = "t"
        name = "T"
        status = "paused"
        methods = ["pigeon"]
        note_type = "poem"
        body = "{% if %}"
        [prompt]
        text = "x"
        roles = ["wizard"]
    """,
    )
    fields = {(e.field, e.reason.split(" (")[0].split(":")[0]) for e in errors}
    assert ("status", "must be 'enabled' or 'disabled', got 'paused'") in fields
    assert ("methods", "unknown method 'pigeon'") in fields
    assert ("note_type", "unknown note type 'poem'") in fields
    assert ("prompt.roles", "unknown role 'wizard'") in fields
    assert ("body", "does not render") in fields


def test_mapping_errors(tmp_path):
    mdir = tmp_path / "mappings"
    mdir.mkdir()
    (mdir / "m.toml").write_text(
        textwrap.dedent("""\
        [[mapping]]
        trigger = "thing.happened"
        resource = "Thing"
        when = "status = "
        once_per = "visit"
        extra = 1
    """)
    )
    _, errors = load_paths([str(mdir)], [], [], SETTINGS)
    by_field = {e.field: e for e in errors}
    assert "not valid FHIRPath" in by_field["mapping[1].when"].reason and by_field["mapping[1].when"].line == 4
    assert any(e.field == "mapping[1].once_per" and e.reason.startswith("only 'patient' is supported") for e in errors)
    assert by_field["mapping[1].extra"].reason.startswith("unknown key") and by_field["mapping[1].extra"].line == 6


def test_missing_path_is_an_error(tmp_path):
    _, errors = load_paths([str(tmp_path / "nope")], [], [], SETTINGS)
    assert [str(e) for e in errors] == [f"{tmp_path / 'nope'}: path: no such file or directory"]
