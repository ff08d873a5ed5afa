"""The in-EHR staff message that tells an action's owner one of its deliveries failed (``notify_on_failure``).

A pure builder: the executor writes the result like any other resource (conditional create on the
deterministic identifier ``<delivery identifier>/failure-notice``, with its Provenance), so a rerun, a
redelivered notification or a replayed job finds the notice instead of writing a second one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fhir_smartflow.channels import ONLINE_WRITTEN, STAFF_MESSAGE
from fhir_smartflow.delivery.outcome import DeliveryOutcome
from fhir_smartflow.engine.plan import Deliver, WriteResource
from fhir_smartflow.engine.resources import build_communication
from fhir_smartflow.instants import format_instant

NOTICE_SUFFIX = "/failure-notice"
TOPIC = "Message not delivered"


def notice_identifier(delivery_identifier: str) -> str:
    return delivery_identifier + NOTICE_SUFFIX


def failure_notice(
    deliver: Deliver,
    outcome: DeliveryOutcome,
    communication: dict[str, Any] | None,
    *,
    identifier_system: str,
    device_id: str,
    patient: str | None,
    flow_id: str,
    now: datetime,
) -> WriteResource:
    """A completed ``staff-message`` Communication to ``deliver.owner``, ``about`` the undelivered
    Communication. Not ``basedOn`` that one's Task: write-back targets that show a Task's messages through
    the Task alone (OpenEMR's) would then never show this one, and the Task does not say the message failed."""
    ident = notice_identifier(deliver.identifier)
    failed_ref = f"Communication/{communication['id']}" if communication and communication.get("id") else None
    text = (
        f"A {deliver.channel} message to {deliver.recipient} could not be delivered: "
        f"{outcome.reason or 'not delivered'}. Flow {flow_id}, delivery {deliver.identifier}."
    )
    resource = build_communication(
        identifier_system=identifier_system,
        identifier_value=ident,
        method=STAFF_MESSAGE,
        medium=ONLINE_WRITTEN,
        text=text,
        sender=f"Device/{device_id}",
        status="completed",
        category="alert",
        recipients=deliver.owner,
        subject=patient,
        about=failed_ref,
        sent=format_instant(now),
        topic=TOPIC,
    )
    return WriteResource("Communication", ident, resource, deliver.action)
