"""The Provenance written next to every resource we create: who (our Device), why (the flow), from what
(the triggering resource version).

R4 ``Provenance`` has no ``identifier`` element, so its business identifier (the written resource's
identifier value + ``/provenance``) is carried as a ``meta.tag`` with the identifier system; conditional
create then matches on ``_tag=system|value``.

Everything in it is ours (constants, the loaded flow's id and version, the configured Device) except two
references: the target's id and version, which the server assigned, and the source, the focus of the
notification. Those two are checked strictly here, so a Provenance needs no R4B validation before it is
written (the tests validate every one we build with the R4B model; the executor still validates every
other resource a plan writes: Task, Communication, DocumentReference, Flag, and their updates).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fhir_smartflow.engine.identifiers import flow_urn
from fhir_smartflow.engine.validation import ResourceInvalid
from fhir_smartflow.instants import format_instant
from fhir_smartflow.refs import split_reference

PARTICIPANT_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
DATA_OPERATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
# code -> display as published (v3-DataOperation displays UPDATE as "revise", not "update")
DATA_OPERATIONS: dict[str, str] = {"CREATE": "create", "UPDATE": "revise"}
PARTICIPANT_TYPES: dict[str, str] = {"author": "Author"}
ENTITY_ROLE_SYSTEM = "http://hl7.org/fhir/provenance-entity-role"  # Provenance.entity.role is a code
SOURCE_ROLE = "source"
ENTITY_ROLES: dict[str, str] = {SOURCE_ROLE: "Source"}
PROVENANCE_SUFFIX = "/provenance"


def provenance_identifier(resource_identifier: str) -> str:
    return resource_identifier + PROVENANCE_SUFFIX


def versioned_reference(resource: dict[str, Any]) -> str:
    """``Type/id/_history/v`` when the server gave a version, else ``Type/id``."""
    ref = f"{resource['resourceType']}/{resource['id']}"
    version = (resource.get("meta") or {}).get("versionId")
    return f"{ref}/_history/{version}" if version else ref


def build_provenance(
    target: dict[str, Any],
    *,
    identifier_system: str,
    identifier_value: str,
    flow_id: str,
    flow_version: str,
    trigger: str,
    source_reference: str | None,
    device_id: str,
    recorded: datetime,
    activity: str = "CREATE",
) -> dict[str, Any]:
    """Provenance for ``target`` (a stored resource with id): identifier value = ``identifier_value``
    (already ending in /provenance), source entity = the triggering resource version."""
    if recorded.tzinfo is None:
        raise ValueError("recorded must be timezone-aware")
    target_reference = versioned_reference(target)
    _check_reference(target_reference, "target")
    if source_reference:
        _check_reference(source_reference, "entity.what")
    prov: dict[str, Any] = {
        "resourceType": "Provenance",
        "meta": {"tag": [{"system": identifier_system, "code": identifier_value}]},
        "target": [{"reference": target_reference}],
        "recorded": format_instant(recorded, "milliseconds"),
        "policy": [flow_urn(flow_id, flow_version)],
        "reason": [{"text": f"Smart Flow {flow_id} version {flow_version} on {trigger}"}],
        "activity": {
            "coding": [{"system": DATA_OPERATION_SYSTEM, "code": activity, "display": DATA_OPERATIONS[activity]}]
        },
        "agent": [
            {
                "type": {
                    "coding": [
                        {"system": PARTICIPANT_TYPE_SYSTEM, "code": "author", "display": PARTICIPANT_TYPES["author"]}
                    ]
                },
                "who": {"reference": f"Device/{device_id}"},
            }
        ],
    }
    if source_reference:
        prov["entity"] = [{"role": SOURCE_ROLE, "what": {"reference": source_reference}}]
    return prov


def _check_reference(reference: str, element: str) -> None:
    """ResourceInvalid unless ``reference`` is ``Type/id[/_history/version]`` with a valid type, id and version."""
    try:
        split_reference(reference)
    except ValueError as exc:
        raise ResourceInvalid("Provenance", [f"Provenance.{element}: {exc}"], f"Provenance.{element}") from None
