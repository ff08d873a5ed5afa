"""The console tests' shared flow: written by hand, and as the editor posts it (same flow, same behaviour)."""

from werkzeug.datastructures import MultiDict

HAND_WRITTEN = """\
id = "welcome-forms"
name = "Welcome forms"
trigger = "patient.registered"

[[actions]]
name = "Send welcome form"
category = "smartflow"
type = "send-form"
item = "http://example.org/fhir/Questionnaire/intake"
template = "intake-forms"
methods = ["sms"]
due = { amount = 3, unit = "days", anchor = "event" }
weekend = "next-monday"
owner = "patient"
reminder = { amount = 1, unit = "days" }
"""

# What the editor posts for the same flow (field names of console/templates/flow_edit.html).
POSTED = MultiDict(
    [
        ("id", "welcome-forms"),
        ("name", "Welcome forms"),
        ("enabled", "on"),
        ("version", "1"),
        ("trigger", "patient.registered"),
        ("condition", ""),
        ("action_count", "1"),
        ("actions-0-name", "Send welcome form"),
        ("actions-0-type", "send-form"),
        ("actions-0-item", "http://example.org/fhir/Questionnaire/intake"),
        ("actions-0-template", "intake-forms"),
        ("actions-0-methods", "sms"),
        ("actions-0-due_amount", "3"),
        ("actions-0-due_unit", "days"),
        ("actions-0-due_direction", "after"),
        ("actions-0-due_anchor", "event"),
        ("actions-0-weekend", "next-monday"),
        ("actions-0-owner_kind", "patient"),
        ("actions-0-reminder_amount", "1"),
        ("actions-0-reminder_unit", "days"),
    ]
)
