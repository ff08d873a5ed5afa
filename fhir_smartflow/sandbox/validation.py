"""Validation of every resource written to the sandbox, with the fhir.resources R4B models."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.resource import Resource
from pydantic import ValidationError

from fhir_smartflow.sandbox.errors import BadRequest, NotFound, Unprocessable

_MAX_ISSUES = 5


@lru_cache(maxsize=256)
def model_class(resource_type: str) -> type[Resource] | None:
    """The R4B model class of a resource type, or None when it is not a resource type."""
    try:
        cls = get_fhir_model_class(resource_type)
    except (ValueError, KeyError, AttributeError, ImportError):
        return None
    return cls if isinstance(cls, type) and issubclass(cls, Resource) else None


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
    cls = model_class(rtype)
    if cls is None:
        raise Unprocessable(f"resourceType {rtype!r} is not an R4 resource type", expression="resourceType")
    if expected_type is not None and rtype != expected_type:
        raise BadRequest(f"resourceType {rtype!r} does not match the URL ({expected_type})", expression="resourceType")
    try:
        cls.model_validate(resource)
    except ValidationError as exc:
        problems = []
        for err in exc.errors()[:_MAX_ISSUES]:
            path = ".".join(str(p) for p in (rtype, *err.get("loc", ())))
            problems.append(f"{path}: {err.get('msg', 'invalid')}")
        more = len(exc.errors()) - _MAX_ISSUES
        if more > 0:
            problems.append(f"... and {more} more")
        first = exc.errors()[0].get("loc", ()) if exc.errors() else ()
        expression = ".".join(str(p) for p in (rtype, *first))
        raise Unprocessable("; ".join(problems), expression=expression) from None
    except (ValueError, TypeError, RecursionError) as exc:
        raise Unprocessable(f"{rtype}: {exc}") from None
    return rtype
