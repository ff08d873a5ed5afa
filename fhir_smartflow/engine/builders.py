"""What each action type writes (its spec's ``build``, engine/action_types.py), and the message helpers.

send-form      → SDC Task (+ a Communication per method, + a Deliver for each channel that sends)
staff-task     → Task with owner (Practitioner / PractitionerRole / Group) or performerType (role)
staff-message  → Task + a Communication per recipient and method
patient-message / notify → a Communication per recipient and method
patient-note   → DocumentReference;  record-prompt → Flag
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from fhir_smartflow.channels import ONLINE_WRITTEN, STAFF_MESSAGE
from fhir_smartflow.engine import resources as fr
from fhir_smartflow.engine.model import Action, Template
from fhir_smartflow.engine.not_done import not_done_status_reason
from fhir_smartflow.engine.plan import Deliver, PlanAction, WriteResource
from fhir_smartflow.engine.runctx import RunContext, RunProblem
from fhir_smartflow.instants import format_instant

# --- tasks -----------------------------------------------------------------------------------------


def _owner(run: RunContext, action: Action, default_patient: bool) -> tuple[str | None, list[dict[str, Any]]]:
    owner = action.owner
    if owner is None or owner.kind == "patient":
        return (run.patient_ref() if default_patient or owner is not None else None), []
    if owner.kind == "role":
        return None, [run.role_concept(owner.value)]
    return owner.value, []


def task_write(
    run: RunContext,
    action: Action,
    template: Template | None,
    due: datetime | None,
    event_at: datetime,
    *,
    form: str | None,
) -> WriteResource:
    ident = run.rid(action, "Task")
    owner, performer_types = _owner(run, action, default_patient=form is not None)
    if owner is None and not performer_types and template is not None:
        # A staff message without an owner lands on the worklists of its recipients' roles.
        performer_types = [run.role_concept(role) for role in template.recipients.roles]
    description = action.name
    if template is not None and template.body and form is None:
        description = run.render(template, "body", due=due)
    title = None
    if form:
        questionnaire = run.questionnaire(form)
        title = (questionnaire or {}).get("title") or action.name
    resource = fr.build_task(
        identifier_system=run.system,
        identifier_value=ident,
        group=run.group,
        instantiates_uri=run.instantiates(action),
        description=description,
        authored_on=format_instant(event_at) or "",
        requester=run.device,
        for_ref=run.trigger.patient,
        # SDC (sdc-t1): a complete-questionnaire Task carries no focus; what triggered it is its reason.
        focus=None if form else run.focus,
        owner=owner,
        performer_types=performer_types,
        due=format_instant(due),
        questionnaire=form,
        code_text=title or action.name,
    )
    if form and run.focus:
        resource["reasonReference"] = {"reference": run.focus}
    return WriteResource("Task", ident, resource, action.slug)


def send_form(
    run: RunContext, action: Action, template: Template | None, due: datetime | None, event_at: datetime
) -> list[PlanAction]:
    run.patient_ref()
    task = task_write(run, action, template, due, event_at, form=action.item)
    out: list[PlanAction] = [task]
    if template is not None:
        out += communications(
            run,
            action,
            template,
            due,
            event_at,
            [run.patient_ref()],
            category="instruction",
            task_identifier=task.identifier,
            form=action.item,
        )
    return out


def staff_task(
    run: RunContext, action: Action, template: Template | None, due: datetime | None, event_at: datetime
) -> list[PlanAction]:
    return [task_write(run, action, template, due, event_at, form=None)]


def staff_message(
    run: RunContext, action: Action, template: Template | None, due: datetime | None, event_at: datetime
) -> list[PlanAction]:
    task = task_write(run, action, template, due, event_at, form=None)
    assert template is not None  # the loader requires one
    return [
        task,
        *communications(
            run,
            action,
            template,
            due,
            event_at,
            staff_recipients(run, action, template),
            category="notification",
            task_identifier=task.identifier,
            unrouted=unrouted_roles(run, action, template),
        ),
    ]


def patient_message(
    run: RunContext, action: Action, template: Template | None, due: datetime | None, event_at: datetime
) -> list[PlanAction]:
    assert template is not None  # the loader requires one
    return communications(run, action, template, due, event_at, [run.patient_ref()], category="notification")


def notify(
    run: RunContext, action: Action, template: Template | None, due: datetime | None, event_at: datetime
) -> list[PlanAction]:
    assert template is not None  # the loader requires one
    recipients = staff_recipients(run, action, template)
    unrouted = unrouted_roles(run, action, template)
    return communications(run, action, template, due, event_at, recipients, category="alert", unrouted=unrouted)


def owner_staff(run: RunContext, action: Action) -> list[str]:
    """The action's staff owner as recipients: the Practitioner / PractitionerRole / Group it names, or
    the PractitionerRoles holding its role; none for a patient owner or no owner."""
    owner = action.owner
    if owner is None or owner.kind == "patient":
        return []
    return list(run.role_members(owner.value)) if owner.kind == "role" else [owner.value]  # a copy: it is cached


def staff_recipients(run: RunContext, action: Action, template: Template) -> list[str]:
    """Owner + template recipients; roles resolve to the PractitionerRoles that hold them."""
    owner = action.owner
    refs = [run.patient_ref()] if owner is not None and owner.kind == "patient" else owner_staff(run, action)
    refs += [*template.recipients.practitioners, *template.recipients.groups]
    for role in template.recipients.roles:
        refs += run.role_members(role)
    return list(dict.fromkeys(refs))


def unrouted_roles(run: RunContext, action: Action, template: Template) -> tuple[str, ...]:
    """The roles a staff message is addressed to (owner, template recipients) that nobody holds."""
    owner = action.owner
    roles = [owner.value] if owner is not None and owner.kind == "role" else []
    roles += template.recipients.roles
    return tuple(role for role in dict.fromkeys(roles) if not run.role_members(role))


def fallback_notice(
    run: RunContext, action: Action, body: str, unrouted: tuple[str, ...], sent: str | None, kind_prefix: str = ""
) -> WriteResource | None:
    """The message, for the configured fallback recipient, when roles it is addressed to resolve to nobody."""
    fallback = run.settings.role_fallback
    if not fallback:
        return None
    ident = run.rid(action, "Communication", f"{kind_prefix}fallback")
    who = ", ".join(unrouted)
    resource = fr.build_communication(
        identifier_system=run.system,
        identifier_value=ident,
        method=STAFF_MESSAGE,
        medium=ONLINE_WRITTEN,
        text=f"Nobody holds the role {who} (no active PractitionerRole), so this message comes to you:\n{body}",
        sender=run.device,
        status="completed",
        category="alert",
        recipients=[fallback],
        subject=run.trigger.patient,
        # Not basedOn the Task: targets that show a Task's messages through the Task alone (OpenEMR's)
        # would never show the fallback its message (as for failure notices, delivery/notice.py).
        about=run.focus,
        sent=sent,
        topic=f"Message not routed: no {who}",
    )
    return WriteResource("Communication", ident, resource, action.slug, unrouted=unrouted)


def communications(
    run: RunContext,
    action: Action,
    template: Template,
    due: datetime | None,
    event_at: datetime,
    recipients: list[str],
    *,
    category: str,
    task_identifier: str = "",
    form: str = "",
    kind_prefix: str = "",
    subject_prefix: str = "",
    unrouted: tuple[str, ...] = (),
) -> list[PlanAction]:
    """A Communication per (method, recipient); delivered channels also get a Deliver. ``unrouted``: roles
    of a staff message that nobody holds — with no recipient left, each Communication is written
    ``not-done`` (recipient-unavailable), and the configured fallback recipient gets the message."""
    out: list[PlanAction] = []
    body = run.render(template, "body", form=form, task_identifier=task_identifier, due=due)
    subject = run.render(template, "subject", form=form, task_identifier=task_identifier, due=due)
    subject = f"{subject_prefix}{subject}" if subject else subject_prefix.rstrip(": ")
    told_on_failure = tuple(owner_staff(run, action)) if action.notify_on_failure else ()
    if action.notify_on_failure and not told_on_failure and run.settings.role_fallback:
        told_on_failure = (run.settings.role_fallback,)  # an owner role nobody holds: tell the fallback
    if unrouted:
        fallback = run.settings.role_fallback or "nobody: no [roles] fallback is configured"
        run.notes.append(
            f"{action.name!r}: nobody holds role {', '.join(unrouted)} (no active PractitionerRole): "
            f"{'written not-done; ' if not recipients else ''}the message goes to {fallback}"
        )
    if unrouted and not recipients:
        sent = format_instant(event_at)
        out += _not_routed(run, action, body, subject, unrouted, task_identifier, category, sent, kind_prefix)
    for method in action.methods if recipients or not unrouted else ():
        channel = run.engine.channels[method]  # the loader checked every method against these
        fhir_only = channel.fhir_only
        assert channel.medium is not None  # a channel that reaches people writes a Communication (ChannelSpec)
        targets = recipients if recipients else ([""] if fhir_only else [])
        if not targets:
            raise RunProblem(f"action {action.name!r}: nobody to send {method} to (no recipient resolved)")
        for recipient in targets:
            tag = f"{kind_prefix}{method}" + (f":{recipient}" if len(targets) > 1 else "")
            ident = run.rid(action, "Communication", tag)
            resource = fr.build_communication(
                identifier_system=run.system,
                identifier_value=ident,
                method=method,
                medium=channel.medium,
                text=body,
                sender=run.device,
                status="completed" if fhir_only else "in-progress",
                category=category,
                recipients=[recipient] if recipient else [],
                subject=run.trigger.patient,
                based_on_task=task_identifier or None,
                about=run.focus,
                sent=format_instant(event_at) if fhir_only else None,
                topic=subject or None,
            )
            out.append(WriteResource("Communication", ident, resource, action.slug))
            if not fhir_only:
                out.append(
                    Deliver(
                        channel=method,
                        recipient=recipient,
                        body=body,
                        identifier=run.rid(action, "Deliver", tag),
                        communication=ident,
                        subject=subject or None,
                        action=action.slug,
                        notify_on_failure=action.notify_on_failure,
                        owner=told_on_failure,
                    )
                )
    if unrouted and recipients:  # some got it; the fallback stands in for the roles nobody holds
        notice = fallback_notice(run, action, body, unrouted, format_instant(event_at), kind_prefix)
        out += [notice] if notice else []
    return out


def _not_routed(
    run: RunContext,
    action: Action,
    body: str,
    subject: str,
    unrouted: tuple[str, ...],
    task_identifier: str,
    category: str,
    sent: str | None,
    kind_prefix: str,
) -> list[PlanAction]:
    """Nobody to send to: a not-done Communication per method (never counted as done), and the fallback's."""
    out: list[PlanAction] = []
    reason = not_done_status_reason(
        "recipient-unavailable", f"no active PractitionerRole holds the role {', '.join(unrouted)}"
    )
    for method in action.methods:
        channel = run.engine.channels[method]
        assert channel.medium is not None
        ident = run.rid(action, "Communication", f"{kind_prefix}{method}")
        resource = fr.build_communication(
            identifier_system=run.system,
            identifier_value=ident,
            method=method,
            medium=channel.medium,
            text=body,
            sender=run.device,
            status="not-done",
            category=category,
            subject=run.trigger.patient,
            based_on_task=task_identifier or None,
            about=run.focus,
            topic=subject or None,
        )
        resource["statusReason"] = reason
        out.append(WriteResource("Communication", ident, resource, action.slug, unrouted=unrouted))
    notice = fallback_notice(run, action, body, unrouted, sent, kind_prefix)
    # The not-done Communications carry the alarm; the notice is not counted a second time.
    return [*out, dataclasses.replace(notice, unrouted=())] if notice else out


