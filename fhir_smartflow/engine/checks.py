"""Checks shared by the mapping, template and flow parsers."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from fhir_smartflow.config import Settings
from fhir_smartflow.engine import model as m
from fhir_smartflow.engine.fhirpath import FhirPathError, compile_path
from fhir_smartflow.engine.tomlfiles import Checker
from fhir_smartflow.refs import ID_PATTERN

ID = re.compile(r"^[a-z0-9][a-z0-9-]*$")
REF = {
    "practitioner": re.compile(rf"^(Practitioner|PractitionerRole)/{ID_PATTERN}$"),
    "group": re.compile(rf"^(Group|CareTeam)/{ID_PATTERN}$"),
}
EXAMPLE_REF = {"practitioner": "Practitioner/123", "group": "Group/intake-team"}


def checked_id(check: Checker, data: dict[str, Any]) -> str | None:
    """The required ``id`` of a flow or template file: lower-case letters, digits and dashes."""
    value = check.get(data, "id", str, required=True)
    if value and not ID.match(value):
        check.error("id", f"use lower-case letters, digits and '-' only, got {value!r}")
    return value


def compile_into(
    check: Checker,
    paths: dict[str, m.Compiled],
    expression: str,
    field: str,
    key: str,
    table: str | None = None,
    index: int | None = None,
) -> None:
    if expression in paths:
        return
    try:
        paths[expression] = compile_path(expression)
    except FhirPathError as exc:
        check.error(field, f"not valid FHIRPath ({exc}): {expression}", key=key, table=table, index=index)


def known_roles(check: Checker, roles: Sequence[str], settings: Settings, field: str, key: str) -> None:
    for role in roles:
        if role not in settings.roles:
            check.error(
                field, f"unknown role {role!r} (roles in the config: {', '.join(sorted(settings.roles))})", key=key
            )


def check_refs(check: Checker, refs: Sequence[str], kind: str, field: str, key: str) -> None:
    for ref in refs:
        if not REF[kind].match(ref):
            wanted = (
                "Practitioner/<id> or PractitionerRole/<id>"
                if kind == "practitioner"
                else "Group/<id> or CareTeam/<id>"
            )
            check.error(field, f"expected {wanted}, got {ref!r}", key=key)
