"""What the planner returns: plain data, no I/O. The executor carries it out.

Every action carries a deterministic identifier (flow id + version + trigger event + action), so a
replayed event yields an identical plan and the executor's idempotent writes create nothing new.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fhir_smartflow.events import ResourceEvent


@dataclass(frozen=True)
class TriggerEvent:
    """A mapping matched: ``trigger`` happened to ``event``'s resource."""

    trigger: str  # e.g. "patient.registered"
    event: ResourceEvent
    id: str  # deterministic: trigger + focus + version (or event identity)
    patient: str | None = None  # "Patient/123" when known
    parameters: dict[str, str] = field(default_factory=dict)
    # Set for triggers that fire once per key (appointment.first_kept: once per patient); the
    # dispatcher claims it in Redis and drops the trigger when it was claimed before.
    once_key: str | None = None


@dataclass(frozen=True)
class WriteResource:
    """Create this FHIR resource (conditionally, by its business identifier)."""

    resource_type: str  # Task | Communication | DocumentReference | Flag | Provenance
    identifier: str  # business identifier value; system comes from config
    resource: dict[str, Any]  # complete FHIR R4 JSON, already carrying the identifier
    action: str = ""  # the flow action it came from
    # A staff message (or its fallback notice) for roles no active PractitionerRole holds: the executor
    # logs it at ERROR and counts it (metric unroutable_messages) when it writes it the first time.
    unrouted: tuple[str, ...] = ()


@dataclass(frozen=True)
class Deliver:
    """Send a rendered message over a channel; the result updates the Communication."""

    channel: str  # a channel of the registry (fhir_smartflow/channels.py): sms, email, voice, webhook, a plugin's
    recipient: str  # FHIR reference of the recipient (Patient/1, Practitioner/2, Group/3)
    body: str
    identifier: str  # idempotency key of this delivery
    communication: str  # identifier of the Communication this delivery reports on
    subject: str | None = None
    action: str = ""
    # The action's `notify_on_failure`: when this delivery fails, `owner` (the action's staff owner:
    # Practitioner / PractitionerRole / Group references, a role's members) is told in the EHR.
    notify_on_failure: bool = False
    owner: tuple[str, ...] = ()


@dataclass(frozen=True)
class Schedule:
    """Do ``kind`` at ``at`` (UTC): reminder, overdue check or next recurrence."""

    at: datetime
    kind: str  # reminder | overdue | recurrence
    identifier: str
    payload: dict[str, Any] = field(default_factory=dict)
    action: str = ""


@dataclass(frozen=True)
class CancelGroup:
    """Cancel the open Tasks (and pending jobs) of a workflow instance or a patient's flows."""

    reason: str
    identifier: str
    group: str | None = None  # Task.groupIdentifier value
    patient: str | None = None  # with flows: cancel this patient's open tasks of these flows
    flows: tuple[str, ...] = ()
    keep: str | None = None  # identifier of a task not to cancel (the completing one)


@dataclass(frozen=True)
class PatchTask:
    """Change an existing Task found by its business identifier (overdue marking, cancellation)."""

    identifier: str  # the Task's business identifier value
    status: str | None = None  # new Task.status, e.g. cancelled
    business_status: str | None = None  # e.g. overdue
    status_reason: str | None = None
    only_if_open: bool = True  # leave completed / cancelled / failed tasks alone
    action: str = ""


PlanAction = WriteResource | Deliver | Schedule | CancelGroup | PatchTask


@dataclass(frozen=True)
class FlowRun:
    """One flow considered for one trigger event."""

    flow_id: str
    flow_version: str
    group: str  # Task.groupIdentifier value shared by this run's tasks
    ran: bool
    reason: str  # why it ran, or why not (disabled, condition false, discharged, ...)
    actions: tuple[PlanAction, ...] = ()
    # What the run left out and why (a reminder already past, a recurrence that ended, a role nobody
    # holds): what simulate prints besides the actions.
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    trigger: TriggerEvent
    runs: tuple[FlowRun, ...] = ()

    @property
    def actions(self) -> tuple[PlanAction, ...]:
        return tuple(a for run in self.runs for a in run.actions)
