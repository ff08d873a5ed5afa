"""rq job functions for follow-ups. Collaborators come from the installed ``ServiceRuntime`` (worker/runtime.py).

``run_followup(kind, payload)`` is what ``RqScheduler.tick`` enqueues. Every fire re-reads the state it
depends on (the Task, the group, the patient) right then, so a follow-up scheduled weeks ago never acts
on stale assumptions: a completed Task gets no reminder, a cancelled series stops.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from fhir_smartflow.delivery.deferral import deliver_from_payload
from fhir_smartflow.engine.identifiers import parse_instantiates_uri
from fhir_smartflow.engine.model import Action, Recurring
from fhir_smartflow.engine.plan import Deliver, FlowRun, Plan, Schedule, TriggerEvent
from fhir_smartflow.engine.recurrence import recurring_from_dict, within_series
from fhir_smartflow.engine.task_status import CLOSED_TASK_STATUSES, SERIES_ENDING_STATUSES
from fhir_smartflow.events import ResourceEvent
from fhir_smartflow.instants import parse_instant
from fhir_smartflow.retry import RetryPolicy
from fhir_smartflow.scheduling.scheduler import ScheduleKeys
from fhir_smartflow.worker.discharge import DischargeMarkers
from fhir_smartflow.worker.runtime import ServiceRuntime, current_service

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
RETRY_POLICY = RetryPolicy(max_retries=MAX_ATTEMPTS - 1, base_seconds=30.0, max_seconds=3600.0)
_RAN_TTL_SECONDS = 7 * 24 * 3600

Handler = Callable[[ServiceRuntime, dict[str, Any], datetime, str], str]


def run_followup(
    kind: str, payload: dict[str, Any], identifier: str = "", scheduled_at: str = "", late_seconds: float = 0.0
) -> str:
    """The rq job: carry out one due follow-up. Returns what happened (also counted in metrics)."""
    return fire(current_service(), kind, payload, identifier, scheduled_at, late_seconds)


def fire(
    rt: ServiceRuntime,
    kind: str,
    payload: dict[str, Any],
    identifier: str = "",
    scheduled_at: str = "",
    late_seconds: float = 0.0,
) -> str:
    """``run_followup`` with an explicit runtime (tests, embedded mode)."""
    handler = HANDLERS.get(kind)
    if handler is None:
        raise ValueError(f"unknown follow-up kind {kind!r}")
    now = rt.clock()
    guard = _claim_run(rt, identifier, scheduled_at)
    if guard is False:
        _count(rt, kind, "duplicate")
        log.info("follow-up %s %s already ran; skipped", kind, identifier)
        return "duplicate"
    if late_seconds > 60:
        log.info("follow-up %s %s runs %.0f s after its due time", kind, identifier, late_seconds)
    try:
        result = handler(rt, payload, now, scheduled_at)
    except Exception as exc:
        if isinstance(guard, str):
            rt.redis.delete(guard)
        attempt = int(payload.get("_attempt", 1))
        if identifier and attempt < MAX_ATTEMPTS:
            at = now + timedelta(seconds=RETRY_POLICY.delay(attempt))
            retry_payload = {**payload, "_attempt": attempt + 1}
            rt.scheduler.reschedule(Schedule(at=at, kind=kind, identifier=identifier, payload=retry_payload))
            _count(rt, kind, "retry")
            log.warning(
                "follow-up %s %s failed (%s), attempt %d; retrying at %s",
                kind,
                identifier,
                type(exc).__name__,
                attempt,
                at.isoformat(),
            )
            return "retry"
        _count(rt, kind, "failed")
        raise
    _count(rt, kind, result)
    log.info("follow-up %s %s: %s", kind, identifier or "-", result)
    return result


# -- handlers: (runtime, payload, now, scheduled_at) -> result label ------------------------------------


def _while_task_open(kind: str) -> Handler:
    """Reminder and overdue: re-read the Task and act only while it is still open."""

    def handle(rt: ServiceRuntime, payload: dict[str, Any], now: datetime, scheduled_at: str) -> str:
        task = _read_task(rt, payload)
        if task is None:
            return "task-missing"
        if task.get("status") in CLOSED_TASK_STATUSES:
            return "skipped-closed"
        return _plan_and_execute(rt, kind, payload, task, now)

    return handle


def _recurrence(rt: ServiceRuntime, payload: dict[str, Any], now: datetime, scheduled_at: str) -> str:
    ended = series_end_reason(rt, payload, now, scheduled_at)
    if ended:
        log.info("recurring series of %s ended: %s", payload.get("group", "-"), ended)
        return f"ended-{ended}"
    task = _read_task(rt, payload) if payload.get("task_identifier") else None
    return _plan_and_execute(rt, "recurrence", payload, task, now)


def _delivery(rt: ServiceRuntime, payload: dict[str, Any], now: datetime, scheduled_at: str) -> str:
    """Re-run a deferred Deliver (quiet hours, rate limit, transient failure) through the executor."""
    raw = payload.get("deliver", payload)
    deliver = deliver_from_payload(payload)
    closed = _closed_task_of(rt, deliver.communication)
    if closed is not None:
        # The message is about a task that was completed / cancelled while it waited (quiet hours, rate
        # limit, retry): sending "please complete ..." now would be wrong. Recorded as not-done.
        reason = f"not sent: its task {closed[0]} was {closed[1]} while the message waited"
        rt.executor.withdraw_delivery(dict(raw), reason)
        return "skipped-closed"
    rt.executor.execute(_single_action_plan(payload, deliver, now))
    return "executed"


def _closed_task_of(rt: ServiceRuntime, communication: str) -> tuple[str, str] | None:
    """(task identifier, status) when the Communication is basedOn one of our Tasks that is closed."""
    comm = rt.target.find_by_identifier("Communication", communication)
    system = rt.settings.fhir.identifier_system
    for ref in (comm or {}).get("basedOn") or []:
        ident = ref.get("identifier") or {}
        if ref.get("type") == "Task" and ident.get("system") == system and ident.get("value"):
            task = rt.target.find_by_identifier("Task", ident["value"])
            if task is not None and task.get("status") in CLOSED_TASK_STATUSES:
                return ident["value"], str(task["status"])
    return None


HANDLERS: dict[str, Handler] = {
    "reminder": _while_task_open("reminder"),
    "overdue": _while_task_open("overdue"),
    "recurrence": _recurrence,
    "delivery": _delivery,
}


# -- helpers ------------------------------------------------------------------------------------------


def series_end_reason(rt: ServiceRuntime, payload: dict[str, Any], now: datetime, scheduled_at: str = "") -> str | None:
    """Why a recurring series must not create its next occurrence, or None to go on.

    end-reached (count / until), task-cancelled (the previous occurrence was cancelled: workflow completed
    or discharge), workflow-completed (a completes_workflow Task of the group is completed), discharged.
    ``payload["occurrence"]`` is the engine's 0-based number of the occurrence about to be created
    (0 = the original trigger; ``count`` counts them all), at ``occurrence_at``.
    """
    rule = _recurrence_rule(rt, payload)
    occurrence = int(payload.get("occurrence", 0) or 0)
    when = payload.get("occurrence_at") or scheduled_at
    at = parse_instant(when) or now
    tz = rt.settings.clinic.timezone
    if rule is not None and occurrence and not within_series(rule, occurrence, at, tz):
        return "end-reached"
    if payload.get("task_identifier"):
        previous = _read_task(rt, payload)
        if previous is not None and previous.get("status") in SERIES_ENDING_STATUSES:
            return "task-cancelled"
    if payload.get("group") and _workflow_completed(rt, str(payload["group"])):
        return "workflow-completed"
    if payload.get("patient") and _flow_not_after_discharge(rt, payload) and _discharged(rt, str(payload["patient"])):
        return "discharged"
    return None


def _recurrence_rule(rt: ServiceRuntime, payload: dict[str, Any]) -> Recurring | None:
    """The series' rule: carried in the payload, else the flow action's as loaded now."""
    raw = payload.get("recurring")
    if raw is None:
        action = _flow_action(rt, payload.get("flow_id"), payload.get("action"), payload.get("action_index"))
        return action.recurring if action else None
    try:
        return recurring_from_dict(dict(raw))
    except (TypeError, ValueError) as exc:
        log.warning("recurrence rule of %s unusable: %s", payload.get("flow_id"), exc)
        return None


def _flow_action(rt: ServiceRuntime, flow_id: object, slug: object, index: object = None) -> Action | None:
    """The action by slug as the flows are loaded now, else (renamed since) by its index."""
    flow = rt.engine.flows.get(flow_id) if isinstance(flow_id, str) else None
    if flow is None:
        return None
    action = flow.action(slug) if isinstance(slug, str) and slug else None
    if action is None and isinstance(index, int) and 0 <= index < len(flow.actions):
        action = flow.actions[index]
    return action


def _workflow_completed(rt: ServiceRuntime, group: str) -> bool:
    system = rt.settings.fhir.identifier_system
    tasks = rt.target.search("Task", {"group-identifier": f"{system}|{group}", "status": "completed"})
    for task in tasks:
        if task.get("status") != "completed":
            continue
        made_by = parse_instantiates_uri(task.get("instantiatesUri"))
        action = _flow_action(rt, made_by.flow_id, made_by.action_slug) if made_by else None
        if action is not None and action.completes_workflow:
            return True
    return False


def _flow_not_after_discharge(rt: ServiceRuntime, payload: dict[str, Any]) -> bool:
    if "not_after" in payload:
        return payload["not_after"] == "patient.discharged"
    flow = rt.engine.flows.get(str(payload.get("flow_id")))
    return flow is not None and flow.stops_at_discharge


def _discharged(rt: ServiceRuntime, patient: str) -> bool:
    return DischargeMarkers(rt.redis, rt.keys).is_discharged(patient, rt.target.read)


def _read_task(rt: ServiceRuntime, payload: dict[str, Any]) -> dict[str, Any] | None:
    identifier = payload.get("task_identifier")
    return rt.target.find_by_identifier("Task", identifier) if identifier else None


def _plan_and_execute(
    rt: ServiceRuntime, kind: str, payload: dict[str, Any], task: dict[str, Any] | None, now: datetime
) -> str:
    discharged = bool(payload.get("patient")) and _discharged(rt, str(payload["patient"]))
    plan = rt.plan_followup(rt.engine, kind, payload, task, rt.context(), rt.settings, now, discharged=discharged)
    if not plan.actions:
        return "nothing-to-do"
    rt.executor.execute(plan)
    return "executed"


def _single_action_plan(payload: dict[str, Any], deliver: Deliver, now: datetime) -> Plan:
    """A Plan holding one Deliver, for the executor (a deferred delivery has no new trigger)."""
    event = ResourceEvent(
        subscription="scheduler",
        resource_type="Communication",
        resource_id=None,
        received_at=now.astimezone(UTC).isoformat(),
        source="replay",
    )
    trigger = TriggerEvent(
        trigger="scheduled.delivery",
        event=event,
        id=str(payload.get("trigger_id") or f"delivery|{deliver.identifier}"),
        patient=payload.get("patient"),  # the executor reads this patient's Consents for staff recipients too
    )
    run = FlowRun(
        flow_id=str(payload.get("flow_id", "")),
        flow_version=str(payload.get("flow_version", "")),
        group=str(payload.get("group", "")),
        ran=True,
        reason="deferred delivery due",
        actions=(deliver,),
    )
    return Plan(trigger=trigger, runs=(run,))


def _claim_run(rt: ServiceRuntime, identifier: str, scheduled_at: str) -> str | bool | None:
    """Run-once guard per (identifier, due time): the key when claimed, False when taken, None when unkeyed."""
    if not identifier:
        return None
    key = ScheduleKeys(rt.keys).ran(identifier, scheduled_at)
    return key if rt.redis.set(key, "1", nx=True, ex=_RAN_TTL_SECONDS) else False


def _count(rt: ServiceRuntime, kind: str, result: str) -> None:
    rt.metrics.inc("scheduled_jobs", kind=kind, result=result)
