"""The records an emulated OpenEMR keeps, and how its services turn them into answers.

Sources (openemr/openemr; docs/openemr.md lists them with the versions read):
  [PAT]   src/Services/FHIR/FhirPatientService.php (loadSearchParameters; parseOpenEMRRecord's meta)
  [APPT]  src/Services/AppointmentService.php (search / getAppointmentsForPatient columns, insert)
  [FAPPT] src/Services/FHIR/FhirAppointmentService.php (pc_apptstatus → Appointment.status)
  [STAT]  sql/database.sql, list_options list_id 'apptstat' (the calendar's status codes)
  [DOCS]  src/Services/DocumentService.php (isValidPath, getLastIdOfPath, getAllAtPath, insertAtPath)
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tests.support.openemr_emulator_scopes import CURRENT

# [FAPPT] the FHIR status of each calendar code ([STAT] lists the codes).
APPT_STATUS = {
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

# [PAT] the Patient search parameters: the dev build declares no _lastUpdated; a current release maps it to
# the record's last update (FhirServiceBase::getLastModifiedSearchField).
PATIENT_PARAMS = ["_id", "identifier", "name", "birthdate", "gender", "address", "family", "given", "phone", "email"]
SEARCH_PARAMS = {
    "Patient": PATIENT_PARAMS,
    "Encounter": ["_id", "patient", "date"],
    "Appointment": ["_id", "patient", "date", "_lastUpdated"],
    "Questionnaire": ["_id", "url"],
    "QuestionnaireResponse": ["_id", "patient", "questionnaire", "_lastUpdated"],
}
DATE_PARAMS = {"_lastUpdated", "date", "birthdate"}


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def search_params(mode: str, rtype: str) -> list[str]:
    params = list(SEARCH_PARAMS.get(rtype, ["_id"]))
    if mode == CURRENT and "_lastUpdated" not in params:
        params.append("_lastUpdated")
    return params


@dataclass
class PatientRecord:
    pid: int
    uuid: str
    fname: str
    lname: str
    dob: str
    updated: float

    def fhir(self, mode: str, now: float) -> dict[str, Any]:
        # [PAT] parseOpenEMRRecord: the dev build stamps meta.lastUpdated with gmdate('c') at every read;
        # a current release reports the record's last update.
        stamp = self.updated if mode == CURRENT else now
        return {
            "resourceType": "Patient",
            "id": self.uuid,
            "meta": {"versionId": "1", "lastUpdated": iso(stamp)},
            "active": True,
            "name": [{"use": "official", "family": self.lname, "given": [self.fname]}],
            "birthDate": self.dob,
        }

    def standard(self) -> dict[str, Any]:
        return {
            "id": str(self.pid),
            "pid": str(self.pid),
            "uuid": self.uuid,
            "fname": self.fname,
            "lname": self.lname,
            "DOB": self.dob,
        }


@dataclass
class AppointmentRecord:
    eid: int
    uuid: str
    pid: int
    puuid: str
    event_date: str  # pc_eventDate, Y-m-d
    start_time: str  # pc_startTime, H:i:s
    duration: int  # pc_duration, seconds
    status: str  # pc_apptstatus, a calendar code [STAT]
    title: str = "Office Visit"
    pc_time: str | None = None  # [APPT] insert() does not set it: NULL for appointments made through the API

    def standard(self) -> dict[str, Any]:
        """[APPT] the columns of AppointmentService::search / getAppointmentsForPatient."""
        start = datetime.fromisoformat(f"{self.event_date}T{self.start_time}")
        end = datetime.fromtimestamp(start.timestamp() + self.duration)
        return {
            "pc_eid": str(self.eid),
            "pc_uuid": self.uuid,
            "puuid": self.puuid,
            "pid": str(self.pid),
            "pc_pid": str(self.pid),
            "pc_apptstatus": self.status,
            "pc_eventDate": self.event_date,
            "pc_startTime": self.start_time,
            "pc_endTime": end.strftime("%H:%M:%S"),
            "pc_duration": str(self.duration),
            "pc_time": self.pc_time,
            "pc_title": self.title,
            "pc_catid": "5",
            "pc_facility": "3",
        }

    def fhir(self) -> dict[str, Any]:
        start = datetime.fromisoformat(f"{self.event_date}T{self.start_time}").replace(tzinfo=UTC)
        resource: dict[str, Any] = {
            "resourceType": "Appointment",
            "id": self.uuid,
            "meta": {"versionId": "1"},
            "status": APPT_STATUS.get(self.status, "pending"),
            "start": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "end": iso(start.timestamp() + self.duration),
            "participant": [{"actor": {"reference": f"Patient/{self.puuid}"}, "status": "accepted"}],
        }
        if self.pc_time:
            resource["meta"]["lastUpdated"] = self.pc_time
        return resource


@dataclass
class DocumentRecord:
    id: int
    pid: int
    category_id: int | None
    stored_name: str  # basename of the stored url: what the list answers as "filename"
    uploaded_name: str
    mimetype: str
    content: bytes
    docdate: str


@dataclass
class Categories:
    """[DOCS] the document category tree (table ``categories``): a root "Categories" and its children."""

    rows: list[tuple[int, str, int]] = field(
        default_factory=lambda: [(1, "Categories", 0), (2, "Lab Report", 1), (3, "Medical Record", 1)]
    )

    def add(self, name: str, parent: int = 1) -> int:
        new_id = max(r[0] for r in self.rows) + 1
        self.rows.append((new_id, name, parent))
        return new_id

    def _find(self, part: str) -> tuple[int, str, int] | None:
        # WHERE replace(LOWER(name), ' ', '') = ? with str_replace("_", "", $part); MySQL's collation
        # compares case-insensitively.
        wanted = part.replace("_", "").lower()
        return next((r for r in self.rows if r[1].lower().replace(" ", "") == wanted), None)

    def is_valid_path(self, path: str) -> bool:
        """isValidPath: the part before the first "/" is dropped; each later part must be the child of
        the one before. A path without "/" ("Smart Flows") has nothing left to check: valid."""
        parts = path.split("/")[1:]
        last_parent: int | None = None
        for index, part in enumerate(parts, start=1):
            row = self._find(part)
            if index == 1:
                last_parent = row[0] if row else None
                continue
            if row is None or row[2] != last_parent:
                return False
            last_parent = row[0]
        return True

    def last_id_of_path(self, path: str) -> int | None:
        """getLastIdOfPath: the category named like the last part, wherever it is (None: no category)."""
        row = self._find(path.split("/")[-1])
        return row[0] if row else None


def new_uuid() -> str:
    return str(uuid.uuid4())
