"""One flow run's context: the flow, the trigger, identifiers, and the record fetched lazily.

Context resources (Patient, Appointment, Coverage + payer Organization, the appointment's Practitioner /
PractitionerRole and Location, Questionnaire) are read through the ContextSource only when a template of
the run uses them, once per run; an appointment's contained participants (``#id``) need no read.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from jinja2 import meta, nodes

from fhir_smartflow.config import Settings
from fhir_smartflow.engine.anchors import (
    AnchorMissing,
    event_time,
    find_anchor,
    primary_coverage,
)
from fhir_smartflow.engine.due import clinic_holidays, compute_due
from fhir_smartflow.engine.identifiers import group_id, instantiates_uri, resource_id
from fhir_smartflow.engine.interfaces import ContextSource
from fhir_smartflow.engine.model import Action, Due, Engine, Flow, Template
from fhir_smartflow.engine.plan import TriggerEvent
from fhir_smartflow.engine.templating import build_catalog, make_environment, render
from fhir_smartflow.instants import parse_instant


class RunProblem(Exception):
    """The run cannot be planned (no patient, missing anchor, ...): recorded as the run's reason."""


@functools.lru_cache(maxsize=512)
def _roots(source: str) -> frozenset[str]:
    """Top-level merge-field names a template text uses (patient, insurance, ...)."""
    return frozenset(meta.find_undeclared_variables(make_environment().parse(source)))


@functools.lru_cache(maxsize=512)
def _fields(source: str) -> frozenset[str]:
    """``root.field`` names a template text reads (``appointment.location``, ...)."""
    tree = make_environment().parse(source)
    return frozenset(f"{n.node.name}.{n.attr}" for n in tree.find_all(nodes.Getattr) if isinstance(n.node, nodes.Name))


