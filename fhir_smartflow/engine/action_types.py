"""One spec per action type, the way Home Assistant gives each condition type its own class.

A type declares everything the loader checks and the planner does for it:
- ``audience``: whom its messages reach (patient, staff, the record). The methods it may use are the loaded
  channels that reach them (``written_only``: only those delivering written text), so a new channel fits
  without a change here; ``default_method`` is used when neither the flow nor the template names one;
- ``needs_template`` / ``needs_method`` / ``needs_staff_owner``;
- ``makes_task``: it writes a Task, so reminders, recurrences, overdue and completes_workflow apply and
  its follow-ups are planned;
- ``form``: its ``item`` is a Questionnaire canonical, and its messages carry the form;
- ``build``: what it writes (builders.py);
- ``item_problem`` / ``template_problem``: what else only this type requires.
``ACTION_TYPES`` is the registry; the parser (parse_flows.py), the planner (actions.py), follow-ups,
duplicate detection and the PlanDefinition export ask it instead of naming types.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from fhir_smartflow.channels import PATIENT, RECORD, STAFF, STAFF_MESSAGE, ChannelSpec
from fhir_smartflow.engine import builders
from fhir_smartflow.engine.model import Action, Template
from fhir_smartflow.engine.plan import PlanAction
from fhir_smartflow.engine.runctx import RunContext

Builder = Callable[[RunContext, Action, Template | None, datetime | None, datetime], list[PlanAction]]


@dataclass(frozen=True)
class ActionType:
    name: str
    build: Builder
    audience: str | None = None  # PATIENT | STAFF | RECORD; None: it sends nothing (no methods)
    written_only: bool = False
    default_method: str | None = None
    needs_template: bool = False
    needs_method: bool = False
    needs_staff_owner: bool = False
    makes_task: bool = False
    form: bool = False

    @property
    def sends_messages(self) -> bool:
        """It writes a Communication per method to patients or staff (what a message's template says)."""
        return self.audience in (PATIENT, STAFF)

    def allowed_methods(self, channels: Mapping[str, ChannelSpec]) -> tuple[str, ...]:
        """The channels it may use, in registry order; the default method (if any) first."""
        if self.audience is None:
            return ()
        allowed = [
            name
            for name, channel in channels.items()
            if self.audience in channel.reaches and (channel.written or not self.written_only)
        ]
        if self.default_method in allowed:
            allowed.remove(self.default_method)
            allowed.insert(0, self.default_method)
        return tuple(allowed)

    def item_problem(self, item: str) -> str | None:
        return None

    def template_problem(self, template: Template) -> str | None:
        return None


@dataclass(frozen=True)
class SendForm(ActionType):
    def item_problem(self, item: str) -> str | None:
        if item.startswith(("http://", "https://", "urn:")):
            return None
        return f"a send-form item is the Questionnaire canonical URL, got {item!r}"


@dataclass(frozen=True)
class RecordPrompt(ActionType):
    def template_problem(self, template: Template) -> str | None:
        return None if template.prompt is not None else f"template {template.id!r} has no [prompt] for a record-prompt"


_TYPES = (
    SendForm("send-form", builders.send_form, audience=PATIENT, makes_task=True, form=True),
    ActionType("patient-message", builders.patient_message, audience=PATIENT, needs_template=True, needs_method=True),
    ActionType(
        "staff-message",
        builders.staff_message,
        audience=STAFF,
        written_only=True,
        default_method=STAFF_MESSAGE,
        needs_template=True,
        makes_task=True,
    ),
    ActionType("staff-task", builders.staff_task, needs_staff_owner=True, makes_task=True),
    ActionType(
        "patient-note", builders.patient_note, audience=RECORD, default_method="patient-note", needs_template=True
    ),
    RecordPrompt("record-prompt", builders.record_prompt, needs_template=True),
    ActionType("notify", builders.notify, audience=STAFF, default_method=STAFF_MESSAGE, needs_template=True),
)
ACTION_TYPES: dict[str, ActionType] = {t.name: t for t in _TYPES}


def task_types() -> tuple[str, ...]:
    """The types that write a Task (reminders, recurrences, overdue and completes_workflow need one)."""
    return tuple(name for name, spec in ACTION_TYPES.items() if spec.makes_task)
