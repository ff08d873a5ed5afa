"""Test data of the engine tests: settings, the shipped engine, realistic FHIR resources."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

from fhir_smartflow.config import ClinicConfig, Settings
from fhir_smartflow.engine.model import Engine
from fhir_smartflow.events import ResourceEvent
from fhir_smartflow.flowfiles import load_paths
from tests.support.procs import ROOT

SETTINGS = dataclasses.replace(
    Settings(),
    clinic=ClinicConfig(
        name="Example Behavioral Health",
        phone="(555) 555-0199",
        timezone="America/New_York",
        portal_url="https://portal.example.org",
    ),
)


def shipped_engine(settings: Settings = SETTINGS) -> Engine:
    engine, errors = load_paths(
        [str(ROOT / "mappings")], [str(ROOT / "flows" / "examples")], [str(ROOT / "templates")], settings
    )
    assert not errors, "\n".join(map(str, errors))
    assert engine is not None
    return engine


def sha20(*parts: object) -> str:
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:20]


def event_for(resource: dict[str, Any], interaction: str | None = None, sub: str = "sub-1") -> ResourceEvent:
    meta = resource.get("meta") or {}
    return ResourceEvent(
        subscription=sub,
        resource_type=resource["resourceType"],
        resource_id=resource["id"],
        received_at="2026-01-01T00:00:00Z",
        version_id=meta.get("versionId"),
        interaction=interaction,  # type: ignore[arg-type]
        resource=resource,
    )


def patient(pid: str = "p1", birth: str = "1985-06-15", **extra: Any) -> dict[str, Any]:
    resource = {
        "resourceType": "Patient",
        "id": pid,
        "meta": {"versionId": "1", "lastUpdated": "2026-03-05T15:00:00Z"},
        "identifier": [
            {
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
                "value": "MRN-0042",
            }
        ],
        "active": True,
        "name": [{"use": "official", "family": "Rivera", "given": ["Alex", "J"]}],
        "telecom": [
            {"system": "phone", "value": "+15555550100", "use": "mobile"},
            {"system": "email", "value": "alex@example.org"},
        ],
        "birthDate": birth,
    }
    resource.update(extra)
    return resource


def appointment(aid: str, status: str, start: str, updated: str, version: str = "2") -> dict[str, Any]:
    return {
        "resourceType": "Appointment",
        "id": aid,
        "meta": {"versionId": version, "lastUpdated": updated},
        "status": status,
        "start": start,
        "end": start.replace(":00:00Z", ":45:00Z"),
        "participant": [
            {"actor": {"reference": "Patient/p1", "display": "Alex Rivera"}, "status": "accepted"},
            {"actor": {"reference": "Practitioner/dr-lee", "display": "Dr. Jordan Lee"}, "status": "accepted"},
            {"actor": {"reference": "Location/main", "display": "Main Street Clinic"}, "status": "accepted"},
        ],
    }


PRACTITIONER_ROLE = {
    "resourceType": "PractitionerRole",
    "id": "dr-lee-role",
    "active": True,
    "practitioner": {"reference": "Practitioner/dr-lee"},
    "code": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/practitioner-role", "code": "doctor"}]}],
}
PRACTITIONER = {
    "resourceType": "Practitioner",
    "id": "dr-lee",
    "name": [{"family": "Lee", "given": ["Jordan"], "prefix": ["Dr."]}],
}
