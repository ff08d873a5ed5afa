"""The scopes an emulated OpenEMR knows, per version, and the checks made with them.

Two versions are modelled (``MODES``):

* ``7.0.0-dev`` — the development build of 2022-04-30 (upstream commit 9f90c9b8), as seen running:
  SMART v1 scopes only (``.read`` / ``.write``; ``system/Patient.rs`` is ``invalid_scope``), no
  ``system/Appointment.read`` and no ``user/message.read``; ``openid`` is refused unless ``api:fhir`` is
  requested too. The lists follow src/Common/Auth/OpenIDConnect/Repositories/ScopeRepository.php of that
  time (fhirScopes / systemScopes / apiScopes: v1 names only), cut down to what that build answered.
* ``current`` — a current release: src/Common/Auth/OpenIDConnect/Entities/ServerScopeListEntity.php
  (fhirResourceScopesV1 / fhirResourceScopesV2 / apiScopes / getV2ApiScopes): v1 and v2 both, v2 API
  scopes listed as letter sets (``user/message.cud``, ``user/document.crs``) of which a request may ask a
  subset (ResourceScopeEntityList::grantsScope checks permissions as a union).
"""

from __future__ import annotations

import re

DEV = "7.0.0-dev"
CURRENT = "current"
MODES = (DEV, CURRENT)

OIDC = {
    "openid",
    "fhirUser",
    "online_access",
    "offline_access",
    "launch",
    "launch/patient",
    "api:oemr",
    "api:fhir",
    "api:port",
    "profile",
    "email",
    "phone",
    "address",
    "name",
}

# FHIR resources each version serves (CapabilityStatement): the dev build has no Appointment, Questionnaire
# or QuestionnaireResponse (apis/routes/_rest_routes_fhir_r4_us_core_3_1_0.inc.php of that time).
FHIR_TYPES = {
    DEV: ("Patient", "Encounter", "Practitioner", "Organization", "Coverage", "DocumentReference"),
    CURRENT: (
        "Patient",
        "Encounter",
        "Practitioner",
        "Organization",
        "Coverage",
        "DocumentReference",
        "Appointment",
        "Questionnaire",
        "QuestionnaireResponse",
    ),
}

# Standard API resources and the v2 letters a current release lists (getV2ApiScopes); the dev build knows
# the v1 names of the same resources, without user/message.read.
API_V2 = {"patient": "crus", "message": "cud", "document": "crs", "appointment": "cruds"}
API_V1_DEV = {
    "user/patient.read",
    "user/patient.write",
    "user/message.write",
    "user/document.read",
    "user/document.write",
    "user/appointment.read",
    "user/appointment.write",
}

_SCOPE = re.compile(r"^(patient|user|system)/([A-Za-z_*]+)\.([a-z*]+)$")
V1_LETTERS = {"read": "rs", "write": "cud", "*": "cruds"}


def _fhir_v1(mode: str) -> set[str]:
    found: set[str] = set()
    for rtype in FHIR_TYPES[mode]:
        found |= {f"patient/{rtype}.read", f"user/{rtype}.read", f"system/{rtype}.read", f"user/{rtype}.write"}
    return found


def _ordered(perms: str, allowed: str) -> bool:
    """A v2 permission string: an in-order subset of ``cruds`` within what the server lists."""
    return bool(perms) and set(perms) <= set(allowed) and "".join(c for c in "cruds" if c in perms) == perms


def known_scope(mode: str, scope: str) -> bool:
    """ScopeRepository::getScopeEntityByIdentifier: is ``scope`` one the server knows?"""
    if scope in OIDC or scope.startswith("site:") or scope in _fhir_v1(mode):
        return True
    if mode == DEV:
        return scope in API_V1_DEV
    match = _SCOPE.match(scope)
    if match is None:
        return False
    context, resource, perms = match.groups()
    if perms in V1_LETTERS:  # v1 Standard API names (apiScopes): read / write, message write only
        return context == "user" and resource in API_V2 and not (resource == "message" and perms == "read")
    if context == "user" and resource in API_V2:
        return _ordered(perms, API_V2[resource])
    # fhirResourceScopesV2: read-search for every listed type, create-update-delete for user / system;
    # Appointment is in no v2 list (only its v1 scopes exist).
    if resource not in FHIR_TYPES[mode] or resource == "Appointment":
        return False
    return _ordered(perms, "rs" if context == "patient" else "cruds")


def first_unknown(mode: str, scopes: list[str]) -> str | None:
    """The scope the server's ``invalid_scope`` hint names ("Check the `X` scope"), or None."""
    for scope in scopes:
        if not known_scope(mode, scope):
            return scope
    if mode == DEV and "openid" in scopes and not {"api:fhir", "fhirUser"} & set(scopes):
        # ScopeRepository::buildScopeValidatorArray of the dev build: with api:oemr and without api:fhir the
        # SMART / OIDC list is not built, so openid is unknown.
        return "openid"
    return None


def grants(granted: set[str], context: str, resource: str, letter: str, mode: str) -> bool:
    """Whether a token's scopes allow ``letter`` (c r u d s) on ``context/resource``. The dev build's
    RestConfig::scope_check compares v1 strings exactly; a current release takes v1 and v2 as a union."""
    for scope in granted:
        match = _SCOPE.match(scope)
        if match is None or match.group(1) != context or match.group(2) not in (resource, "*"):
            continue
        perms = match.group(3)
        if perms in V1_LETTERS:
            if letter in V1_LETTERS[perms]:
                return True
        elif mode == CURRENT and letter in perms:
            return True
    return False