# --- notes and prompts -----------------------------------------------------------------------------


def patient_note(
    run: RunContext, action: Action, template: Template | None, due: datetime | None, event_at: datetime
) -> list[PlanAction]:
    assert template is not None
    ident = run.rid(action, "DocumentReference")
    encounter = run.focus if run.trigger.event.resource_type == "Encounter" else None
    resource = fr.build_document_reference(
        identifier_system=run.system,
        identifier_value=ident,
        note_type=template.note_type,
        text=run.render(template, "body", due=due),
        title=run.render(template, "subject", due=due) or template.name,
        subject=run.patient_ref(),
        author=run.device,
        created=format_instant(event_at) or "",
        encounter=encounter,
        related=None if encounter else run.focus,
    )
    return [WriteResource("DocumentReference", ident, resource, action.slug)]


def record_prompt(
    run: RunContext, action: Action, template: Template | None, due: datetime | None, event_at: datetime
) -> list[PlanAction]:
    assert template is not None and template.prompt is not None
    ident = run.rid(action, "Flag")
    resource = fr.build_flag(
        identifier_system=run.system,
        identifier_value=ident,
        text=run.render(template, "prompt", due=due),
        subject=run.patient_ref(),
        author=run.device,
        start=format_instant(event_at) or "",
        end=format_instant(due),
        roles=[run.role_concept(r) for r in template.prompt.roles],
        practitioners=template.prompt.practitioners,
    )
    return [WriteResource("Flag", ident, resource, action.slug)]
