"""Follow-up planning: what a fired Schedule job does (reminder, overdue, recurrence).

The scheduling job reads the Task named by ``payload["task_identifier"]`` and calls
``plan_followup``. Identifiers are derived from the original run (payload ``trigger_id`` and
``flow_version``), so a job that fires twice plans the same resources and creates nothing new.
- reminder: the messages again (subject "Reminder: ..."), only while the task is open;
- overdue: PatchTask(businessStatus "overdue") while open, and with ``notify_owner`` a message to
  the owner (the patient over the action's methods, staff as an in-EHR staff message);
- recurrence: the next occurrence's Task and messages, its reminder / overdue, and the next
  recurrence, unless the series ended, the flow is disabled or the patient is discharged.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from fhir_smartflow.channels import ONLINE_WRITTEN, PATIENT, STAFF_MESSAGE
from fhir_smartflow.config import Settings
from fhir_smartflow.engine import resources as fr
from fhir_smartflow.engine.action_types import ACTION_TYPES
from fhir_smartflow.engine.actions import plan_action
from fhir_smartflow.engine.builders import communications, owner_staff, staff_recipients, unrouted_roles
from fhir_smartflow.engine.identifiers import group_id
from fhir_smartflow.engine.interfaces import ContextSource
from fhir_smartflow.engine.model import Action, Engine, Template
from fhir_smartflow.engine.not_done import not_done_status_reason
from fhir_smartflow.engine.plan import FlowRun, PatchTask, Plan, PlanAction, TriggerEvent
from fhir_smartflow.engine.runctx import RunContext, RunProblem
from fhir_smartflow.engine.task_status import OPEN_TASK_STATUSES
from fhir_smartflow.engine.templating import TemplateRenderError
from fhir_smartflow.events import ResourceEvent
from fhir_smartflow.instants import format_instant, parse_instant
from fhir_smartflow.refs import parse_reference


def followup_trigger(payload: dict[str, Any]) -> TriggerEvent:
    """The original trigger event, rebuilt from the payload (same id → same identifiers)."""
    focus = parse_reference(payload.get("focus"))
    event = ResourceEvent(
        subscription="followup",
        resource_type=focus.resource_type if focus else "Patient",
        resource_id=focus.id if focus else None,
        received_at=payload.get("event_time") or "",
        timestamp=payload.get("event_time"),
        source="replay",
    )
    return TriggerEvent(
        trigger=payload.get("trigger", ""), event=event, id=payload["trigger_id"], patient=payload.get("patient")
    )


def plan_followup(
    engine: Engine,
    kind: str,
    payload: dict[str, Any],
    task: dict[str, Any] | None,
    context: ContextSource,
    settings: Settings,
    now: datetime,
    discharged: bool = False,
) -> Plan:
    trigger = followup_trigger(payload)
    flow_id, version = payload["flow_id"], str(payload["flow_version"])
    group = payload.get("group") or group_id(flow_id, version, trigger.id)

    def skipped(reason: str) -> Plan:
        return Plan(trigger, (FlowRun(flow_id, version, group, ran=False, reason=f"{kind}: {reason}"),))

    flow = engine.flows.get(flow_id)
    if flow is None:
        return skipped("the flow is no longer loaded")
    if not flow.enabled:
        return skipped("flow disabled")
    action = flow.action(payload["action"])
    if action is None:
        return skipped(f"the flow no longer has action {payload['action']!r}")
    # Identifiers of the original run: keep its version even when the flow file changed since.
    flow = dataclasses.replace(flow, version=version)
    run = RunContext(engine, settings, flow, trigger, context, now, occurrence=int(payload.get("occurrence", 0)))
    event_at = parse_instant(payload.get("event_time")) or now
    due = parse_instant(payload.get("due"))
    if due is not None and payload.get("due_date_only"):
        run.mark_date_only(due)
    task_open = task is not None and task.get("status") in OPEN_TASK_STATUSES
    try:
        if kind == "reminder":
            if not task_open:
                return skipped("the task is no longer open")
            actions = _reminder(run, action, due, event_at)
        elif kind == "overdue":
            if not task_open:
                return skipped("the task is no longer open")
            actions = _overdue(run, action, due, event_at)
        elif kind == "recurrence":
            if discharged and flow.stops_at_discharge:
                return skipped("patient discharged: the series stops")
            base = parse_instant(payload.get("occurrence_at"))
            if base is None:
                return skipped("the payload has no occurrence_at")
            actions = plan_action(run, action, event_at, base=base)
        else:
            return skipped(f"unknown follow-up kind {kind!r}")
    except RunProblem as exc:
        return skipped(str(exc))
    except TemplateRenderError as exc:
        return skipped(f"a template failed to render: {exc}")
    run_result = FlowRun(flow.id, version, group, ran=True, reason=kind, actions=tuple(actions), notes=tuple(run.notes))
    return Plan(trigger, (run_result,))


def _template(run: RunContext, action: Action) -> Template | None:
    return run.engine.templates.get(action.template) if action.template else None


def _reminder(run: RunContext, action: Action, due: datetime | None, event_at: datetime) -> list[PlanAction]:
    template = _template(run, action)
    if template is None or not action.methods:
        return []
    spec = ACTION_TYPES[action.type]
    recipients = [run.patient_ref()] if spec.audience == PATIENT else staff_recipients(run, action, template)
    unrouted = () if spec.audience == PATIENT else unrouted_roles(run, action, template)
    form = action.item if spec.form else ""
    return communications(
        run,
        action,
        template,
        due,
        event_at,
        recipients,
        category="reminder",
        task_identifier=run.rid(action, "Task"),
        form=form,
        kind_prefix="reminder:",
        subject_prefix="Reminder: ",
        unrouted=unrouted,
    )


def _overdue(run: RunContext, action: Action, due: datetime | None, event_at: datetime) -> list[PlanAction]:
    task_identifier = run.rid(action, "Task")
    out: list[PlanAction] = [
        PatchTask(
            identifier=task_identifier, business_status="overdue", status_reason="past its due date", action=action.slug
        )
    ]
    if action.overdue is None or not action.overdue.notify_owner:
        return out
    template = _template(run, action)
    owner = action.owner
    if (owner is None or owner.kind == "patient") and template is not None and action.methods:
        form = action.item if ACTION_TYPES[action.type].form else ""
        return out + communications(
            run,
            action,
            template,
            due,
            event_at,
            [run.patient_ref()],
            category="alert",
            task_identifier=task_identifier,
            form=form,
            kind_prefix="overdue:",
            subject_prefix="Overdue: ",
        )
    return [*out, _staff_overdue_message(run, action, task_identifier, due, event_at)]


def _staff_overdue_message(
    run: RunContext, action: Action, task_identifier: str, due: datetime | None, event_at: datetime
) -> PlanAction:
    from fhir_smartflow.engine.plan import WriteResource

    recipients = owner_staff(run, action)
    owner = action.owner
    # An owner role nobody holds: the fallback is told; with nobody at all, the message is not-done.
    unrouted = (owner.value,) if owner is not None and owner.kind == "role" and not recipients else ()
    if not recipients and run.settings.role_fallback:
        recipients = [run.settings.role_fallback]
    ident = run.rid(action, "Communication", f"overdue:{STAFF_MESSAGE}")
    text = f"Task overdue: {action.name} (flow {run.flow.id}), due {format_instant(due) or 'unknown'}."
    resource = fr.build_communication(
        identifier_system=run.system,
        identifier_value=ident,
        method=STAFF_MESSAGE,
        medium=ONLINE_WRITTEN,
        text=text,
        sender=run.device,
        status="completed" if recipients else "not-done",
        category="alert",
        recipients=recipients,
        subject=run.trigger.patient,
        based_on_task=task_identifier,
        sent=format_instant(due or event_at) if recipients else None,
        topic="Task overdue",
    )
    if not recipients:
        resource["statusReason"] = not_done_status_reason(
            "recipient-unavailable", "the task's owner resolves to nobody"
        )
    if unrouted:
        where = recipients[0] if recipients else "nobody: no [roles] fallback is configured"
        run.notes.append(f"{action.name!r}: overdue notice: nobody holds role {unrouted[0]}; it goes to {where}")
    return WriteResource("Communication", ident, resource, action.slug, unrouted=unrouted)
