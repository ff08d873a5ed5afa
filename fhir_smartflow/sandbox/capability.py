"""The sandbox's CapabilityStatement: exactly what it supports, no more."""

from __future__ import annotations

from typing import Any

from fhir_smartflow.sandbox import search
from fhir_smartflow.sandbox.subscriptions import TOPICS

# Types listed with their own search parameters. Any other R4 resource type is stored and read too,
# with the common parameters; the list keeps the statement readable.
LISTED_TYPES = (
    "Appointment", "CarePlan", "Communication", "CommunicationRequest", "Consent", "Coverage", "Device",
    "DocumentReference", "Encounter", "Flag", "Group", "Observation", "Organization", "Patient",
    "Practitioner", "PractitionerRole", "Provenance", "Questionnaire", "QuestionnaireResponse",
    "ServiceRequest", "Subscription", "Task",
)  # fmt: skip
_KIND_TYPE = {search.TOKEN: "token", search.REFERENCE: "reference", search.DATE: "date"}
OPERATION_BASE = "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/"
TOPIC_CANONICAL_EXT = (
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/capabilitystatement-subscriptiontopic-canonical"
)


def _params_for(resource_type: str) -> list[dict[str, Any]]:
    params = [
        {"name": "_id", "type": "token"},
        {"name": "_lastUpdated", "type": "date", "documentation": "prefixes eq, gt, ge, lt, le"},
    ]
    for name, (kind, types) in search.PARAMS.items():
        if types == search.ANY_TYPE or resource_type in types:
            params.append({"name": name, "type": _KIND_TYPE[kind]})
    return params


OAUTH_URIS_EXT = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
SECURITY_SERVICE_SYSTEM = "http://hl7.org/fhir/restful-security-service"


def capability_statement(
    base_url: str,
    software_version: str,
    date: str,
    *,
    profile: str = "lenient",
    topics: bool = True,
    token_url: str | None = None,
) -> dict[str, Any]:
    """``topics``: R4 Backport topic-based Subscriptions are served; ``token_url``: the SMART token endpoint."""
    interactions = [
        {"code": c} for c in ("read", "vread", "update", "delete", "history-instance", "create", "search-type")
    ]
    resources = []
    for rtype in LISTED_TYPES:
        entry: dict[str, Any] = {
            "type": rtype,
            "interaction": interactions,
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": True,
            "conditionalRead": "not-supported",
            "conditionalUpdate": True,
            "conditionalDelete": "not-supported",
            "searchParam": _params_for(rtype),
        }
        if rtype == "Subscription" and topics:
            entry["extension"] = [{"url": TOPIC_CANONICAL_EXT, "valueCanonical": url} for url in TOPICS]
            entry["operation"] = [
                {"name": "status", "definition": OPERATION_BASE + "backport-subscription-status"},
                {"name": "events", "definition": OPERATION_BASE + "backport-subscription-events"},
            ]
        resources.append(entry)
    rest: dict[str, Any] = {
        "mode": "server",
        "documentation": "Search result parameters: _count, _sort (_lastUpdated, -_lastUpdated), _total, "
        "_summary=count. Unknown parameters are ignored with a warning unless Prefer: handling=strict.",
        "resource": resources,
        "interaction": [{"code": "transaction"}, {"code": "batch"}],
    }
    if token_url:
        rest["security"] = {
            "service": [{"coding": [{"system": SECURITY_SERVICE_SYSTEM, "code": "SMART-on-FHIR"}]}],
            "extension": [{"url": OAUTH_URIS_EXT, "extension": [{"url": "token", "valueUri": token_url}]}],
        }
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date,
        "publisher": "fhir-smartflow",
        "kind": "instance",
        "description": f"fhir-smartflow sandbox FHIR store, profile {profile} (not for production, no PHI). "
        "See docs/sandbox.md.",
        "software": {"name": "fhir-smartflow sandbox", "version": software_version},
        "implementation": {"description": "fhir-smartflow sandbox FHIR store", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "application/json"],
        "rest": [rest],
    }
