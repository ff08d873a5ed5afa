"""Pure builders of the FHIR R4 resources the planner writes, and their validation.

Codes (checked against the published code systems):
- Task.code for forms: SDC ``complete-questionnaire`` in ``http://hl7.org/fhir/uv/sdc/CodeSystem/temp``;
  its input type ``questionnaire`` (same system) with ``valueCanonical``.
- Communication.medium: the channel's ``Medium`` (its ``ChannelSpec``, fhir_smartflow/channels.py), codes
  of ``http://terminology.hl7.org/CodeSystem/v3-ParticipationMode`` for the built-ins — sms → MSGWRIT
  (messaging from a mobile device), email → EMAILWRIT, voice → PHONE, portal / staff-message → ONLINEWRIT
  (text submitted over a computer network), webhook → ELECTRONIC; ``medium.text`` is the channel's name.
- Communication.category: ``http://terminology.hl7.org/CodeSystem/communication-category``
  (notification, reminder, instruction, alert).
- DocumentReference.type: LOINC document codes (progress note 11506-3, consult note 11488-4,
  history and physical 34117-2, discharge summary 18842-5, procedure note 28570-0).
- Flag: who may see a record prompt is recorded in the extension ``ALLOWED_AUDIENCE_URL``: one
  ``valueCodeableConcept`` per role (the PractitionerRole code from ``[roles]``) and one
  ``valueReference`` per practitioner. Security labels were rejected: they are meant for
  confidentiality / sensitivity classes, not audience lists, and servers enforce them unpredictably.
Every builder returns plain JSON-ready dicts; ``validate_resource`` checks them with fhir.resources R4B.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from typing import Any

from fhir_smartflow.channels import PARTICIPATION_MODE as PARTICIPATION_MODE  # with the other code systems
from fhir_smartflow.channels import Medium

SDC_TEMP = "http://hl7.org/fhir/uv/sdc/CodeSystem/temp"
COMMUNICATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/communication-category"
LOINC = "http://loinc.org"
ALLOWED_AUDIENCE_URL = "urn:fhir-smartflow:extension:allowed-audience"

NOTE_TYPES: dict[str, tuple[str, str]] = {
    "progress-note": ("11506-3", "Progress note"),
    "consult-note": ("11488-4", "Consult note"),
    "history-and-physical": ("34117-2", "History and physical note"),
    "discharge-summary": ("18842-5", "Discharge summary"),
    "procedure-note": ("28570-0", "Procedure note"),
}


def identifier(system: str, value: str) -> dict[str, str]:
    return {"system": system, "value": value}


def reference(ref: str, display: str | None = None) -> dict[str, str]:
    out = {"reference": ref}
    if display:
        out["display"] = display
    return out


def identifier_reference(resource_type: str, system: str, value: str) -> dict[str, Any]:
    """A logical reference by business identifier (the target may not have a server id yet)."""
    return {"type": resource_type, "identifier": identifier(system, value)}


def coding_from(system_code: str, display: str | None = None) -> dict[str, str]:
    """``"system|code"`` → Coding."""
    system, _, code = system_code.partition("|")
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def concept(system_code: str, text: str | None = None) -> dict[str, Any]:
    """``"system|code"`` → CodeableConcept (``text``: our name for it, e.g. the role name)."""
    out: dict[str, Any] = {"coding": [coding_from(system_code)]}
    if text:
        out["text"] = text
    return out


def build_task(
    *,
    identifier_system: str,
    identifier_value: str,
    group: str,
    instantiates_uri: str,
    description: str,
    authored_on: str,
    requester: str,
    for_ref: str | None = None,
    focus: str | None = None,
    owner: str | None = None,
    performer_types: Sequence[dict[str, Any]] = (),
    due: str | None = None,
    questionnaire: str | None = None,
    code_text: str | None = None,
    status: str = "requested",
    intent: str = "order",
) -> dict[str, Any]:
    """A Task; with ``questionnaire`` it is an SDC complete-questionnaire task."""
    task: dict[str, Any] = {
        "resourceType": "Task",
        "identifier": [identifier(identifier_system, identifier_value)],
        "instantiatesUri": instantiates_uri,
        "groupIdentifier": identifier(identifier_system, group),
        "status": status,
        "intent": intent,
        "description": description,
        "authoredOn": authored_on,
        "lastModified": authored_on,
        "requester": reference(requester),
    }
    if questionnaire:
        task["code"] = {
            "coding": [{"system": SDC_TEMP, "code": "complete-questionnaire"}],
            "text": code_text or "Complete questionnaire",
        }
        task["input"] = [
            {"type": {"coding": [{"system": SDC_TEMP, "code": "questionnaire"}]}, "valueCanonical": questionnaire}
        ]
    elif code_text:
        task["code"] = {"text": code_text}
    if focus:
        task["focus"] = reference(focus)
    if for_ref:
        task["for"] = reference(for_ref)
    if owner:
        task["owner"] = reference(owner)
    if performer_types:
        task["performerType"] = [dict(c) for c in performer_types]
    if due:
        task["restriction"] = {"period": {"end": due}}
    return task


def build_communication(
    *,
    identifier_system: str,
    identifier_value: str,
    method: str,
    medium: Medium,
    text: str,
    sender: str,
    status: str,
    category: str = "notification",
    recipients: Iterable[str] = (),
    subject: str | None = None,
    based_on_task: str | None = None,
    about: str | None = None,
    sent: str | None = None,
    topic: str | None = None,
) -> dict[str, Any]:
    """A Communication over channel ``method`` (its ``medium``); ``based_on_task`` is the Task's business
    identifier value."""
    comm: dict[str, Any] = {
        "resourceType": "Communication",
        "identifier": [identifier(identifier_system, identifier_value)],
        "status": status,
        "category": [{"coding": [{"system": COMMUNICATION_CATEGORY, "code": category}]}],
        "medium": [
            {"coding": [{"system": medium.system, "code": medium.code, "display": medium.display}], "text": method}
        ],
        "sender": reference(sender),
        "payload": [{"contentString": text}],
    }
    recipient_refs = [reference(r) for r in recipients]
    if recipient_refs:
        comm["recipient"] = recipient_refs
    if subject:
        comm["subject"] = reference(subject)
    if topic:
        comm["topic"] = {"text": topic}
    if based_on_task:
        comm["basedOn"] = [identifier_reference("Task", identifier_system, based_on_task)]
    if about:
        comm["about"] = [reference(about)]
    if sent:
        comm["sent"] = sent
    return comm


def build_document_reference(
    *,
    identifier_system: str,
    identifier_value: str,
    note_type: str,
    text: str,
    title: str,
    subject: str,
    author: str,
    created: str,
    encounter: str | None = None,
    related: str | None = None,
) -> dict[str, Any]:
    """A preliminary text/plain note authored by the service Device."""
    code, display = NOTE_TYPES[note_type]
    context: dict[str, Any] = {"period": {"start": created}}
    if encounter:
        context["encounter"] = [reference(encounter)]
    if related:
        context["related"] = [reference(related)]
    return {
        "resourceType": "DocumentReference",
        "identifier": [identifier(identifier_system, identifier_value)],
        "status": "current",
        "docStatus": "preliminary",
        "type": {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display},
        "subject": reference(subject),
        "date": created,
        "author": [reference(author)],
        "description": title,
        "content": [
            {
                "attachment": {
                    "contentType": "text/plain; charset=utf-8",
                    "data": base64.b64encode(text.encode("utf-8")).decode("ascii"),
                    "title": title,
                    "creation": created,
                }
            }
        ],
        "context": context,
    }


def build_flag(
    *,
    identifier_system: str,
    identifier_value: str,
    text: str,
    subject: str,
    author: str,
    start: str,
    end: str | None = None,
    roles: Sequence[dict[str, Any]] = (),
    practitioners: Sequence[str] = (),
) -> dict[str, Any]:
    """An active Flag (record prompt) with its allowed audience in an extension."""
    period: dict[str, str] = {"start": start}
    if end:
        period["end"] = end
    flag: dict[str, Any] = {
        "resourceType": "Flag",
        "identifier": [identifier(identifier_system, identifier_value)],
        "status": "active",
        "code": {"text": text},
        "subject": reference(subject),
        "period": period,
        "author": reference(author),
    }
    audience = [{"url": ALLOWED_AUDIENCE_URL, "valueCodeableConcept": dict(c)} for c in roles]
    audience += [{"url": ALLOWED_AUDIENCE_URL, "valueReference": reference(p)} for p in practitioners]
    if audience:
        flag["extension"] = audience
    return flag
