"""Message templates: sandboxed Jinja2 over a fixed merge-field catalog (docs/merge-fields.md).

``SandboxedEnvironment`` blocks access to Python internals (``{{ ''.__class__ }}`` raises
SecurityError); ``StrictUndefined`` makes an unknown field an error. Rendering is bounded in steps,
sizes and output (engine/template_bounds.py), at load and at run time alike. Every template is rendered at
load against ``sample_catalog`` (same keys as a real catalog), so a typo fails at load. A real
catalog always carries every key: a value missing from the record is an empty string.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from jinja2 import TemplateError
from jinja2.sandbox import SandboxedEnvironment

from fhir_smartflow import defaults
from fhir_smartflow.config import Settings
from fhir_smartflow.engine.template_bounds import BoundedEnvironment, TemplateTooCostly, bounded_render
from fhir_smartflow.instants import parse_instant

Catalog = dict[str, dict[str, Any]]


class TemplateRenderError(ValueError):
    """A template that does not compile or render (unknown field, forbidden attribute, syntax)."""


def make_environment() -> SandboxedEnvironment:
    # Plain text messages (SMS, email text part, FHIR strings): no HTML autoescaping.
    return BoundedEnvironment(autoescape=False, keep_trailing_newline=False)


def compile_template(env: SandboxedEnvironment, source: str, name: str = "") -> Any:
    """``name`` (e.g. ``"missed-appointment-sms body"``) is quoted by every render error."""
    try:
        template = env.from_string(source)
    except TemplateError as exc:
        raise TemplateRenderError(_named(name, _describe(exc))) from None
    template.name = name or None
    return template


def render(template: Any, catalog: Mapping[str, Any]) -> str:
    name = template.name or ""
    try:
        return bounded_render(template, dict(catalog)).strip()
    except TemplateTooCostly as exc:
        raise TemplateRenderError(_named(name, f"too costly to render: {exc}")) from None
    except TemplateError as exc:
        raise TemplateRenderError(_named(name, _describe(exc))) from None
    except Exception as exc:  # e.g. a filter raising TypeError: still a template problem
        raise TemplateRenderError(_named(name, f"{type(exc).__name__}: {exc}")) from None


def _named(name: str, message: str) -> str:
    return f"template {name}: {message}" if name else message


def _describe(exc: TemplateError) -> str:
    line = getattr(exc, "lineno", None)
    where = f" (template line {line})" if line else ""
    return f"{exc.message or exc}{where}"


# --- the catalog -----------------------------------------------------------------------------------


def _human_datetime(instant: datetime, zone: ZoneInfo) -> tuple[str, str, str]:
    local = instant.astimezone(zone)
    date_text = f"{local:%A}, {local:%B} {local.day}, {local.year}"
    hour = local.hour % 12 or 12
    time_text = f"{hour}:{local:%M} {'AM' if local.hour < 12 else 'PM'} {local.tzname()}"
    return f"{date_text} at {time_text}", date_text, time_text


def _official_name(patient: Mapping[str, Any]) -> Mapping[str, Any]:
    names = patient.get("name") or []
    for use in ("official", "usual", None):
        for name in names:
            if use is None or name.get("use") == use:
                return name
    return {}


def _display_name(resource: Mapping[str, Any] | None) -> str:
    if not resource:
        return ""
    name = _official_name(resource)
    if name.get("text"):
        return str(name["text"])
    parts = [*(name.get("prefix") or []), *(name.get("given") or []), name.get("family") or ""]
    return " ".join(p for p in parts if p)


def _is_mrn(identifier: Mapping[str, Any], system: str, type_code: str) -> bool:
    """The clinic's MRN: its configured ``Identifier.system`` when set, else an identifier typed
    ``type_code`` (``code`` or ``system|code``, v2-0203 ``MR`` by default)."""
    if system:
        return identifier.get("system") == system
    want_system, _, want_code = type_code.rpartition("|")
    return any(
        c.get("code") == want_code and (not want_system or c.get("system") == want_system)
        for c in (identifier.get("type") or {}).get("coding") or []
    )


def patient_fields(
    patient: Mapping[str, Any] | None, mrn_system: str = "", mrn_type: str = defaults.MRN_TYPE
) -> dict[str, str]:
    patient = patient or {}
    name = _official_name(patient)
    first = (name.get("given") or [""])[0]
    last = name.get("family") or ""
    preferred = next(
        (n["given"][0] for n in patient.get("name") or [] if n.get("use") == "nickname" and n.get("given")), first
    )
    mrn = next(
        (str(i.get("value", "")) for i in patient.get("identifier") or [] if _is_mrn(i, mrn_system, mrn_type)), ""
    )
    telecoms = [t for t in patient.get("telecom") or [] if t.get("system") == "phone" and t.get("value")]
    mobile = next((t for t in telecoms if t.get("use") == "mobile"), telecoms[0] if telecoms else {})
    return {
        "first_name": first,
        "last_name": last,
        "full_name": " ".join(p for p in (first, last) if p),
        "preferred_name": preferred,
        "birth_date": patient.get("birthDate", ""),
        "mrn": mrn,
        "phone": mobile.get("value", ""),
    }


def _participant_display(appointment: Mapping[str, Any], prefixes: tuple[str, ...]) -> str:
    for participant in appointment.get("participant") or []:
        actor = participant.get("actor") or {}
        if str(actor.get("reference") or "").startswith(prefixes) and actor.get("display"):
            return str(actor["display"])
    return ""


def appointment_fields(
    appointment: Mapping[str, Any] | None,
    zone: ZoneInfo,
    *,
    practitioner: Mapping[str, Any] | None = None,
    location: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The appointment's fields; clinician and location come from the referenced Practitioner and Location
    (read or contained) and fall back to the participant's ``display``."""
    appointment = appointment or {}
    fields = {"start": "", "date": "", "time": "", "location": "", "clinician": ""}
    start = parse_instant(appointment.get("start"))
    if start:
        fields["start"], fields["date"], fields["time"] = _human_datetime(start, zone)
    fields["location"] = str((location or {}).get("name") or "") or _participant_display(appointment, ("Location/",))
    fields["clinician"] = _display_name(practitioner) or _participant_display(
        appointment, ("Practitioner/", "PractitionerRole/", "#")
    )
    return fields


