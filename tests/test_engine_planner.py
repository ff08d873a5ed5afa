"""Planner details not covered by the shipped examples: staff messages, notify by SMS, recurrences, problems."""

from __future__ import annotations

import dataclasses
import textwrap
from datetime import UTC, datetime
from pathlib import Path

from fhir_smartflow.engine.model import Recurring
from fhir_smartflow.engine.plan import Deliver, WriteResource
from fhir_smartflow.engine.planner import plan
from fhir_smartflow.engine.recurrence import next_occurrence, occurrence_time
from fhir_smartflow.engine.triggers import match_triggers
from fhir_smartflow.engine.validation import validate_resource
from fhir_smartflow.flowfiles import load_paths
from tests.support.engine import PRACTITIONER_ROLE, ROOT, SETTINGS, appointment, event_for, patient
from tests.support.fakes import FakeContext

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def engine_with(tmp_path: Path, flow: str, template: str):
    (tmp_path / "flows").mkdir()
    (tmp_path / "templates").mkdir()
    (tmp_path / "flows" / "f.toml").write_text(textwrap.dedent(flow))
    (tmp_path / "templates" / "t.toml").write_text(textwrap.dedent(template))
    engine, errors = load_paths(
        [str(ROOT / "mappings")], [str(tmp_path / "flows")], [str(tmp_path / "templates")], SETTINGS
    )
    assert not errors, [str(e) for e in errors]
    return engine


STAFF_TEMPLATE = """\
    id = "t"
    name = "No-show staff notice"
    methods = ["staff-message", "sms"]
    subject = "No-show"
    body = "{{ patient.full_name }} missed {{ appointment.start }}."
    [recipients]
    practitioners = ["Practitioner/dr-lee"]
    groups = ["Group/front-desk"]
    roles = ["clinician"]
"""


def test_staff_message_and_sms_notify_to_resolved_recipients(tmp_path):
    engine = engine_with(
        tmp_path,
        """\
        id = "f"
        name = "F"
        trigger = "appointment.no_show"
        [[actions]]
        name = "Tell the team"
        category = "smartflow"
        type = "staff-message"
        item = "t"
        template = "t"
        methods = ["staff-message"]
        due = { amount = 4, unit = "hours" }
        [[actions]]
        name = "Text the clinician"
        category = "smartflow"
        type = "notify"
        item = "t-sms"
        template = "t"
        methods = ["sms"]
        owner = { role = "clinician" }
    """,
        STAFF_TEMPLATE,
    )
    noshow = appointment("a1", "noshow", "2026-03-13T14:00:00Z", "2026-03-13T16:00:00Z")
    (trigger,) = match_triggers(engine, event_for(noshow), None)
    p = plan(engine, trigger, FakeContext([patient(), PRACTITIONER_ROLE]), SETTINGS, NOW)
    (run,) = p.runs
    assert run.ran, run.reason
    writes = [a for a in p.actions if isinstance(a, WriteResource)]
    for w in writes:
        validate_resource(w.resource)
    task = writes[0].resource
    assert task["restriction"]["period"]["end"] == "2026-03-13T20:00:00Z"  # 4 elapsed hours
    assert task["performerType"][0]["text"] == "clinician"  # no owner: the recipients' role
    staff = [w.resource for w in writes if w.resource_type == "Communication" and w.action == "tell-the-team"]
    assert [c["recipient"][0]["reference"] for c in staff] == [
        "Practitioner/dr-lee",
        "Group/front-desk",
        "PractitionerRole/dr-lee-role",
    ]
    assert len({c["identifier"][0]["value"] for c in staff}) == 3
    assert staff[0]["payload"][0]["contentString"] == "Alex Rivera missed Friday, March 13, 2026 at 10:00 AM EDT."
    # notify: the owner's role members first, then the template's recipients (deduplicated).
    delivers = [a for a in p.actions if isinstance(a, Deliver)]
    assert [(d.channel, d.recipient) for d in delivers] == [
        ("sms", "PractitionerRole/dr-lee-role"),
        ("sms", "Practitioner/dr-lee"),
        ("sms", "Group/front-desk"),
    ]