@dataclass
class RunContext:
    engine: Engine
    settings: Settings
    flow: Flow
    trigger: TriggerEvent
    context: ContextSource
    now: datetime
    occurrence: int = 0
    _cache: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what the run left out and why (FlowRun.notes)

    # --- identity ---------------------------------------------------------------------------------

    @property
    def system(self) -> str:
        return self.settings.fhir.identifier_system

    @property
    def device(self) -> str:
        return f"Device/{self.settings.fhir.device_id}"

    @property
    def group(self) -> str:
        return group_id(self.flow.id, self.flow.version, self.trigger.id)

    @property
    def focus(self) -> str | None:
        return self.trigger.event.reference

    def rid(self, action: Action, kind: str, method: str = "", occurrence: int | str | None = None) -> str:
        occ = self.occurrence if occurrence is None else occurrence
        return resource_id(
            self.flow.id, self.flow.version, self.trigger.id, action.index, action.slug, kind, method, occ
        )

    def instantiates(self, action: Action) -> str:
        return instantiates_uri(self.flow.id, self.flow.version, action.slug)

    def patient_ref(self) -> str:
        if not self.trigger.patient:
            raise RunProblem(f"no patient found on {self.trigger.event.reference or 'the trigger resource'}")
        return self.trigger.patient

    # --- due dates --------------------------------------------------------------------------------

    def due(self, spec: Due | None, action: Action, base: datetime | None = None) -> datetime | None:
        """The due instant of ``action``; ``base`` replaces the anchor (recurring occurrences)."""
        if spec is None:
            return None
        date_only = False
        if base is None:
            clinic = self.settings.clinic
            try:
                anchor = find_anchor(
                    spec.anchor, self.trigger, self.context, clinic.timezone, clinic.date_only_due_time
                )
            except AnchorMissing as exc:
                raise RunProblem(f"action {action.name!r}: due anchor {spec.anchor!r} not found: {exc}") from None
            base, date_only = anchor.at, anchor.date_only
        due = compute_due(
            base, spec.amount, spec.unit, spec.direction, self.settings.clinic.timezone, action.weekend, self.holidays()
        )
        if date_only and spec.unit in ("days", "weeks"):
            self.mark_date_only(due)
        return due

    def mark_date_only(self, due: datetime) -> None:
        """``due``'s time of day is the clinic's default for a date without a time, not the record's:
        texts show the date alone (follow-ups get this from their payload's ``due_date_only``)."""
        self._cache.setdefault("date_only_dues", set()).add(due)

    def is_date_only(self, due: datetime | None) -> bool:
        return due is not None and due in self._cache.get("date_only_dues", ())

    def holidays(self) -> Any:
        if "holidays" not in self._cache:
            clinic = self.settings.clinic
            self._cache["holidays"] = clinic_holidays(clinic.holidays_country, clinic.holidays_subdivision)
        return self._cache["holidays"]

    # --- the record -------------------------------------------------------------------------------

    def _read(self, reference: str | None) -> dict[str, Any] | None:
        if not reference:
            return None
        key = f"read:{reference}"
        if key not in self._cache:
            resource = self.trigger.event.resource if reference == self.focus else None
            self._cache[key] = resource or self.context.read(reference)
        return self._cache[key]

    def patient(self) -> dict[str, Any] | None:
        return self._read(self.trigger.patient)

    def appointment(self) -> dict[str, Any] | None:
        if self.trigger.event.resource_type == "Appointment":
            return self._read(self.focus)  # follow-ups carry only the reference: read it
        if "appointment" not in self._cache:
            found: list[dict[str, Any]] = []
            if self.trigger.patient:
                found = self.context.search("Appointment", {"patient": self.trigger.patient, "status": "booked"})
            zone = ZoneInfo(self.settings.clinic.timezone)
            after = event_time(self.trigger)
            upcoming = [
                (start, a) for a in found if (start := parse_instant(a.get("start"), zone=zone)) and start >= after
            ]
            self._cache["appointment"] = min(upcoming, key=lambda pair: pair[0])[1] if upcoming else None
        return self._cache["appointment"]

    def payer(self) -> dict[str, Any] | None:
        if "payer" not in self._cache:
            coverages: list[dict[str, Any]] = []
            focus = self._read(self.focus) if self.trigger.event.resource_type == "Coverage" else None
            if focus:
                coverages.append(focus)
            elif self.trigger.patient:
                coverages = self.context.search("Coverage", {"beneficiary": self.trigger.patient, "status": "active"})
            primary = primary_coverage(coverages)
            payor = ((primary or {}).get("payor") or [{}])[0]
            payer = self._read(payor.get("reference")) if payor.get("reference") else None
            if payer is None and payor.get("display"):
                payer = {"name": payor["display"]}
            self._cache["payer"] = payer
        return self._cache["payer"]

    def _participant(self, types: tuple[str, ...]) -> dict[str, Any] | None:
        """The appointment's first participant actor of these types that resolves (read, or contained)."""
        appointment = self.appointment() or {}
        for participant in appointment.get("participant") or []:
            ref = str((participant.get("actor") or {}).get("reference") or "")
            if ref.startswith("#") or ref.split("/", 1)[0] in types:
                found = self._resolve(appointment, ref)
                if found is not None and found.get("resourceType") in types:
                    return found
        return None

    def _resolve(self, holder: dict[str, Any], reference: str) -> dict[str, Any] | None:
        """``reference`` from ``holder``: a contained resource (``#id``) or a read."""
        if reference.startswith("#"):
            return next((c for c in holder.get("contained") or [] if c.get("id") == reference[1:]), None)
        if "/" not in reference:
            return None
        return self._read(reference)

    def practitioner(self) -> dict[str, Any] | None:
        """The appointment's clinician: its Practitioner, or the Practitioner of its PractitionerRole."""
        found = self._participant(("Practitioner", "PractitionerRole"))
        if found is not None and found.get("resourceType") == "PractitionerRole":
            ref = str((found.get("practitioner") or {}).get("reference") or "")
            person = self._resolve(found, ref) if ref else None
            if person is None and ref.startswith("#"):  # a contained role's practitioner is the container's
                person = self._resolve(self.appointment() or {}, ref)
            display = (found.get("practitioner") or {}).get("display")
            return person or ({"name": [{"text": display}]} if display else None)
        return found

    def location(self) -> dict[str, Any] | None:
        return self._participant(("Location",))

    def questionnaire(self, canonical: str) -> dict[str, Any] | None:
        key = f"questionnaire:{canonical}"
        titled = self.engine.form_titles().get(canonical.split("|")[0]) if canonical else None
        if titled:  # the flow file names the form: the server need not have Questionnaire
            return {"resourceType": "Questionnaire", "title": titled}
        if key not in self._cache:
            found = self.context.search("Questionnaire", {"url": canonical.split("|")[0]}) if canonical else []
            self._cache[key] = found[0] if found else None
        return self._cache[key]

    def form_link(self, task_identifier: str) -> str:
        if self.settings.clinic.form_link:
            return self.settings.clinic.form_link.replace("{task}", quote(task_identifier, safe=""))
        portal = self.settings.clinic.portal_url.rstrip("/")
        if not portal:
            return "the patient portal"
        return f"{portal}/tasks?identifier={quote(task_identifier, safe='')}"

    # --- rendering --------------------------------------------------------------------------------

    def render(
        self, template: Template, part: str, *, form: str = "", task_identifier: str = "", due: datetime | None = None
    ) -> str:
        compiled = self.engine.renderers.get((template.id, part))
        if compiled is None:
            return ""
        source = {
            "subject": template.subject,
            "body": template.body,
            "prompt": template.prompt.text if template.prompt else "",
        }[part]
        used = _roots(source)
        appointment_fields = used & {"appointment", "clinician"}
        # The Practitioner and Location are read only for the fields that name them.
        fields = _fields(source)
        wants_clinician = "clinician" in used or "appointment.clinician" in fields
        wants_location = "appointment.location" in fields
        # Outside send-form, "the form" is the one the trigger is about (form.submitted's questionnaire).
        form = form or self.trigger.parameters.get("questionnaire", "")
        catalog = build_catalog(
            self.settings,
            patient=self.patient() if "patient" in used else None,
            appointment=self.appointment() if appointment_fields else None,
            payer=self.payer() if "insurance" in used else None,
            practitioner=self.practitioner() if wants_clinician else None,
            location=self.location() if wants_location else None,
            questionnaire=self.questionnaire(form) if form and "form" in used else None,
            questionnaire_url=form,
            form_link=self.form_link(task_identifier) if task_identifier and "form" in used else "",
            due=due,
            due_date_only=self.is_date_only(due),
        )
        return render(compiled, catalog)

    def role_concept(self, role: str) -> dict[str, Any]:
        """The role as a CodeableConcept: the PractitionerRole code from [roles], text = role name."""
        from fhir_smartflow.engine.resources import concept

        return concept(self.settings.roles[role], role)

    def role_members(self, role: str) -> list[str]:
        """PractitionerRole references holding ``role`` (for messages addressed to a role)."""
        key = f"role:{role}"
        if key not in self._cache:
            found = self.context.search("PractitionerRole", {"role": self.settings.roles[role], "active": "true"})
            self._cache[key] = sorted(f"PractitionerRole/{r['id']}" for r in found if r.get("id"))
        return self._cache[key]
