"""Appointments from OpenEMR's Standard API, for servers whose FHIR API has no Appointment.

OpenEMR 7.0.0 development builds serve no FHIR Appointment (``GET /fhir/Appointment`` → 404), and no route
changes an appointment's status (the calendar does). ``GET /api/appointment`` lists every appointment with
the columns of src/Services/AppointmentService.php (``pc_eid``, ``pc_uuid``, ``puuid``, ``pc_apptstatus``,
``pc_eventDate``, ``pc_startTime``, ``pc_duration``, ``pc_time`` — NULL for appointments made through the
API). Each becomes the Appointment resource a FHIR server would answer, so the usual mappings
(mappings/appointment.toml) fire on status changes:

``pc_apptstatus`` is a code of the calendar's list ``apptstat`` (sql/database.sql: ``-`` none, ``*`` reminder
done, ``+`` chart pulled, ``x`` canceled, ``?`` no show, ``@`` arrived, ``~`` arrived late, ``!`` left without
visit, ``#`` insurance / financial issue, ``<`` in exam room, ``>`` checked out, ``$`` coding done, ``%``
canceled < 24h, plus the reminder codes ``AVM`` / ``SMS`` / ``EMAIL`` / ``CALL`` and ``^`` pending), mapped
to ``Appointment.status`` as src/Services/FHIR/FhirAppointmentService.php of current releases maps them.
The raw code is kept in an extension.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from fhir_smartflow.openemr.api import StandardApi

STATUS_CODE_URL = "urn:fhir-smartflow:openemr:pc_apptstatus"
CALENDAR_STATUS = {
    "-": "proposed",
    "#": "pending",
    "^": "pending",
    ">": "fulfilled",
    "$": "fulfilled",
    "AVM": "booked",
    "SMS": "booked",
    "EMAIL": "booked",
    "*": "booked",
    "%": "cancelled",
    "!": "cancelled",
    "x": "cancelled",
    "?": "noshow",
    "~": "arrived",
    "@": "arrived",
    "<": "checked-in",
    "+": "checked-in",
    "CALL": "waitlist",
}


def fhir_status(code: str) -> str:
    return CALENDAR_STATUS.get(code, "pending")


def as_fhir(record: dict[str, Any], zone: ZoneInfo) -> dict[str, Any] | None:
    """The FHIR Appointment of a Standard API record (None without a uuid or date)."""
    uuid, day = str(record.get("pc_uuid") or ""), str(record.get("pc_eventDate") or "")
    if not uuid or not day:
        return None
    start = datetime.fromisoformat(f"{day}T{record.get('pc_startTime') or '00:00:00'}").replace(tzinfo=zone)
    end = start + timedelta(seconds=int(str(record.get("pc_duration") or 0) or 0))
    code = str(record.get("pc_apptstatus") or "-")
    resource: dict[str, Any] = {
        "resourceType": "Appointment",
        "id": uuid,
        "status": fhir_status(code),
        "start": start.isoformat(),
        "end": end.isoformat(),
        "extension": [{"url": STATUS_CODE_URL, "valueCode": code}],
        "participant": [],
    }
    if record.get("puuid"):
        resource["participant"].append({"actor": {"reference": f"Patient/{record['puuid']}"}, "status": "accepted"})
    if record.get("pce_aid_uuid"):
        resource["participant"].append(
            {"actor": {"reference": f"Practitioner/{record['pce_aid_uuid']}"}, "status": "accepted"}
        )
    return resource


def appointment_source(
    api: StandardApi, timezone: str, days_back: int, days_ahead: int
) -> Callable[[datetime], list[dict[str, Any]]]:
    """The poller's source of Appointments: those dated within the window around ``now``."""
    zone = ZoneInfo(timezone)

    def read(now: datetime) -> list[dict[str, Any]]:
        low = (now - timedelta(days=days_back)).date().isoformat()
        high = (now + timedelta(days=days_ahead)).date().isoformat()
        found = []
        for record in api.appointments():
            if low <= str(record.get("pc_eventDate") or "") <= high:
                resource = as_fhir(record, zone)
                if resource is not None:
                    found.append(resource)
        return found

    return read