def test_a_role_nobody_holds_is_not_done_and_goes_to_the_fallback(tmp_path):
    engine = engine_with(
        tmp_path,
        """\
        id = "f"
        name = "F"
        trigger = "appointment.no_show"
        [[actions]]
        name = "Text the clinician"
        category = "smartflow"
        type = "notify"
        item = "t"
        template = "t"
        methods = ["sms"]
        owner = { role = "nurse" }
    """,
        STAFF_TEMPLATE.replace('roles = ["clinician"]', "")
        .replace('practitioners = ["Practitioner/dr-lee"]', "")
        .replace('groups = ["Group/front-desk"]', ""),
    )
    noshow = appointment("a1", "noshow", "2026-03-13T14:00:00Z", "2026-03-13T16:00:00Z")
    (trigger,) = match_triggers(engine, event_for(noshow), None)
    (run,) = plan(engine, trigger, FakeContext([patient()]), SETTINGS, NOW).runs
    # Without a fallback: the message is written not-done, never completed, and nothing is sent.
    (comm,) = [a for a in run.actions if isinstance(a, WriteResource)]
    assert run.ran and not [a for a in run.actions if isinstance(a, Deliver)]
    assert comm.resource["status"] == "not-done" and comm.unrouted == ("nurse",)
    assert comm.resource["statusReason"]["coding"][0]["code"] == "recipient-unavailable"
    assert "recipient" not in comm.resource
    # With `[roles] fallback`: the fallback gets the message too, as an in-EHR staff message.
    settings = dataclasses.replace(SETTINGS, role_fallback="Group/front-desk")
    (run,) = plan(engine, trigger, FakeContext([patient()]), settings, NOW).runs
    not_done, notice = [a for a in run.actions if isinstance(a, WriteResource)]
    assert not_done.resource["status"] == "not-done" and not notice.unrouted
    assert notice.resource["status"] == "completed" and notice.resource["recipient"] == [
        {"reference": "Group/front-desk"}
    ]
    assert notice.resource["topic"]["text"] == "Message not routed: no nurse"
    for action in (not_done, notice):
        validate_resource(action.resource)


def test_no_patient_is_a_recorded_problem(tmp_path):
    engine = engine_with(
        tmp_path,
        """\
        id = "f"
        name = "F"
        trigger = "appointment.no_show"
        [[actions]]
        name = "Text"
        category = "smartflow"
        type = "patient-message"
        item = "t"
        template = "t"
        methods = ["sms"]
    """,
        STAFF_TEMPLATE,
    )
    noshow = appointment("a1", "noshow", "2026-03-13T14:00:00Z", "2026-03-13T16:00:00Z")
    noshow["participant"] = noshow["participant"][1:]
    (trigger,) = match_triggers(engine, event_for(noshow), None)
    (run,) = plan(engine, trigger, FakeContext(), SETTINGS, NOW).runs
    assert not run.ran and run.reason == "no patient found on Appointment/a1"


def test_recurrence_rules():
    ny = "America/New_York"
    start = datetime(2026, 1, 31, 14, 0, tzinfo=UTC)  # Saturday 09:00 EST
    monthly = Recurring(every="monthly", count=3)
    assert occurrence_time(monthly, start, 1, ny) == datetime(2026, 2, 28, 14, 0, tzinfo=UTC)  # clamped
    assert occurrence_time(monthly, start, 2, ny) == datetime(2026, 3, 31, 13, 0, tzinfo=UTC)  # 09:00 EDT
    assert next_occurrence(monthly, start, 2, ny) is None
    cron = Recurring(cron="0 9 * * MON", until=datetime(2026, 2, 9).date())
    assert occurrence_time(cron, start, 1, ny) == datetime(2026, 2, 2, 14, 0, tzinfo=UTC)
    assert next_occurrence(cron, start, 1, ny) == datetime(2026, 2, 9, 14, 0, tzinfo=UTC)
    assert next_occurrence(cron, start, 2, ny) is None  # 02-16 is after `until`
    daily = Recurring(every="daily", count=10)
    assert occurrence_time(daily, datetime(2026, 3, 7, 14, 0, tzinfo=UTC), 1, ny) == datetime(
        2026, 3, 8, 13, 0, tzinfo=UTC
    )


def test_appointment_fields_for_other_triggers_use_the_next_booked_appointment(tmp_path):
    engine = engine_with(
        tmp_path,
        """\
        id = "f"
        name = "F"
        trigger = "patient.registered"
        [[actions]]
        name = "Welcome"
        category = "smartflow"
        type = "patient-message"
        item = "t"
        template = "t"
        methods = ["portal"]
    """,
        """\
        id = "t"
        name = "Welcome"
        methods = ["portal"]
        body = "See you {{ appointment.start }} at {{ appointment.location }}."
    """,
    )
    past = appointment("old", "booked", "2026-03-01T14:00:00Z", "2026-02-01T10:00:00Z")
    soon = appointment("next", "booked", "2026-03-10T13:30:00Z", "2026-03-02T10:00:00Z")
    later = appointment("later", "booked", "2026-04-10T13:30:00Z", "2026-03-02T10:00:00Z")
    new = patient()
    (trigger,) = match_triggers(engine, event_for(new, "create"), None)
    p = plan(engine, trigger, FakeContext([new, past, later, soon]), SETTINGS, NOW)
    (comm,) = [a.resource for a in p.actions if isinstance(a, WriteResource)]
    assert comm["payload"][0]["contentString"] == (
        "See you Tuesday, March 10, 2026 at 9:30 AM EDT at Main Street Clinic."
    )
