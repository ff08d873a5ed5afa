"""Validate a FHIR R4 resource (JSON dict) against its ``fhir.resources.R4B`` model before we send it.

(The engine helper's ``fhir/resources.py`` also has a ``validate_resource``; the lead will keep one.)
"""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError


class ResourceInvalid(ValueError):
    """A resource we were about to write does not validate; the message lists each problem."""

    def __init__(self, resource_type: str, problems: list[str]) -> None:
        super().__init__(f"invalid {resource_type}: " + "; ".join(problems))
        self.resource_type = resource_type
        self.problems = problems


def validate_resource(resource: dict[str, Any]) -> None:
    """Raise ResourceInvalid unless ``resource`` validates with the R4B model of its resourceType."""
    if not isinstance(resource, dict):
        raise ResourceInvalid("resource", ["not a JSON object"])
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        raise ResourceInvalid("resource", ["resourceType missing"])
    try:
        model = get_fhir_model_class(rtype)
    except (KeyError, ValueError, AttributeError, ImportError):
        raise ResourceInvalid(rtype, [f"unknown resourceType {rtype!r}"]) from None
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in err['loc']) or rtype}: {err['msg']}" for err in exc.errors()]
        raise ResourceInvalid(rtype, problems) from None
