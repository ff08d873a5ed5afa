"""Validation of every resource written to the sandbox (fhir_smartflow/engine/validation.py), as HTTP errors."""

from __future__ import annotations

from typing import Any

from fhir_smartflow.engine.validation import ResourceInvalid, model_class
from fhir_smartflow.engine.validation import validate_resource as _validate
from fhir_smartflow.sandbox.errors import BadRequest, NotFound, Unprocessable

_MAX_ISSUES = 5

__all__ = ["check_type", "model_class", "validate_resource"]


def check_type(resource_type: str) -> None:
    if model_class(resource_type) is None:
        raise NotFound(f"unknown resource type {resource_type!r}")


def validate_resource(resource: Any, expected_type: str | None = None) -> str:
    """Raise BadRequest / Unprocessable naming what is wrong; return the resource type."""
    if not isinstance(resource, dict):
        raise BadRequest("the body must be a JSON object (a FHIR resource)")
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        raise BadRequest("resourceType is missing", expression="resourceType")
    if model_class(rtype) is None:
        raise Unprocessable(f"resourceType {rtype!r} is not an R4 resource type", expression="resourceType")
    if expected_type is not None and rtype != expected_type:
        raise BadRequest(f"resourceType {rtype!r} does not match the URL ({expected_type})", expression="resourceType")
    try:
        return _validate(resource, max_problems=_MAX_ISSUES)
    except ResourceInvalid as exc:
        raise Unprocessable("; ".join(exc.problems), expression=exc.location or rtype) from None
