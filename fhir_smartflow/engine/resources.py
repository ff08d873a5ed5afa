"""Pure builders of the FHIR R4 resources the planner writes, and their validation.

Every code written here is listed, with its display and the published content it was checked against,
in docs/terminology.md (tests/test_terminology.py pins that table to these constants):
- Task.code for forms: SDC ``complete-questionnaire`` in ``http://hl7.org/fhir/uv/sdc/CodeSystem/temp``;
  its input type ``questionnaire`` (same system) with ``valueCanonical``.
- Communication.medium: the channel's ``Medium`` (its ``ChannelSpec``, fhir_smartflow/channels.py), codes
  of ``http://terminology.hl7.org/CodeSystem/v3-ParticipationMode``; ``medium.text`` is the channel's name.
- Communication.category: ``COMMUNICATION_CATEGORIES`` (communication-category).
- DocumentReference.type: LOINC document codes (``NOTE_TYPES``); category: US Core ``clinical-note``.
- Flag.category: flag-category ``clinical`` (a prompt to review the patient's record).
- Flag: who should see a record prompt is recorded in the extension ``ALLOWED_AUDIENCE_URL`` (its
  StructureDefinition: ``definitions.allowed_audience``): one ``valueCodeableConcept`` per role
  (the PractitionerRole code from ``[roles]``) and one ``valueReference`` per practitioner. The extension
  names the audience; servers do not enforce it. A Flag with an audience also carries the confidentiality
  label ``R`` (restricted) in ``meta.security``, which servers with label-based access control do enforce.
Every builder returns plain JSON-ready dicts; ``validate_resource`` checks them with fhir.resources R4B.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from typing import Any

from fhir_smartflow.channels import PARTICIPATION_MODE as PARTICIPATION_MODE  # with the other code systems
from fhir_smartflow.channels import Medium

SDC_TEMP = "http://hl7.org/fhir/uv/sdc/CodeSystem/temp"
SDC_CODES: dict[str, str] = {"complete-questionnaire": "Complete Questionnaire", "questionnaire": "Questionnaire"}
COMMUNICATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/communication-category"
COMMUNICATION_CATEGORIES: dict[str, str] = {
    "alert": "Alert",
    "notification": "Notification",
    "reminder": "Reminder",
    "instruction": "Instruction",
}
LOINC = "http://loinc.org"
DOCUMENT_CATEGORY = "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category"
DOCUMENT_CATEGORY_CODE = ("clinical-note", "Clinical Note")
FLAG_CATEGORY = "http://terminology.hl7.org/CodeSystem/flag-category"
FLAG_CATEGORY_CODE = ("clinical", "Clinical")
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
RESTRICTED = ("R", "restricted")
# The project's canonical base (also that of its SubscriptionTopics, fhir/backport.py).
CANONICAL_BASE = "http://fhir-smartflow.example/"
ALLOWED_AUDIENCE_URL = CANONICAL_BASE + "StructureDefinition/allowed-audience"
# The URL Flags carried before the extension had a canonical one: still read (openemr/target.py).
LEGACY_ALLOWED_AUDIENCE_URL = "urn:fhir-smartflow:extension:allowed-audience"
ALLOWED_AUDIENCE_URLS = (ALLOWED_AUDIENCE_URL, LEGACY_ALLOWED_AUDIENCE_URL)

NOTE_TYPES: dict[str, tuple[str, str]] = {
    "progress-note": ("11506-3", "Progress note"),
    "consult-note": ("11488-4", "Consult note"),
    "history-and-physical": ("34117-2", "History and physical note"),
    "discharge-summary": ("18842-5", "Discharge summary"),
    "procedure-note": ("28570-0", "Procedure note"),
}


def _coding(system: str, code: str, displays: dict[str, str]) -> dict[str, str]:
    """A Coding of one of our fixed codes; an unknown code is a programming error (KeyError)."""
    return {"system": system, "code": code, "display": displays[code]}


def _pair(system: str, code_display: tuple[str, str]) -> dict[str, str]:
    return {"system": system, "code": code_display[0], "display": code_display[1]}


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
            "coding": [_coding(SDC_TEMP, "complete-questionnaire", SDC_CODES)],
            "text": code_text or "Complete questionnaire",
        }
        task["input"] = [
            {"type": {"coding": [_coding(SDC_TEMP, "questionnaire", SDC_CODES)]}, "valueCanonical": questionnaire}
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
        "category": [{"coding": [_coding(COMMUNICATION_CATEGORY, category, COMMUNICATION_CATEGORIES)]}],
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
        "category": [{"coding": [_pair(DOCUMENT_CATEGORY, DOCUMENT_CATEGORY_CODE)]}],
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
    """An active Flag (record prompt); with an audience, that audience in extensions and the confidentiality
    label restricted (only label-based access control keeps others from reading it)."""
    period: dict[str, str] = {"start": start}
    if end:
        period["end"] = end
    flag: dict[str, Any] = {
        "resourceType": "Flag",
        "identifier": [identifier(identifier_system, identifier_value)],
        "status": "active",
        "category": [{"coding": [_pair(FLAG_CATEGORY, FLAG_CATEGORY_CODE)]}],
        "code": {"text": text},
        "subject": reference(subject),
        "period": period,
        "author": reference(author),
    }
    audience = [{"url": ALLOWED_AUDIENCE_URL, "valueCodeableConcept": dict(c)} for c in roles]
    audience += [{"url": ALLOWED_AUDIENCE_URL, "valueReference": reference(p)} for p in practitioners]
    if audience:
        flag["extension"] = audience
        flag["meta"] = {"security": [_pair(CONFIDENTIALITY, RESTRICTED)]}
    return flag
