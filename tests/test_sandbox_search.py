"""Sandbox search over real HTTP: every supported parameter, paging, _lastUpdated prefixes, strictness."""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests

pytestmark = pytest.mark.integration

FHIR = {"Content-Type": "application/fhir+json"}


def post(base: str, resource: dict[str, Any]) -> dict[str, Any]:
    response = requests.post(f"{base}/{resource['resourceType']}", json=resource, headers=FHIR, timeout=5)
    assert response.status_code == 201, response.text
    return response.json()


def ids(base: str, query: str, **kw: Any) -> list[str]:
    response = requests.get(f"{base}/{query}", timeout=5, **kw)
    assert response.status_code == 200, response.text
    bundle = response.json()
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def task(patient: str, status: str = "requested", **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Task", "status": status, "intent": "order", "for": {"reference": patient}, **extra}


def test_token_reference_and_id_params(sandbox_server: str) -> None:
    base = sandbox_server
    alice = post(base, {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "A1"}]})
    bob = post(base, {"resourceType": "Patient", "identifier": [{"system": "urn:other", "value": "A1"}]})
    pa, pb = f"Patient/{alice['id']}", f"Patient/{bob['id']}"
    group = {"system": "urn:fhir-smartflow:id", "value": "intake/abc"}
    t1 = post(base, task(pa, identifier=[{"system": "urn:x", "value": "t1"}], groupIdentifier=group))
    t2 = post(base, task(pa, "completed", groupIdentifier=group, basedOn=[{"reference": "ServiceRequest/sr1"}]))
    t3 = post(base, task(pb))
    comm = post(
        base,
        {
            "resourceType": "Communication",
            "status": "in-progress",
            "subject": {"reference": pa},
            "recipient": [{"reference": pb}],
        },
    )

    assert sorted(ids(base, "Patient?identifier=urn:mrn|A1")) == [alice["id"]]
    assert sorted(ids(base, "Patient?identifier=A1")) == sorted([alice["id"], bob["id"]])
    assert ids(base, "Patient?identifier=urn:other|") == [bob["id"]]
    assert ids(base, "Patient?identifier=|A1") == []
    assert sorted(ids(base, f"Patient?_id={alice['id']},{bob['id']}")) == sorted([alice["id"], bob["id"]])
    assert ids(base, "Task?identifier=urn:x|t1") == [t1["id"]]
    # Task.for is searchable as patient and subject, by relative, absolute and bare id
    assert sorted(ids(base, f"Task?patient={pa}")) == sorted([t1["id"], t2["id"]])
    assert sorted(ids(base, f"Task?subject={base}/{pa}")) == sorted([t1["id"], t2["id"]])
    assert ids(base, f"Task?patient={bob['id']}") == [t3["id"]]
    assert ids(base, f"Task?subject:Patient={bob['id']}") == [t3["id"]]
    assert ids(base, f"Task?subject:Group={bob['id']}") == []
    assert sorted(ids(base, "Task?group-identifier=urn:fhir-smartflow:id|intake/abc")) == sorted([t1["id"], t2["id"]])
    assert ids(base, "Task?based-on=ServiceRequest/sr1") == [t2["id"]]
    assert ids(base, "Task?status=completed") == [t2["id"]]
    assert sorted(ids(base, "Task?status=completed,requested&patient=" + pa)) == sorted([t1["id"], t2["id"]])
    assert ids(base, f"Communication?subject={pa}") == [comm["id"]]
    assert ids(base, f"Communication?patient={pa}") == [comm["id"]]
    assert ids(base, f"Communication?recipient={pb}") == [comm["id"]]
    assert ids(base, f"Communication?recipient={pa}") == []


