"""``export plandefinition``: every shipped flow against its reviewed expected JSON, and what each part means.

The expected files are tests/fixtures/plandefinition/<flow>.json. After a deliberate change to the export,
regenerate one with ``fhir-smartflow export plandefinition <flow> > tests/fixtures/plandefinition/<flow>.json``
and review the diff before committing it.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.plandefinition import PlanDefinition

from fhir_smartflow.config import Settings
from fhir_smartflow.engine.model import Due, Owner, Recurring
from fhir_smartflow.flowfiles import load_paths
from fhir_smartflow.tooling.plandefinition import R5_PARTICIPANT_TYPE, RELATIVE_DATE_TIME, plan_definition

FIXTURES = Path(__file__).parent / "fixtures" / "plandefinition"
SETTINGS = Settings()  # the shipped flows, mappings and [roles]
ENGINE, ERRORS = load_paths(SETTINGS.engine.mappings, SETTINGS.engine.flows, SETTINGS.engine.templates, SETTINGS)
assert not ERRORS and ENGINE is not None


def export(flow_id: str) -> dict[str, Any]:
    return plan_definition(ENGINE.flows[flow_id], SETTINGS, ENGINE.mappings)


def action(flow_id: str, slug: str) -> dict[str, Any]:
    return next(a for a in export(flow_id)["action"] if a["id"] == slug)


def relative(timed: dict[str, Any]) -> dict[str, Any]:
    [ext] = timed["_timingDateTime"]["extension"]
    assert ext["url"] == RELATIVE_DATE_TIME
    return {part["url"]: next(v for k, v in part.items() if k != "url") for part in ext["extension"]}


def test_every_shipped_flow_has_an_expected_file() -> None:
    assert sorted(p.stem for p in FIXTURES.glob("*.json")) == sorted(ENGINE.flows)


@pytest.mark.parametrize("flow_id", sorted(ENGINE.flows))
def test_export_matches_the_reviewed_json_and_validates(flow_id: str) -> None:
    resource = export(flow_id)
    PlanDefinition.model_validate(resource)
    assert resource == json.loads((FIXTURES / f"{flow_id}.json").read_text())


def test_a_reminder_before_due_is_before_the_end_of_its_action() -> None:
    send = action("intake-forms", "send-intake-packet")
    [reminder] = send["action"]
    assert reminder["relatedAction"] == [
        {
            "actionId": "send-intake-packet",
            "relationship": "before-end",
            "offsetDuration": {"value": 1, "unit": "days", "system": "http://unitsofmeasure.org", "code": "d"},
        }
    ]


def test_a_due_before_the_appointment_keeps_its_direction_and_anchor() -> None:
    form = action("previsit-questionnaire", "pre-visit-questionnaire")
    assert "timingDuration" not in form
    assert relative(form) == {
        "target": {"type": "Appointment", "display": "the appointment"},
        "targetPath": "start",
        "relationship": "before-start",
        "offset": {"value": 2, "unit": "days", "system": "http://unitsofmeasure.org", "code": "d"},
    }
    callback = action("missed-appointment", "case-manager-call-back")
    assert relative(callback)["relationship"] == "after-start"
    billing = action("billing-insurance", "verify-insurance")
    assert (relative(billing)["target"]["type"], relative(billing)["targetPath"]) == ("Coverage", "period")
    # a plain "N after the event" stays a duration
    assert action("intake-forms", "send-intake-packet")["timingDuration"]["value"] == 3


def test_a_condition_on_a_questionnaire_response_is_evaluated_on_the_triggering_response() -> None:
    notify = action("followup-form-submitted", "notify-clinician")
    assert "condition" not in notify  # an applicability condition would be evaluated on the Patient
    expression = "questionnaire = 'http://example.org/fhir/Questionnaire/follow-up'"
    assert {t["type"] for t in notify["trigger"]} == {"data-added", "data-modified"}  # create and update
    for trigger in notify["trigger"]:
        assert trigger["name"] == "form.submitted"
        assert trigger["data"] == [{"type": "QuestionnaireResponse"}]
        assert trigger["condition"] == {"language": "text/fhirpath", "expression": expression}
    # on a Patient trigger the Patient is the subject: an applicability condition, named-event trigger
    send = action("intake-forms", "send-intake-packet")
    assert send["trigger"] == [{"type": "named-event", "name": "patient.registered"}]
    assert send["condition"][0]["expression"]["expression"] == "birthDate <= today() - 18 years"


def test_a_weekly_series_of_twelve_is_a_timing() -> None:
    weekly = action("weekly-checkin", "weekly-check-in")
    assert weekly["timingTiming"] == {
        "repeat": {"frequency": 1, "period": 1, "periodUnit": "wk", "count": 12, "duration": 2, "durationUnit": "d"}
    }
    assert weekly["textEquivalent"] == "Due 2 days after each occurrence; Repeats weekly, 12 times"
    flow = ENGINE.flows["weekly-checkin"]
    monthly = dataclasses.replace(flow.actions[0], recurring=Recurring(every="monthly", until=date(2026, 12, 31)))
    out = plan_definition(dataclasses.replace(flow, actions=(monthly,)), SETTINGS, ENGINE.mappings)["action"][0]
    assert out["timingTiming"]["repeat"]["periodUnit"] == "mo"
    assert out["timingTiming"]["repeat"]["boundsPeriod"] == {"end": "2026-12-31"}
    cron = dataclasses.replace(flow.actions[0], recurring=Recurring(cron="0 9 * * 1", count=4))
    out = plan_definition(dataclasses.replace(flow, actions=(cron,)), SETTINGS, ENGINE.mappings)["action"][0]
    assert "timingTiming" not in out and "cron `0 9 * * 1`" in out["textEquivalent"]


def test_a_care_team_or_group_owner_is_not_a_practitioner() -> None:
    call = action("previsit-questionnaire", "call-about-pre-visit-form")
    [participant] = call["participant"]
    assert "type" not in participant  # R4 ActionParticipantType has no careteam
    assert participant["_type"]["extension"] == [{"url": R5_PARTICIPANT_TYPE, "valueCode": "careteam"}]
    assert participant["extension"][0]["valueReference"] == {"reference": "CareTeam/front-desk"}
    flow = ENGINE.flows["previsit-questionnaire"]
    by_group = dataclasses.replace(flow.actions[1], owner=Owner("group", "Group/front-desk"))
    out = plan_definition(dataclasses.replace(flow, actions=(by_group,)), SETTINGS, ENGINE.mappings)
    [participant] = out["action"][0]["participant"]
    assert "type" not in participant
    assert participant["_type"]["extension"] == [{"url": R5_PARTICIPANT_TYPE, "valueCode": "group"}]
    by_person = dataclasses.replace(flow.actions[1], owner=Owner("practitioner", "Practitioner/dr-lee"))
    out = plan_definition(dataclasses.replace(flow, actions=(by_person,)), SETTINGS, ENGINE.mappings)
    PlanDefinition.model_validate(out)
    assert out["action"][0]["participant"][0]["type"] == "practitioner"


def test_a_send_form_always_has_the_patient_participant() -> None:
    unowned = action("previsit-questionnaire", "pre-visit-questionnaire")
    assert unowned["participant"] == [{"type": "patient"}]
    flow = ENGINE.flows["previsit-questionnaire"]
    owned = dataclasses.replace(flow.actions[0], owner=Owner("role", "front-desk"))
    out = plan_definition(dataclasses.replace(flow, actions=(owned,)), SETTINGS, ENGINE.mappings)["action"][0]
    assert [p.get("type") for p in out["participant"]] == ["patient", "practitioner"]
    assert action("intake-forms", "send-intake-packet")["participant"] == [{"type": "patient"}]  # once


def test_a_due_before_the_event_is_relative_to_the_trigger_resource() -> None:
    flow = ENGINE.flows["intake-forms"]
    early = dataclasses.replace(flow.actions[1], due=Due(2, "hours", "before", "event"))
    out = plan_definition(dataclasses.replace(flow, actions=(early,)), SETTINGS, ENGINE.mappings)
    PlanDefinition.model_validate(out)
    parts = relative(out["action"][0])
    assert parts["target"]["type"] == "Patient" and parts["relationship"] == "before-start"
