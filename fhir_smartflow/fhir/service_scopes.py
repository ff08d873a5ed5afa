"""The scopes the service needs on the FHIR server: what it reads and writes there, and why.

``service_uses(engine, settings)`` lists every FHIR interaction the service performs with the loaded flows
and this configuration; ``needed_scopes`` turns them into ``system/`` scopes (fhir/scopes.py). With
``[fhir] scopes = ""`` (the default) they are what the client-credentials and SMART backend token requests
ask for, written in the syntax the server knows (``choose_scope_syntax``); ``doctor`` compares them with
what the server granted. Keep this list true to the code paths named in each ``why``.

* Reads (``rs``): the planning context (runctx.py, anchors.py: patient, appointments, encounters,
  coverage and payer, clinicians, roles, questionnaires), the trigger resources the mappings watch
  (``Engine.resource_types()`` or ``[poll] types``: notifications' focus, gap recovery, the poller), and
  what the executor reads through the write-back target (consents, recipients, Tasks, Communications).
* Writes (``[fhir] writeback = "fhir"``): Task and Communication created and updated, DocumentReference,
  Flag and Provenance created, the service's Device created; without conditional create the writer
  searches by identifier first (``s``). ``writeback = "openemr"`` writes nothing to the FHIR server.
* Subscriptions (``[[subscriptions]]`` configured): ``subscriptions sync`` searches, reads, creates and
  updates Subscriptions, reads SubscriptionTopics; gap recovery calls ``Subscription/$events``.
"""

from __future__ import annotations

from dataclasses import dataclass

from fhir_smartflow.config import Settings
from fhir_smartflow.engine.model import Engine
from fhir_smartflow.fhir.scopes import ResourceScope, Scopes
from fhir_smartflow.refs import parse_reference

SYSTEM = "system"


@dataclass(frozen=True)
class Use:
    """One resource type the service touches: the SMART letters it needs and the code path that does."""

    resource_type: str
    letters: str
    why: str


CONTEXT_READS = (
    Use("Patient", "rs", "the trigger's patient: merge fields, contact details, discharge state"),
    Use("Appointment", "rs", "the next booked appointment (merge fields, due anchors)"),
    Use("Encounter", "rs", "discharge and encounter due anchors"),
    Use("Coverage", "rs", "the primary coverage (insurance merge fields, coverage anchor)"),
    Use("Organization", "rs", "the payer of the primary coverage"),
    Use("Practitioner", "rs", "the appointment's clinician"),
    Use("Location", "rs", "the appointment's location (merge fields)"),
    Use("PractitionerRole", "rs", "the staff holding a role (owners and recipients)"),
    Use("Questionnaire", "rs", "the form's title"),
    Use("QuestionnaireResponse", "rs", "submitted forms"),
)
TARGET_READS = (
    Use("Consent", "rs", "channel opt-outs checked before each delivery"),
    Use("Task", "rs", "follow-ups, cancelling a workflow's open Tasks"),
    Use("Communication", "rs", "the Communication a delivery result is recorded on"),
)
FHIR_WRITES = (
    Use("Task", "cu", "send-form, staff-task and staff-message Tasks; status changes"),
    Use("Communication", "cu", "messages and their delivery results"),
    Use("DocumentReference", "c", "patient-note actions"),
    Use("Flag", "c", "record-prompt actions"),
    Use("Provenance", "c", "one per written resource"),
    Use("Device", "crs", "the service's own Device, the author of what it writes (created once, found by doctor)"),
)
SUBSCRIPTION_USES = (
    Use("Subscription", "crus", "subscriptions sync (find, create, update, read back), gap recovery ($events)"),
    Use("SubscriptionTopic", "rs", "subscriptions sync: whether the server has topic-based subscriptions"),
)
WRITERS = {"fhir"}  # [fhir] writeback values that write to the FHIR server


def service_uses(engine: Engine, settings: Settings) -> list[Use]:
    """Every FHIR use of the service with these flows and settings (a type may appear more than once)."""
    uses = list(CONTEXT_READS)
    watched = settings.poll.types or sorted(engine.resource_types())
    uses += [Use(rtype, "rs", "a trigger resource the mappings watch") for rtype in watched]
    if settings.fhir.writeback in WRITERS:
        uses += TARGET_READS
        uses += [Use(rtype, "rs", "a message recipient or Task owner named in the flows") for rtype in _named(engine)]
        uses += FHIR_WRITES
        if not settings.fhir.conditional_create:
            uses += [Use(u.resource_type, "s", "search by identifier before creating") for u in FHIR_WRITES]
    if settings.subscriptions:
        uses += SUBSCRIPTION_USES
    return uses


def needed_scopes(engine: Engine, settings: Settings) -> Scopes:
    """The ``system/`` scopes covering ``service_uses``, one per resource type."""
    return Scopes(
        tuple(ResourceScope(SYSTEM, u.resource_type, frozenset(u.letters)) for u in service_uses(engine, settings))
    ).merged()


def _named(engine: Engine) -> set[str]:
    """Resource types of the references the flows and templates name (owners, template recipients)."""
    refs = [a.owner.value for f in engine.flows.values() for a in f.actions if a.owner and a.owner.kind != "role"]
    refs += [r for t in engine.templates.values() for r in (*t.recipients.practitioners, *t.recipients.groups)]
    return {parsed.resource_type for ref in refs if (parsed := parse_reference(ref)) is not None}
