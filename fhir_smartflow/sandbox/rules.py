"""What a strict profile checks before a write: client-chosen ids, and that every reference resolves to a
live resource of a type the R4 element allows (target types from the R4B models, engine/references.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from fhir_smartflow.engine.references import ANY_RESOURCE, allowed_reference_types
from fhir_smartflow.refs import parse_reference
from fhir_smartflow.sandbox.errors import BadRequest, SandboxError
from fhir_smartflow.sandbox.profiles import Profile
from fhir_smartflow.sandbox.store import Store

# Resolves a conditional reference ``Type?query`` to ``Type/id`` (exactly one match) or raises BadRequest.
Resolver = Callable[[str], str]


# Elements holding whole resources (Bundle.entry.resource, Parameters.parameter.resource, contained): their
# references are theirs, not the written resource's.
_INLINE_RESOURCES = frozenset({"contained", "resource"})


def references(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(element path without indexes, Reference) for every element carrying a string ``reference``."""
    if isinstance(node, list):
        for item in node:
            yield from references(item, path)
        return
    if not isinstance(node, dict):
        return
    if isinstance(node.get("reference"), str) and "." in path:
        yield path, node
    for key, value in node.items():
        if key != "reference" and key not in _INLINE_RESOURCES and isinstance(value, dict | list):
            yield from references(value, f"{path}.{key}")


class WriteRules:
    def __init__(self, store: Store, profile: Profile, base_url: Callable[[], str | None] = lambda: None) -> None:
        self.store = store
        self.profile = profile
        self._base_url = base_url

    def check_new_id(self, resource_type: str, resource_id: str) -> None:
        """Refuse a client-chosen id for a resource that does not exist yet, as the profile's server does."""
        if self.store.exists(resource_type, resource_id):
            return
        refusal = self.profile.client_id(resource_id)
        if refusal:
            raise BadRequest(refusal, expression=f"{resource_type}.id")

    def check_references(
        self, resource: dict[str, Any], known: frozenset[str] = frozenset(), resolve: Resolver | None = None
    ) -> None:
        """Raise BadRequest for a reference the profile's server refuses. ``known``: ``Type/id`` written by the
        same transaction; ``resolve``: conditional references (transactions), rewritten in place."""
        if not (self.profile.check_references or self.profile.check_reference_types):
            return
        rtype = resource["resourceType"]
        for path, ref in references(resource, rtype):
            text = ref["reference"]
            if resolve is not None and "?" in text and not text.startswith(("http://", "https://")):
                ref["reference"] = text = resolve(text)
            local = self._local(text)
            if local is None:
                continue  # urn:uuid, #contained, another server's URL: not ours to judge
            target_type, target_id = local
            if self.profile.check_reference_types:
                self._check_type(rtype, path, target_type)
            wanted = f"{target_type}/{target_id}"
            if self.profile.check_references and wanted not in known and not self.store.exists(target_type, target_id):
                raise BadRequest(f"Invalid reference (Not found) ({path}: {text})", expression=path)

    def _local(self, text: str) -> tuple[str, str] | None:
        if text.startswith(("http://", "https://")):
            base = self._base_url()
            if not base or not text.startswith(base.rstrip("/") + "/"):
                return None
            text = text[len(base.rstrip("/")) + 1 :]
        parsed = parse_reference(text)
        return None if parsed is None else (parsed.resource_type, parsed.id)

    @staticmethod
    def _check_type(rtype: str, path: str, target_type: str) -> None:
        allowed = allowed_reference_types(rtype, path.split(".", 1)[1])
        if allowed is None or ANY_RESOURCE in allowed or target_type in allowed:
            return
        raise BadRequest(
            f"Invalid reference: got {target_type}, expected {', '.join(allowed)} ({path})", expression=path
        )


def conditional_resolver(search: Callable[[str, str], list[dict[str, Any]]]) -> Resolver:
    """A Resolver over ``search(resource_type, query)`` (Interactions.conditional_matches)."""

    def resolve(reference: str) -> str:
        rtype, _, query = reference.partition("?")
        try:
            found = search(rtype, query)
        except SandboxError as exc:
            raise BadRequest(f"conditional reference {reference!r}: {exc.message}") from None
        if len(found) != 1:
            raise BadRequest(f"Invalid reference: conditional reference {reference!r} matches no {rtype}")
        return f"{rtype}/{found[0]['id']}"

    return resolve
