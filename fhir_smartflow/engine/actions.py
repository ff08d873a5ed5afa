"""Plan actions for one flow action: its type's resources (engine/action_types.py, builders.py) and, for
types that make a Task, the follow-up schedules: reminders, overdue checks and recurrences become Schedule
actions (payload keys: docs/internals.md).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fhir_smartflow.engine.action_types import ACTION_TYPES
from fhir_smartflow.engine.model import Action
from fhir_smartflow.engine.plan import PlanAction, Schedule
from fhir_smartflow.engine.runctx import RunContext
from fhir_smartflow.instants import format_instant


def plan_action(run: RunContext, action: Action, event_at: datetime, base: datetime | None = None) -> list[PlanAction]:
    """Everything one action does for this run (``base``: anchor of a recurring occurrence)."""
    spec = ACTION_TYPES[action.type]
    template = run.engine.templates.get(action.template) if action.template else None
    due = run.due(action.due, action, base)
    # Resources of a recurring occurrence are stamped with the occurrence time, not the first event.
    out = spec.build(run, action, template, due, base or event_at)
    if spec.makes_task:
        out += follow_ups(run, action, due, event_at, base)
    return out


# --- follow-ups ------------------------------------------------------------------------------------


def followup_payload(run: RunContext, action: Action, due: datetime | None, event_at: datetime) -> dict[str, Any]:
    return {
        "flow_id": run.flow.id,
        "flow_version": run.flow.version,
        "action": action.slug,
        "action_index": action.index,
        "trigger": run.trigger.trigger,
        "trigger_id": run.trigger.id,
        "task_identifier": run.rid(action, "Task"),
        "group": run.group,
        "patient": run.trigger.patient,
        "focus": run.focus,
        "event_time": format_instant(event_at),
        "due": format_instant(due),
        "due_date_only": run.is_date_only(due),
        "occurrence": run.occurrence,
    }


def follow_ups(
    run: RunContext, action: Action, due: datetime | None, event_at: datetime, base: datetime | None
) -> list[PlanAction]:
    """Reminder / overdue schedules of this occurrence, and the next recurrence (series starts at event_at)."""
    from fhir_smartflow.engine.recurrence import next_occurrence

    out: list[PlanAction] = []
    payload = followup_payload(run, action, due, event_at)
    if action.reminder is not None:
        from fhir_smartflow.engine.due import compute_due

        if due is None:
            run.notes.append(f"{action.name!r}: reminder skipped: the action has no due date")
        else:
            tz = run.settings.clinic.timezone
            at = compute_due(due, action.reminder.amount, action.reminder.unit, "before", tz)
            if at > run.now:
                out.append(Schedule(at, "reminder", run.rid(action, "Schedule", "reminder"), payload, action.slug))
            else:  # a reminder already in the past would only confuse the patient
                run.notes.append(
                    f"{action.name!r}: reminder skipped: it would be at {format_instant(at)}, "
                    f"before now ({format_instant(run.now)})"
                )
    if action.overdue is not None:
        if due is None:
            run.notes.append(f"{action.name!r}: overdue check skipped: the action has no due date")
        else:
            out.append(Schedule(due, "overdue", run.rid(action, "Schedule", "overdue"), payload, action.slug))
    if action.recurring is not None:
        following = next_occurrence(action.recurring, event_at, run.occurrence, run.settings.clinic.timezone)
        if following is not None:
            nxt = {**payload, "occurrence": run.occurrence + 1, "occurrence_at": format_instant(following)}
            out.append(Schedule(following, "recurrence", run.rid(action, "Schedule", "recurrence"), nxt, action.slug))
        else:
            run.notes.append(
                f"{action.name!r}: no next recurrence: occurrence {run.occurrence + 1} is the last (count / until)"
            )
    return out