def build_catalog(
    settings: Settings,
    *,
    patient: Mapping[str, Any] | None = None,
    appointment: Mapping[str, Any] | None = None,
    payer: Mapping[str, Any] | None = None,
    practitioner: Mapping[str, Any] | None = None,
    location: Mapping[str, Any] | None = None,
    questionnaire: Mapping[str, Any] | None = None,
    questionnaire_url: str = "",
    form_link: str = "",
    due: datetime | None = None,
    due_date_only: bool = False,
) -> Catalog:
    """The merge-field values for one message (every key always present). ``due_date_only``: the due's
    time of day is the clinic's default for a date without a time, so texts show the date alone."""
    zone = ZoneInfo(settings.clinic.timezone)
    clinic = settings.clinic
    appointment_values = appointment_fields(appointment, zone, practitioner=practitioner, location=location)
    clinician = appointment_values["clinician"]
    form_title = (questionnaire or {}).get("title") or (questionnaire or {}).get("name") or ""
    if not form_title and questionnaire_url:
        form_title = questionnaire_url.rstrip("/").rsplit("/", 1)[-1].replace("-", " ")
    return {
        "patient": patient_fields(patient, clinic.mrn_system, clinic.mrn_type),
        "appointment": appointment_values,
        "insurance": {"name": (payer or {}).get("name", "")},
        "form": {"title": form_title, "link": form_link},
        "clinic": {"name": settings.clinic.name, "phone": settings.clinic.phone},
        "task": {"due": _human_datetime(due, zone)[1 if due_date_only else 0] if due else ""},
        "clinician": {"name": clinician},
    }


def sample_catalog(settings: Settings) -> Catalog:
    """A realistic catalog used to test-render every template at load."""
    return build_catalog(
        settings,
        patient={
            "resourceType": "Patient",
            "name": [{"use": "official", "family": "Rivera", "given": ["Alex"]}],
            "birthDate": "1990-04-12",
            "identifier": [{"type": {"coding": [{"code": "MR"}]}, "value": "MRN-0001"}],
            "telecom": [{"system": "phone", "value": "+15555550100", "use": "mobile"}],
        },
        appointment={
            "resourceType": "Appointment",
            "start": "2026-03-09T14:30:00Z",
            "participant": [
                {"actor": {"reference": "Location/1", "display": "Main Street Clinic"}},
                {"actor": {"reference": "Practitioner/1", "display": "Dr. Jordan Lee"}},
            ],
        },
        payer={"resourceType": "Organization", "name": "Acme Health Plan"},
        questionnaire={"resourceType": "Questionnaire", "title": "Intake questionnaire"},
        form_link="https://portal.example.org/forms/intake",
        due=datetime(2026, 3, 12, 13, 0, tzinfo=UTC),
    )


CATALOG_FIELDS: Sequence[str] = (
    "patient.first_name",
    "patient.last_name",
    "patient.full_name",
    "patient.preferred_name",
    "patient.birth_date",
    "patient.mrn",
    "patient.phone",
    "appointment.start",
    "appointment.date",
    "appointment.time",
    "appointment.location",
    "appointment.clinician",
    "insurance.name",
    "form.title",
    "form.link",
    "clinic.name",
    "clinic.phone",
    "task.due",
    "clinician.name",
)
