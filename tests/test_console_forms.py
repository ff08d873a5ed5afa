"""The flow editor's fields ↔ flow TOML: lossless for untouched parts, loadable by `validate`, same behaviour."""

from __future__ import annotations

import difflib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fhir_smartflow.console.forms import ActionForm, errors_by_input, form_from_post, form_from_text, write_flow
from fhir_smartflow.flowfiles import load_paths
from fhir_smartflow.tooling.simulate import MemoryContext, simulate
from tests.support.console_flow import HAND_WRITTEN, POSTED
from tests.support.engine import SETTINGS, patient
from tests.support.procs import ROOT, run_cli

EXAMPLES = sorted((ROOT / "flows" / "examples").glob("*.toml"))


def _load(flow_file: Path):
    return load_paths([str(ROOT / "mappings")], [str(flow_file)], [str(ROOT / "templates")], SETTINGS)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_an_untouched_example_is_written_back_byte_for_byte(path: Path):
    text = path.read_text()
    assert write_flow(form_from_text(text), text) == text


def test_a_changed_field_rewrites_only_its_line_and_keeps_the_comments():
    text = (ROOT / "flows" / "examples" / "intake-forms.toml").read_text()
    form = form_from_text(text)
    form.actions[0].due_amount = "4"
    written = write_flow(form, text)
    changed = [
        line
        for line in list(difflib.unified_diff(text.splitlines(), written.splitlines(), lineterm="", n=0))[2:]
        if not line.startswith("@@")
    ]
    assert changed == [
        '-due = { amount = 3, unit = "days", direction = "after", anchor = "event" }',
        '+due = { amount = 4, unit = "days", direction = "after", anchor = "event" }',
    ]
    assert written.startswith("# Scenario 1:")


def test_removing_and_adding_tasks_keeps_the_other_tasks_as_written():
    text = (ROOT / "flows" / "examples" / "missed-appointment.toml").read_text()
    form = form_from_text(text)
    del form.actions[1]
    form.actions.append(
        ActionForm(name="Billing check", type="staff-task", item="x", owner_kind="role", owner_value="billing")
    )
    written = write_flow(form, text)
    assert "Case manager call-back" not in written
    assert text.split("[[actions]]")[1] == written.split("[[actions]]")[1]  # the first task, byte for byte
    assert written.endswith('owner = { role = "billing" }\n')


def test_a_flow_entered_in_the_form_behaves_like_the_same_flow_written_by_hand(tmp_path: Path):
    by_hand = tmp_path / "hand" / "welcome-forms.toml"
    by_form = tmp_path / "form" / "welcome-forms.toml"
    for path, text in ((by_hand, HAND_WRITTEN), (by_form, write_flow(form_from_post(POSTED)))):
        path.parent.mkdir()
        path.write_text(text)
    engines = [_load(p) for p in (by_hand, by_form)]
    assert [errors for _, errors in engines] == [[], []]
    (hand_engine, _), (form_engine, _) = engines
    assert hand_engine.flows["welcome-forms"].actions == form_engine.flows["welcome-forms"].actions
    at = datetime(2026, 3, 5, 15, 0, tzinfo=UTC)
    reports = [simulate(e, SETTINGS, patient(), None, MemoryContext([]), at) for e in (hand_engine, form_engine)]
    assert reports[0] == reports[1]
    (flow,) = reports[0]["triggers"][0]["flows"]
    assert flow["ran"] and any(a["kind"] == "schedule" for a in flow["actions"])  # the reminder


@pytest.mark.integration
def test_the_written_file_passes_validate(tmp_path: Path):
    flow = tmp_path / "welcome-forms.toml"
    flow.write_text(write_flow(form_from_post(POSTED)))
    result = run_cli("validate", str(flow), cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_loader_errors_land_on_their_inputs(tmp_path: Path):
    posted = POSTED.copy()
    posted["condition"] = "birthDate <= today() -"
    posted["actions-0-due_unit"] = "fortnights"
    posted["actions-0-reminder_amount"] = "one"
    form = form_from_post(posted)
    path = tmp_path / "welcome-forms.toml"
    path.write_text(write_flow(form))
    _, errors = _load(path)
    found, general = errors_by_input(errors, form)
    assert set(found) == {"condition", "actions-0-due_unit", "actions-0-reminder_amount"}, errors
    assert general == []


def test_a_removed_task_is_not_posted_back():
    posted = POSTED.copy()
    posted["action_count"] = "2"
    posted["actions-1-name"] = "Second"
    posted["actions-1-remove"] = "on"
    assert [a.name for a in form_from_post(posted).actions] == ["Send welcome form"]
