"""Whose tasks these are, the rows of the list, and completing a task (Task.status + a Provenance)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fhir.resources.R4B.provenance import Provenance
from fhir.resources.R4B.task import Task

from fhir_smartflow.engine.identifiers import parse_instantiates_uri
from fhir_smartflow.worklist.fhir import FhirError, UserFhir

OPEN = frozenset({"draft", "requested", "received", "accepted", "ready", "in-progress", "on-hold"})
DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
PROVENANCE_AGENT = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
# What the user may do to a task → (Task.status, Provenance activity)
OUTCOMES = {"complete": "completed", "not-needed": "cancelled"}


class NotYours(Exception):
    """The task is neither owned by the user (or a role they hold) nor for a role they hold."""


def local(reference: str) -> str:
    """``Type/id`` of a relative or absolute reference."""
    parts = reference.split("/_history/")[0].rstrip("/").split("/")
    return "/".join(parts[-2:]) if len(parts) >= 2 else reference


@dataclass(frozen=True)
class Identity:
    practitioner: str  # Practitioner/<id>
    roles: tuple[str, ...]  # PractitionerRole/<id> the practitioner holds
    role_codes: frozenset[tuple[str, str]]  # (system, code) of those roles

    @property
    def owners(self) -> tuple[str, ...]:
        return (self.practitioner, *self.roles)


def identity(fhir: UserFhir, practitioner: str) -> Identity:
    roles: list[str] = []
    codes: set[tuple[str, str]] = set()
    pid = practitioner.partition("/")[2]
    for role in fhir.search("PractitionerRole", {"practitioner": practitioner, "_count": "100"}):
        # Filtered here too: a server that ignores the parameter must not hand us everyone's roles.
        if local((role.get("practitioner") or {}).get("reference", "")) != f"Practitioner/{pid}":
            continue
        if role.get("active") is False:
            continue
        roles.append(f"PractitionerRole/{role['id']}")
        for concept in role.get("code") or []:
            codes |= {(c.get("system", ""), c.get("code", "")) for c in concept.get("coding") or [] if c.get("code")}
    return Identity(practitioner, tuple(roles), frozenset(codes))


def is_mine(task: dict[str, Any], who: Identity) -> bool:
    owner = local((task.get("owner") or {}).get("reference", ""))
    if owner and owner in who.owners:
        return True
    for concept in task.get("performerType") or []:
        for coding in concept.get("coding") or []:
            if (coding.get("system", ""), coding.get("code", "")) in who.role_codes:
                return True
    return False


@dataclass(frozen=True)
class Row:
    id: str
    patient: str  # Patient/<id> or ""
    patient_name: str
    description: str
    due: datetime | None
    overdue: bool
    status: str
    flow: str
    form: str | None


def _due(task: dict[str, Any]) -> datetime | None:
    end = ((task.get("restriction") or {}).get("period") or {}).get("end")
    if not isinstance(end, str):
        return None
    try:
        parsed = datetime.fromisoformat(end.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else None


def _form(task: dict[str, Any]) -> str | None:
    for item in task.get("input") or []:
        if isinstance(item.get("valueCanonical"), str):
            return str(item["valueCanonical"])
    return None


def flow_of(task: dict[str, Any]) -> str:
    made = parse_instantiates_uri(task.get("instantiatesUri"))
    return f"{made.flow_id} ({made.action_slug})" if made else ""


def patient_name(fhir: UserFhir, patient: str, cache: dict[str, str]) -> str:
    if patient not in cache:
        try:
            resource, _ = fhir.read(*patient.split("/", 1))
            name = (resource.get("name") or [{}])[0]
            cache[patient] = name.get("text") or " ".join([*name.get("given", []), name.get("family", "")]).strip()
        except (FhirError, ValueError, KeyError, IndexError):  # a name we may not read leaves the row usable
            cache[patient] = patient
    return cache[patient] or patient


def my_tasks(fhir: UserFhir, who: Identity, patient: str | None, now: datetime) -> list[Row]:
    found: dict[str, dict[str, Any]] = {}
    scope = {"patient": patient} if patient else {}
    for owner in who.owners:
        for task in fhir.search("Task", {"owner": owner, "_count": "200", **scope}):
            found[task["id"]] = task
    for system, code in sorted(who.role_codes):
        for task in fhir.search("Task", {"performer": f"{system}|{code}", "_count": "200", **scope}):
            found[task["id"]] = task
    names: dict[str, str] = {}
    rows = []
    for task in found.values():
        subject = local((task.get("for") or {}).get("reference", ""))
        if task.get("status") not in OPEN or not is_mine(task, who):
            continue
        if patient and subject != patient:
            continue
        due = _due(task)
        rows.append(
            Row(
                id=task["id"],
                patient=subject,
                patient_name=patient_name(fhir, subject, names) if subject.startswith("Patient/") else "",
                description=task.get("description") or (task.get("code") or {}).get("text") or "",
                due=due,
                overdue=bool(due and due < now),
                status=task.get("status", ""),
                flow=flow_of(task),
                form=_form(task),
            )
        )
    far = datetime.max.replace(tzinfo=now.tzinfo)
    return sorted(rows, key=lambda r: (r.due or far, r.id))


def finish(fhir: UserFhir, task_id: str, who: Identity, outcome: str, reason: str, now: datetime) -> dict[str, Any]:
    """Write the task's new status as the user, then a Provenance naming them. NotYours: nothing written."""
    task, etag = fhir.read("Task", task_id)
    if not is_mine(task, who):
        raise NotYours(task_id)
    when = now.isoformat(timespec="seconds")
    changed = {**task, "status": OUTCOMES[outcome], "lastModified": when}
    if reason:
        changed["statusReason"] = {"text": reason}
    Task.model_validate(changed)
    stored = fhir.update(changed, etag)
    version = (stored.get("meta") or {}).get("versionId")
    target = f"Task/{task_id}" + (f"/_history/{version}" if version else "")
    provenance = {
        "resourceType": "Provenance",
        "target": [{"reference": target}],
        "recorded": when,
        "activity": {"coding": [{"system": DATA_OPERATION, "code": "UPDATE"}], "text": f"task {OUTCOMES[outcome]}"},
        "agent": [
            {
                "type": {"coding": [{"system": PROVENANCE_AGENT, "code": "performer"}]},
                "who": {"reference": who.practitioner},
            }
        ],
    }
    if reason:
        provenance["reason"] = [{"text": reason}]
    Provenance.model_validate(provenance)
    fhir.create(provenance)
    return stored


def history(fhir: UserFhir, task_id: str) -> list[dict[str, Any]]:
    """Who changed the task and when (its Provenance), oldest first."""
    found = list(fhir.search("Provenance", {"target": f"Task/{task_id}", "_count": "100"}))
    found = [p for p in found if any(local(t.get("reference", "")) == f"Task/{task_id}" for t in p.get("target", []))]
    return sorted(found, key=lambda p: p.get("recorded", ""))


@dataclass(frozen=True)
class Version:
    version: str
    at: str
    status: str


def versions(fhir: UserFhir, task_id: str) -> list[Version]:
    """The task's status over time (its versions), oldest first."""
    found = [
        Version(str((v.get("meta") or {}).get("versionId", "")), (v.get("meta") or {}).get("lastUpdated", ""),
                v.get("status", ""))
        for v in fhir.versions("Task", task_id)
    ]  # fmt: skip
    return sorted(found, key=lambda v: v.at)
