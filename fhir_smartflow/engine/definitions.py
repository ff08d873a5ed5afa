"""StructureDefinitions of the extensions the resources we write carry (``export structuredefinition``).

One today: the allowed audience of a record prompt (Flag). Its canonical URL is under the project's
canonical base (``resources.CANONICAL_BASE``, also that of the SubscriptionTopics), so a server or
validator that loads the definition (``fhir-smartflow export structuredefinition allowed-audience``, or
docs/StructureDefinition-allowed-audience.json) knows the extension by the URL the Flags carry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fhir_smartflow.engine.resources import ALLOWED_AUDIENCE_URL

FHIR_VERSION = "4.0.1"
EXTENSION_BASE = "http://hl7.org/fhir/StructureDefinition/Extension"
PRACTITIONER_PROFILES = [
    "http://hl7.org/fhir/StructureDefinition/Practitioner",
    "http://hl7.org/fhir/StructureDefinition/PractitionerRole",
]


def allowed_audience() -> dict[str, Any]:
    """The ``allowed-audience`` extension on Flag: one per role (CodeableConcept: the PractitionerRole
    code configured in ``[roles]``, text = the role name) or practitioner (Reference)."""
    return {
        "resourceType": "StructureDefinition",
        "id": "allowed-audience",
        "url": ALLOWED_AUDIENCE_URL,
        "version": "1",
        "name": "AllowedAudience",
        "title": "Allowed audience of a record prompt",
        "status": "active",
        "publisher": "fhir-smartflow",
        "description": (
            "Who should see a record prompt (Flag) written by fhir-smartflow: a role, as the "
            "PractitionerRole.code of the staff holding it, or one practitioner. Repeat it for each role and "
            "practitioner. The extension names the audience; it restricts nothing by itself. Flags carrying it "
            "are also labelled meta.security = v3-Confidentiality R (restricted), which servers with "
            "label-based access control can enforce."
        ),
        "fhirVersion": FHIR_VERSION,
        "kind": "complex-type",
        "abstract": False,
        "context": [{"type": "element", "expression": "Flag"}],
        "type": "Extension",
        "baseDefinition": EXTENSION_BASE,
        "derivation": "constraint",
        "differential": {
            "element": [
                {
                    "id": "Extension",
                    "path": "Extension",
                    "short": "A role or practitioner who should see this record prompt",
                    "definition": (
                        "One member of the audience of the record prompt: a role (the PractitionerRole.code "
                        "of the staff holding it) or a practitioner."
                    ),
                    "min": 0,
                    "max": "*",
                },
                {"id": "Extension.extension", "path": "Extension.extension", "max": "0"},
                {"id": "Extension.url", "path": "Extension.url", "fixedUri": ALLOWED_AUDIENCE_URL},
                {
                    "id": "Extension.value[x]",
                    "path": "Extension.value[x]",
                    "short": "The role (PractitionerRole.code) or the practitioner",
                    "min": 1,
                    "type": [
                        {"code": "CodeableConcept"},
                        {"code": "Reference", "targetProfile": PRACTITIONER_PROFILES},
                    ],
                },
            ]
        },
    }


# name -> builder: what ``export structuredefinition NAME`` prints
STRUCTURE_DEFINITIONS: dict[str, Callable[[], dict[str, Any]]] = {"allowed-audience": allowed_audience}
