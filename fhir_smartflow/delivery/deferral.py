"""A deferred delivery as a follow-up: the ``Schedule`` that re-runs it, and the ``Deliver`` rebuilt from
its payload when it fires (payload keys: docs/internals.md, "Communications and deliveries")."""

from __future__ import annotations

from typing import Any

from fhir_smartflow.delivery.claims import rearmed_identifier
from fhir_smartflow.delivery.outcome import DeliveryOutcome
from fhir_smartflow.engine.plan import Deliver, FlowRun, Plan, Schedule

_REQUIRED = ("channel", "recipient", "body", "identifier", "communication")


def rearm_schedule(action: Deliver, outcome: DeliveryOutcome, plan: Plan, run: FlowRun) -> Schedule:
    """The delivery job for a deferred / retry outcome, due at its ``retry_at``."""
    assert outcome.retry_at is not None  # DeliveryClaims.settle fills it in
    return Schedule(
        at=outcome.retry_at,
        kind="delivery",
        identifier=rearmed_identifier(action.identifier, outcome.retry_at),
        payload=deliver_payload(action, plan, run),
        action=action.action,
    )


def deliver_payload(action: Deliver, plan: Plan, run: FlowRun) -> dict[str, Any]:
    """What a scheduled delivery job needs to rebuild the Deliver action; flow and group index it for
    cancellation (workflow completed, discharge)."""
    payload: dict[str, Any] = {
        "flow_id": run.flow_id,
        "flow_version": run.flow_version,
        "group": run.group,
        "channel": action.channel,
        "recipient": action.recipient,
        "body": action.body,
        "subject": action.subject,
        "identifier": action.identifier,
        "communication": action.communication,
        "patient": plan.trigger.patient,
        "trigger_id": plan.trigger.id,
    }
    if action.notify_on_failure:
        payload["notify_on_failure"] = True
        payload["owner"] = list(action.owner)
    return payload


def deliver_from_payload(payload: dict[str, Any]) -> Deliver:
    """The Deliver of a delivery job's payload (flat, or nested under ``deliver``)."""
    raw = payload.get("deliver", payload)
    missing = set(_REQUIRED) - set(raw)
    if missing:
        raise ValueError(f"delivery follow-up payload lacks {sorted(missing)}")
    return Deliver(
        **{k: raw[k] for k in _REQUIRED},
        subject=raw.get("subject"),
        action=raw.get("action", ""),
        notify_on_failure=bool(raw.get("notify_on_failure", False)),
        owner=tuple(raw.get("owner") or ()),
    )
