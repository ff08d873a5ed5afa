"""Bundle entries: their shape, what each one says it is, and finding the entry of a focus.

An entry may name its resource three times: ``fullUrl``, ``resource`` (type + id) and ``request.url``.
They must agree (a Patient under an Appointment's fullUrl is refused), and an absolute ``fullUrl`` must
lie on the configured FHIR server.
"""

from __future__ import annotations

import itertools
from typing import Any

from fhir_smartflow.events import Interaction
from fhir_smartflow.fhir.notifications.model import NotificationError, ParseContext, shown, version_of
from fhir_smartflow.refs import Reference, parse_reference

METHOD_INTERACTION: dict[str, Interaction] = {
    "POST": "create",
    "PUT": "update",
    "PATCH": "update",
    "DELETE": "delete",
}


def check_entries(entries: Any, ctx: ParseContext) -> list[dict[str, Any]]:
    """``Bundle.entry`` as a list of well-formed entries whose names agree; 400 otherwise."""
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise NotificationError(400, "Bundle.entry must be a list of objects")
    for i, entry in enumerate(entries):
        where = f"Bundle.entry[{i}]"
        resource, request, full_url = entry.get("resource"), entry.get("request"), entry.get("fullUrl")
        if resource is not None and not isinstance(resource, dict):
            raise NotificationError(400, f"{where}.resource must be an object, got {shown(resource)}")
        if request is not None and not isinstance(request, dict):
            raise NotificationError(400, f"{where}.request must be an object, got {shown(request)}")
        if isinstance(request, dict):
            for key in ("method", "url"):
                if request.get(key) is not None and not isinstance(request.get(key), str):
                    raise NotificationError(400, f"{where}.request.{key} must be a string")
        if full_url is not None:
            if not isinstance(full_url, str):
                raise NotificationError(400, f"{where}.fullUrl must be a string, got {shown(full_url)}")
            ctx.check_url(full_url, f"{where}.fullUrl")
        _check_claims_agree(entry, where)
    return entries


def _claims(entry: dict[str, Any]) -> list[tuple[str, Reference]]:
    """What the entry says it is: (where, reference) from fullUrl, the resource and request.url."""
    found: list[tuple[str, Reference]] = []
    full = parse_reference(entry.get("fullUrl"))
    if full is not None:
        found.append(("fullUrl", full))
    resource = entry.get("resource")
    if isinstance(resource, dict) and isinstance(resource.get("id"), str):
        own = parse_reference(f"{resource.get('resourceType')}/{resource['id']}")
        if own is not None:
            found.append(("resource", Reference(own.resource_type, own.id, version_of(resource))))
    request = entry.get("request")
    if isinstance(request, dict):
        url = parse_reference(request.get("url"))  # "Patient" (a create) names no id: None
        if url is not None:
            found.append(("request.url", url))
    return found


def _check_claims_agree(entry: dict[str, Any], where: str) -> None:
    claims = _claims(entry)
    for (name_a, a), (name_b, b) in itertools.pairwise(claims):
        if (a.resource_type, a.id) != (b.resource_type, b.id):
            raise NotificationError(
                400, f"{where}: {name_a} names {a.resource_type}/{a.id} but {name_b} names {b.resource_type}/{b.id}"
            )


def entry_version(entry: dict[str, Any]) -> str | None:
    """The resource version an entry carries or names (``meta.versionId``, else a ``/_history/N`` URL)."""
    versions = [ref.version for _, ref in _claims(entry) if ref.version]
    return versions[0] if versions else None


def entry_index(entries: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Entries by exact fullUrl (``urn:uuid`` focus) and by ``Type/id`` (several versions of one resource
    may each have an entry, in order)."""
    index: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        keys = {f"{ref.resource_type}/{ref.id}" for _, ref in _claims(entry)}
        full_url = entry.get("fullUrl")
        if isinstance(full_url, str) and full_url:
            keys.add(full_url)
        for key in keys:
            index.setdefault(key, []).append(entry)
    return index


def find_entry(index: dict[str, list[dict[str, Any]]], focus: str, ref: Reference | None) -> dict[str, Any] | None:
    """The entry of ``focus``: the one of its version when it names one (else one without a version)."""
    candidates = index.get(focus) or (index.get(f"{ref.resource_type}/{ref.id}") if ref else None) or []
    if ref is not None and ref.version:
        same = [e for e in candidates if entry_version(e) == ref.version]
        unversioned = [e for e in candidates if entry_version(e) is None]
        candidates = same or unversioned or candidates
    return candidates[0] if candidates else None


def entry_interaction(entry: dict[str, Any] | None) -> Interaction | None:
    request = entry.get("request") if entry else None
    if isinstance(request, dict):
        return METHOD_INTERACTION.get(str(request.get("method") or "").upper())
    return None
