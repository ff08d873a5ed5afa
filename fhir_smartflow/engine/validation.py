"""Validate FHIR R4 resources (JSON dicts) with the ``fhir.resources.R4B`` models.

The one place that maps a resourceType to its model and turns pydantic errors into readable
problems; the executor (before every write) and the sandbox store (on every write) use it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.resource import Resource
from pydantic import ValidationError


class ResourceInvalid(ValueError):
    """A resource does not validate; the message lists each problem (``path: reason``)."""

    def __init__(self, resource_type: str, problems: list[str], location: str = "") -> None:
        super().__init__(f"invalid {resource_type}: " + "; ".join(problems))
        self.resource_type = resource_type
        self.problems = problems
        self.location = location  # FHIRPath-ish location of the first problem, e.g. Task.status


@lru_cache(maxsize=256)
def model_class(resource_type: str) -> type[Resource] | None:
    """The R4B model class of a resource type, or None when it is not one."""
    try:
        cls = get_fhir_model_class(resource_type)
    except (ValueError, KeyError, AttributeError, ImportError):
        return None
    return cls if isinstance(cls, type) and issubclass(cls, Resource) else None


def validate_resource(resource: Any, max_problems: int = 20) -> str:
    """Raise ResourceInvalid unless ``resource`` validates with the R4B model of its resourceType.

    Returns the resource type.
    """
    if not isinstance(resource, dict):
        raise ResourceInvalid("resource", ["not a JSON object"])
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        raise ResourceInvalid("resource", ["resourceType missing"], "resourceType")
    model = model_class(rtype)
    if model is None:
        raise ResourceInvalid(rtype, [f"unknown resourceType {rtype!r}"], "resourceType")
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        errors = exc.errors()
        problems = [f"{_path(rtype, e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in errors]
        if len(problems) > max_problems:
            problems = [*problems[:max_problems], f"... and {len(problems) - max_problems} more"]
        first = errors[0].get("loc", ()) if errors else ()
        raise ResourceInvalid(rtype, problems, _path(rtype, first)) from None
    except (ValueError, TypeError, RecursionError) as exc:
        raise ResourceInvalid(rtype, [str(exc)], rtype) from None
    return rtype


def _path(resource_type: str, location: Any) -> str:
    return ".".join(str(p) for p in (resource_type, *location))
