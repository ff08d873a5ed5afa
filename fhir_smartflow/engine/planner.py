"""The planner: one trigger event → a Plan. Pure: reads only through the ContextSource, writes nothing.

Same engine + trigger event + context + ``now`` → an identical Plan (``==``): every identifier is
derived from flow id + version + trigger event + action, and resource times come from the event
(its meta.lastUpdated), not the clock. ``now`` only drops reminders that would already be past.

Built-in lifecycle, besides the flows on the trigger:
- ``task.completed`` of a Task whose action has ``completes_workflow`` → CancelGroup(its group,
  keep = that task);
- ``patient.discharged`` → CancelGroup(patient, flows with ``not_after``); and such flows never
  start for a discharged patient (``discharged=True``).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from fhir_smartflow.config import Settings
from fhir_smartflow.engine.actions import plan_action
from fhir_smartflow.engine.anchors import AnchorMissing, event_time
from fhir_smartflow.engine.fhirpath import FhirPathError, evaluate, is_true
from fhir_smartflow.engine.followups import plan_followup
from fhir_smartflow.engine.identifiers import digest, group_id, parse_instantiates_uri
from fhir_smartflow.engine.interfaces import ContextSource
from fhir_smartflow.engine.model import Engine, Flow
from fhir_smartflow.engine.plan import CancelGroup, FlowRun, Plan, PlanAction, TriggerEvent
from fhir_smartflow.engine.runctx import RunContext, RunProblem
from fhir_smartflow.engine.templating import TemplateRenderError

__all__ = ["plan", "plan_followup"]
log = logging.getLogger(__name__)

DISCHARGE_RUN = "lifecycle-discharge"
COMPLETION_RUN = "lifecycle-task-completed"


def plan(
    engine: Engine,
    trigger: TriggerEvent,
    context: ContextSource,
    settings: Settings,
    now: datetime,
    discharged: bool = False,
) -> Plan:
    runs: list[FlowRun] = []
    if trigger.trigger == "task.completed":
        runs += _completion_runs(engine, trigger, settings)
    if trigger.trigger == "patient.discharged":
        runs += _discharge_runs(engine, trigger)
    for flow in engine.flows_for(trigger.trigger):
        runs.append(plan_flow(engine, flow, trigger, context, settings, now, discharged))
    return Plan(trigger, tuple(runs))


def plan_flow(
    engine: Engine,
    flow: Flow,
    trigger: TriggerEvent,
    context: ContextSource,
    settings: Settings,
    now: datetime,
    discharged: bool = False,
) -> FlowRun:
    group = group_id(flow.id, flow.version, trigger.id)

    def skipped(reason: str) -> FlowRun:
        return FlowRun(flow.id, flow.version, group, ran=False, reason=reason)

    if not flow.enabled:
        return skipped("flow disabled")
    if flow.stops_at_discharge and discharged:
        return skipped("patient discharged: the flow has not_after = patient.discharged")
    run = RunContext(engine, settings, flow, trigger, context, now)
    if flow.condition:
        try:
            env = {"patient": run.patient()} if trigger.patient else {}
            result = evaluate(engine.path(flow.condition), trigger.event.resource, env)
        except FhirPathError as exc:
            return skipped(f"condition could not be evaluated ({exc}): {flow.condition}")
        if not is_true(result):
            return skipped(f"condition false: {flow.condition}")
    try:
        event_at = event_time(trigger)
        actions: list[PlanAction] = []
        for action in flow.actions:
            actions += plan_action(run, action, event_at)
    except (RunProblem, AnchorMissing) as exc:
        return skipped(str(exc))
    except TemplateRenderError as exc:
        return skipped(f"a template failed to render: {exc}")
    return FlowRun(
        flow.id,
        flow.version,
        group,
        ran=True,
        reason=f"trigger {trigger.trigger}",
        actions=tuple(actions),
        notes=tuple(run.notes),
    )


def _completion_runs(engine: Engine, trigger: TriggerEvent, settings: Settings) -> list[FlowRun]:
    task: dict[str, Any] = trigger.event.resource or {}
    parsed = parse_instantiates_uri(task.get("instantiatesUri"))
    if parsed is None:
        return []
    flow_id, version, slug = parsed
    flow = engine.flows.get(flow_id)
    action = flow.action(slug) if flow else None
    if flow is None or action is None or not action.completes_workflow:
        return []
    system = settings.fhir.identifier_system
    own = next((i.get("value") for i in task.get("identifier") or [] if i.get("system") == system), None)
    group = (task.get("groupIdentifier") or {}).get("value")
    if not own or not group:
        return []
    cancel = CancelGroup(
        reason=f"workflow completed: task {own} of flow {flow_id} ({action.name}) was completed",
        identifier=f"{COMPLETION_RUN}/cancel/{digest(COMPLETION_RUN, trigger.id, group)}",
        group=group,
        keep=own,
    )
    return [
        FlowRun(flow_id, version, group, ran=True, reason=f"{action.name!r} completes the workflow", actions=(cancel,))
    ]


def _discharge_runs(engine: Engine, trigger: TriggerEvent) -> list[FlowRun]:
    flows = tuple(sorted(f.id for f in engine.flows.values() if f.stops_at_discharge))
    group = group_id(DISCHARGE_RUN, "1", trigger.id)
    if not flows or not trigger.patient:
        return []
    cancel = CancelGroup(
        reason="patient discharged",
        identifier=f"{DISCHARGE_RUN}/cancel/{digest(DISCHARGE_RUN, trigger.id)}",
        patient=trigger.patient,
        flows=flows,
    )
    return [
        FlowRun(
            DISCHARGE_RUN,
            "1",
            group,
            ran=True,
            reason=f"patient discharged: cancel open tasks of {', '.join(flows)}",
            actions=(cancel,),
        )
    ]
