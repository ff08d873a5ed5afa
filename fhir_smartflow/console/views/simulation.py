"""Test before going live: the `simulate` engine on a patient from the FHIR server or a pasted resource.

Nothing is written: the FHIR server is only read (the patient searched for), and the plan is described,
never executed. The flow tested is the one being edited, as it stands in the editor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from fhir_smartflow.console.deps import ConsoleDeps
from fhir_smartflow.console.views.checking import Checked
from fhir_smartflow.engine.model import Engine
from fhir_smartflow.tooling.simulate import MemoryContext, simulate

MAX_MATCHES = 10


@dataclass
class PatientMatch:
    id: str
    label: str


@dataclass
class DryRun:
    error: str = ""
    matches: list[PatientMatch] = field(default_factory=list)
    chosen: str = ""  # the reference tested
    report: dict[str, Any] | None = None
    flow: dict[str, Any] | None = None  # the tested flow's part of the report
    others: list[str] = field(default_factory=list)  # other flows the same change would run


def _label(patient: dict[str, Any]) -> str:
    names = patient.get("name") or [{}]
    name = names[0] if isinstance(names[0], dict) else {}
    given = " ".join(name.get("given") or [])
    text = name.get("text") or f"{given} {name.get('family', '')}".strip()
    born = patient.get("birthDate", "")
    return f"{text or '(no name)'} · Patient/{patient.get('id')}" + (f" · born {born}" if born else "")


def find_patients(deps: ConsoleDeps, query: str) -> list[dict[str, Any]]:
    """Patients of the FHIR server by id, or by name (the server's `name` search)."""
    if deps.fhir is None or not query:
        return []
    query = query.removeprefix("Patient/")
    found = []
    if query.replace("-", "").replace(".", "").isalnum() and " " not in query:
        patient = deps.fhir.read(f"Patient/{query}")
        if patient:
            found.append(patient)
    if not found:
        found = deps.fhir.search("Patient", {"name": query, "_count": str(MAX_MATCHES)})[:MAX_MATCHES]
    return [p for p in found if isinstance(p, dict) and p.get("resourceType") == "Patient"]


def _trigger_resource(deps: ConsoleDeps, engine: Engine, trigger: str, patient: dict[str, Any]) -> dict[str, Any]:
    """The patient's latest resource of the type the trigger reads (their newest Appointment for
    ``appointment.booked``), or the patient when the trigger reads Patients or they have none."""
    types = sorted({r.resource for r in engine.mappings if r.trigger == trigger})
    if not types or "Patient" in types or deps.fhir is None:
        return patient
    for rtype in types:
        params = {"patient": f"Patient/{patient.get('id')}", "_sort": "-_lastUpdated", "_count": "1"}
        found = deps.fhir.search(rtype, params)
        if found and isinstance(found[0], dict):
            return found[0]
    return patient


def dry_run(deps: ConsoleDeps, checked: Checked, flow_id: str, fields: Any) -> DryRun:
    run = DryRun()
    if checked.engine is None:
        run.error = "The flow does not load yet: fix the marked fields first."
        return run
    pasted = (fields.get("test_resource") or "").strip()
    resource: dict[str, Any] | None = None
    context: list[dict[str, Any]] = []
    if pasted:
        try:
            resource = json.loads(pasted)
        except json.JSONDecodeError as exc:
            run.error = f"The pasted resource is not JSON: {exc.msg} (line {exc.lineno})"
            return run
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            run.error = "The pasted JSON is not a FHIR resource (no resourceType)."
            return run
    else:
        query = (fields.get("test_patient") or "").strip()
        if not query:
            run.error = "Find a patient (name or id) or paste a resource to test with."
            return run
        if deps.fhir is None:
            run.error = "No FHIR server is configured: paste a resource instead."
            return run
        try:
            patients = find_patients(deps, query)
            run.matches = [PatientMatch(str(p.get("id")), _label(p)) for p in patients]
            if not patients:
                run.error = f"No patient found for {query!r}."
                return run
            resource = _trigger_resource(deps, checked.engine, fields.get("trigger", ""), patients[0])
        except Exception as exc:  # the server's failure is shown, not raised: this page only reads
            run.error = f"The FHIR server could not be searched: {type(exc).__name__}"
            return run
        context.append(patients[0])
    run.chosen = f"{resource['resourceType']}/{resource.get('id', '')}"
    memory = MemoryContext([resource, *context])
    report = simulate(checked.engine, deps.settings, resource, None, memory, deps.clock())
    run.report = report
    for trigger in report["triggers"]:
        for flow in trigger["flows"]:
            if flow["id"] == flow_id:
                run.flow = {**flow, "trigger": trigger["trigger"]}
            elif flow["ran"]:
                run.others.append(flow["id"])
    return run
