"""Reference target types: which resource types each R4 element may point at, read from the specification.

The ``fhir.resources`` R4B models carry, on every Reference-typed field, the target types the element
allows (``enum_reference_types`` in the field's metadata, taken from the StructureDefinitions), so the
checks here follow the specification rather than a hand-written list. ``Task.owner`` allows Practitioner,
PractitionerRole, Organization, CareTeam, HealthcareService, Patient, Device and RelatedPerson — not Group.

Strict servers refuse a write whose reference names another type (HAPI FHIR by default, Medplum); the
executor, the flow loader and the sandbox's strict profiles ask these functions.
"""

from __future__ import annotations

import typing
from functools import lru_cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import BaseModel

from fhir_smartflow.refs import parse_reference

ANY_RESOURCE = "Resource"  # the target list of elements that may point at any resource type


@lru_cache(maxsize=1024)
def _fields(model: type[BaseModel]) -> dict[str, tuple[tuple[str, ...] | None, type[BaseModel] | None]]:
    """JSON name → (allowed target types when the field is a Reference, else None; the element's model)."""
    out: dict[str, tuple[tuple[str, ...] | None, type[BaseModel] | None]] = {}
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        targets = extra.get("enum_reference_types")
        out[info.alias or name] = (tuple(targets) if targets else None, _element_model(info.annotation))
    return out


@lru_cache(maxsize=1024)
def _reference_fields(model: type[BaseModel]) -> dict[str, tuple[tuple[str, ...] | None, type[BaseModel] | None]]:
    """`_fields` without the elements under which no Reference can occur (Coding, Period, Meta, ...):
    the walk of a resource per write need not descend into them."""
    return {
        name: (targets, element)
        for name, (targets, element) in _fields(model).items()
        if targets is not None or (element is not None and _reaches_reference(element))
    }


@lru_cache(maxsize=1024)
def _reaches_reference(model: type[BaseModel]) -> bool:
    """True when a Reference-typed field lies in ``model`` or in any element model below it."""
    seen = {model}
    todo = [model]
    while todo:
        for targets, element in _fields(todo.pop()).values():
            if targets is not None:
                return True
            if element is not None and element not in seen:
                seen.add(element)
                todo.append(element)
    return False


def _element_model(annotation: Any) -> type[BaseModel] | None:
    """The model class behind ``abc.XType`` / ``List[abc.XType]`` / ``Optional[...]`` annotations."""
    while typing.get_args(annotation):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if not args:
            return None
        annotation = args[0]
    name = getattr(annotation, "__name__", "")
    if not name.endswith("Type"):
        return None
    try:
        model = get_fhir_model_class(name[: -len("Type")])
    except (KeyError, ValueError, AttributeError, ImportError):
        return None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def allowed_reference_types(resource_type: str, path: str) -> tuple[str, ...] | None:
    """The target types of the Reference element at ``path`` (``"owner"``, ``"agent.who"``) of
    ``resource_type``; None when there is no such Reference element. ``("Resource",)`` means any type."""
    try:
        model = get_fhir_model_class(resource_type)
    except (KeyError, ValueError, AttributeError, ImportError):
        return None
    targets: tuple[str, ...] | None = None
    for part in path.split("."):
        if model is None:
            return None
        entry = _fields(model).get(part)
        if entry is None:
            return None
        targets, model = entry
    return targets


def reference_type_problems(resource: dict[str, Any]) -> list[str]:
    """Every reference in ``resource`` whose target type its element does not allow, as
    ``"Task.owner: Group is not allowed here (allowed: Practitioner, ...)"``. References that name no
    type (``urn:uuid:``, ``#contained``, identifier-only) are not judged."""
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        return []
    try:
        model = get_fhir_model_class(rtype)
    except (KeyError, ValueError, AttributeError, ImportError):
        return []
    problems: list[str] = []
    _walk(resource, model, rtype, problems)
    return problems


def _walk(value: Any, model: type[BaseModel], where: str, problems: list[str]) -> None:
    if isinstance(value, list):
        for item in value:
            _walk(item, model, where, problems)
        return
    if not isinstance(value, dict):
        return
    fields = _reference_fields(model)
    for key, item in value.items():
        entry = fields.get(key)
        if entry is None:
            continue
        targets, element = entry
        if targets is not None:
            for reference in item if isinstance(item, list) else [item]:
                problem = _judge(reference, targets, where, key)
                if problem:
                    problems.append(problem)
        elif element is not None:
            _walk(item, element, f"{where}.{key}", problems)


def _judge(reference: Any, targets: tuple[str, ...], where: str, key: str) -> str | None:
    """The problem with ``reference`` at ``where.key``; the path is spelled only for a problem (the walk
    runs on every resource written)."""
    if not isinstance(reference, dict) or ANY_RESOURCE in targets:
        return None
    named = []
    if isinstance(reference.get("reference"), str):
        parsed = parse_reference(reference["reference"])
        if parsed is not None:
            named.append(parsed[0])
    if isinstance(reference.get("type"), str):
        named.append(reference["type"])
    for rtype in named:
        if rtype not in targets:
            return f"{where}.{key}: a reference to {rtype} is not allowed here (allowed: {', '.join(targets)})"
    return None


def target_type_problem(resource_type: str, path: str, reference: str) -> str | None:
    """Why ``reference`` cannot stand at ``resource_type.path``, naming the types R4 allows there, or None:
    ``Task.owner cannot be a Group: R4 allows Practitioner, PractitionerRole, ... there``."""
    allowed = allowed_reference_types(resource_type, path)
    parsed = parse_reference(reference)
    if allowed is None or parsed is None or ANY_RESOURCE in allowed or parsed[0] in allowed:
        return None
    return f"{resource_type}.{path} cannot be a {parsed[0]}: R4 allows {', '.join(allowed)} there"