def test_paging_with_next_links_sort_and_total(sandbox_server: str) -> None:
    created = [post(sandbox_server, {"resourceType": "Patient", "gender": "other"})["id"] for _ in range(7)]
    url = f"{sandbox_server}/Patient?gender=other&_count=3&_sort=_lastUpdated"
    seen: list[str] = []
    pages = 0
    while url:
        bundle = requests.get(url, timeout=5).json()
        pages += 1
        assert bundle["total"] == 7
        seen += [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
    assert pages == 3 and seen == created
    newest_first = ids(sandbox_server, "Patient?_sort=-_lastUpdated&_count=2")
    assert newest_first == created[::-1][:2]
    no_total = requests.get(f"{sandbox_server}/Patient?_total=none&_count=100", timeout=5).json()
    assert "total" not in no_total and len(no_total["entry"]) == 7
    count_only = requests.get(f"{sandbox_server}/Patient?_summary=count", timeout=5).json()
    assert count_only["total"] == 7 and "entry" not in count_only
    bad = requests.get(f"{sandbox_server}/Patient?_page=zzz", timeout=5)
    assert bad.status_code == 400 and bad.json()["resourceType"] == "OperationOutcome"


def test_last_updated_prefixes(sandbox_server: str) -> None:
    first = post(sandbox_server, {"resourceType": "Patient"})
    time.sleep(0.01)
    second = post(sandbox_server, {"resourceType": "Patient"})
    t1, t2 = first["meta"]["lastUpdated"], second["meta"]["lastUpdated"]
    assert ids(sandbox_server, f"Patient?_lastUpdated=gt{t1}") == [second["id"]]
    assert ids(sandbox_server, f"Patient?_lastUpdated=ge{t1}") == [first["id"], second["id"]]
    assert ids(sandbox_server, f"Patient?_lastUpdated=lt{t2}") == [first["id"]]
    assert ids(sandbox_server, f"Patient?_lastUpdated=le{t2}") == [first["id"], second["id"]]
    assert ids(sandbox_server, f"Patient?_lastUpdated=eq{t1}") == [first["id"]]
    assert ids(sandbox_server, f"Patient?_lastUpdated={t2}") == [second["id"]]
    day = t1[:10]
    assert ids(sandbox_server, f"Patient?_lastUpdated={day}") == [first["id"], second["id"]]
    assert ids(sandbox_server, f"Patient?_lastUpdated=gt{day}") == []
    # an offset time means the same instant in UTC
    offset = {"_lastUpdated": "gt2000-01-01T00:00:00+05:00"}  # requests encodes the "+"
    assert ids(sandbox_server, "Patient", params=offset) == [first["id"], second["id"]]
    both = f"Patient?_lastUpdated=gt{t1}&_lastUpdated=le{t2}"
    assert ids(sandbox_server, both) == [second["id"]]
    bad = requests.get(f"{sandbox_server}/Patient?_lastUpdated=sa{t1}", timeout=5)
    assert bad.status_code == 400 and "prefix 'sa'" in bad.json()["issue"][0]["diagnostics"]


def test_unknown_params_warn_or_fail_when_strict(sandbox_server: str) -> None:
    post(sandbox_server, {"resourceType": "Patient"})
    bundle = requests.get(f"{sandbox_server}/Patient?shoe-size=9", timeout=5).json()
    outcome = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert len(outcome) == 1 and "shoe-size" in outcome[0]["resource"]["issue"][0]["diagnostics"]
    assert outcome[0]["resource"]["issue"][0]["severity"] == "warning"
    assert bundle["total"] == 1
    strict = requests.get(f"{sandbox_server}/Patient?shoe-size=9", headers={"Prefer": "handling=strict"}, timeout=5)
    assert strict.status_code == 400 and "shoe-size" in strict.json()["issue"][0]["diagnostics"]


def test_post_search(sandbox_server: str) -> None:
    mine = post(sandbox_server, {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "P"}]})
    post(sandbox_server, {"resourceType": "Patient"})
    response = requests.post(
        f"{sandbox_server}/Patient/_search",
        data={"identifier": "urn:mrn|P"},
        timeout=5,
    )
    assert response.status_code == 200
    assert [e["resource"]["id"] for e in response.json()["entry"]] == [mine["id"]]


def test_date_params_on_appointment(sandbox_server: str) -> None:
    appt = {
        "resourceType": "Appointment",
        "status": "booked",
        "start": "2026-03-08T09:30:00-05:00",
        "end": "2026-03-08T10:00:00-05:00",
        "participant": [{"actor": {"reference": "Patient/p9"}, "status": "accepted"}],
    }
    made = post(sandbox_server, appt)
    assert ids(sandbox_server, "Appointment?date=2026-03-08") == [made["id"]]
    assert ids(sandbox_server, "Appointment?date=ge2026-03-08T14:30:00Z") == [made["id"]]
    assert ids(sandbox_server, "Appointment?date=gt2026-03-08T14:30:00Z") == []
    assert ids(sandbox_server, "Appointment?patient=Patient/p9&status=booked") == [made["id"]]
    assert ids(sandbox_server, "Appointment?actor=p9") == [made["id"]]


def test_practitioner_roles_by_role_code_and_active(sandbox_server: str) -> None:
    """What a message to a role resolves through (`RunContext.role_members`)."""
    base = sandbox_server
    snomed = "http://snomed.info/sct"

    def role(code: str, active: bool) -> dict[str, Any]:
        concept = {"coding": [{"system": snomed, "code": code}]}
        return post(base, {"resourceType": "PractitionerRole", "active": active, "code": [concept]})

    manager, retired, nurse = role("768832004", True), role("768832004", False), role("224535009", True)
    assert ids(base, f"PractitionerRole?role={snomed}|768832004&active=true") == [manager["id"]]
    assert sorted(ids(base, "PractitionerRole?role=768832004")) == sorted([manager["id"], retired["id"]])
    assert sorted(ids(base, "PractitionerRole?active=true")) == sorted([manager["id"], nurse["id"]])


def test_practitioner_roles_by_practitioner(sandbox_server: str) -> None:
    """The roles a signed-in user holds, as a CDS Hooks prefetch asks for them."""
    base = sandbox_server
    lee = post(base, {"resourceType": "Practitioner", "name": [{"family": "Lee"}]})
    held = post(base, {"resourceType": "PractitionerRole", "practitioner": {"reference": f"Practitioner/{lee['id']}"}})
    post(base, {"resourceType": "PractitionerRole", "practitioner": {"reference": "Practitioner/someone-else"}})
    assert ids(base, f"PractitionerRole?practitioner=Practitioner/{lee['id']}") == [held["id"]]
    assert ids(base, f"PractitionerRole?practitioner={lee['id']}") == [held["id"]]
