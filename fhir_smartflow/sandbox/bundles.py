"""Transaction and batch Bundles: urn:uuid references rewritten, transactions all-or-nothing."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

from fhir_smartflow.sandbox.errors import BadRequest, SandboxError, error_outcome
from fhir_smartflow.sandbox.operations import Interactions, Result, parse_etag
from fhir_smartflow.sandbox.rules import Resolver, conditional_resolver
from fhir_smartflow.sandbox.store import new_id
from fhir_smartflow.sandbox.validation import validate_resource

# FHIR processing order inside a transaction
_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "GET": 3, "HEAD": 3}


def _rewrite(node: Any, mapping: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {
            k: (mapping.get(v, v) if k == "reference" and isinstance(v, str) else _rewrite(v, mapping))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rewrite(v, mapping) for v in node]
    return node


def _put_targets(entries: list[dict[str, Any]]) -> frozenset[str]:
    """``Type/id`` of the entries that PUT a resource by id (they exist once the transaction ran)."""
    targets = set()
    for entry in entries:
        segments, query = _split_url(entry["request"]["url"])
        if entry["request"]["method"] == "PUT" and len(segments) == 2 and not query:
            targets.add(f"{segments[0]}/{segments[1]}")
    return frozenset(targets)


def _split_url(url: str) -> tuple[list[str], str]:
    path, _, query = url.partition("?")
    return [p for p in path.strip("/").split("/") if p], query


def _status_text(status: int) -> str:
    """``response.status`` as HAPI and Medplum write it: the code and its reason ("404 Not Found")."""
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:  # a code without a registered phrase
        return str(status)


# Entries whose stored resource the ``Prefer: return`` preference governs (reads always carry theirs).
_WRITES = frozenset({"POST", "PUT"})


class BundleProcessor:
    """``resources_by_default``: a write entry's answer carries the stored resource when the client sent
    no ``Prefer: return`` (with ``return=representation`` it always does; with ``minimal`` or
    ``OperationOutcome`` only status, location, etag and lastModified)."""

    def __init__(self, interactions: Interactions, *, resources_by_default: bool = True) -> None:
        self.ops = interactions
        self.store = interactions.store
        self.resources_by_default = resources_by_default

    def process(self, bundle: Any, base_url: str, returned: str | None = None) -> dict[str, Any]:
        """The response Bundle; ``returned``: the request's ``Prefer: return`` value, if any."""
        if not isinstance(bundle, dict) or not isinstance(bundle.get("entry", []), list):
            raise BadRequest("the body must be a Bundle with an entry list")
        # The shell is validated here; each entry's resource when its entry runs, so one bad
        # resource fails its own entry (batch) with the entry index in the message.
        shell = {
            **bundle,
            "entry": [
                {k: v for k, v in e.items() if k != "resource"} for e in bundle.get("entry", []) if isinstance(e, dict)
            ],
        }
        validate_resource(shell, "Bundle")
        kind = bundle.get("type")
        if kind not in {"transaction", "batch"}:
            raise BadRequest(f"Bundle.type must be transaction or batch, got {kind!r}", expression="Bundle.type")
        entries = json.loads(json.dumps(bundle.get("entry") or []))  # our own copy (cheaper than deepcopy)
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise BadRequest(f"Bundle.entry[{i}] must be an object", expression=f"Bundle.entry[{i}]")
            request = entry.get("request") or {}
            if not request.get("method") or not request.get("url"):
                raise BadRequest(f"Bundle.entry[{i}].request needs method and url", expression=f"Bundle.entry[{i}]")
            if request["method"] not in _ORDER:
                raise BadRequest(f"Bundle.entry[{i}].request.method {request['method']} is not supported")
        if kind == "batch":
            results = [self._safe(i, e, base_url, {}) for i, e in enumerate(entries)]
        else:
            with self.store.transaction():
                mapping = self._assign_ids(entries)
                # What this transaction writes counts as existing for the reference checks.
                known = frozenset(mapping.values()) | _put_targets(entries)
                resolve = conditional_resolver(lambda t, q: self.ops.conditional_matches(t, q, "conditional reference"))
                results: list[Result] = [Result(0, None)] * len(entries)
                for i in sorted(range(len(entries)), key=lambda j: _ORDER[entries[j]["request"]["method"]]):
                    try:
                        results[i] = self._entry(entries[i], base_url, mapping, known, resolve)
                    except SandboxError as exc:
                        exc.message = f"Bundle.entry[{i}]: {exc.message} (transaction rolled back)"
                        raise
        with_resource = returned == "representation" or (returned is None and self.resources_by_default)
        return {
            "resourceType": "Bundle",
            "type": f"{kind}-response",
            "entry": [
                _response_entry(result, with_resource or entry["request"]["method"] not in _WRITES)
                for result, entry in zip(results, entries, strict=True)
            ],
        }

    def _assign_ids(self, entries: list[dict[str, Any]]) -> dict[str, str]:
        """urn:uuid fullUrl → Type/id, before anything is written (conditional creates resolve here)."""
        mapping: dict[str, str] = {}
        for entry in entries:
            full_url = entry.get("fullUrl") or ""
            request = entry["request"]
            segments, query = _split_url(request["url"])
            if not full_url.startswith("urn:") or not segments:
                continue
            rtype = segments[0]
            if request["method"] == "POST":
                condition = request.get("ifNoneExist")
                target = None
                if condition:
                    found = self.ops.conditional_matches(rtype, condition, "ifNoneExist")
                    target = found[0]["id"] if found else None
                entry["_assigned"] = target or new_id()
                entry["_exists"] = target is not None
                mapping[full_url] = f"{rtype}/{entry['_assigned']}"
            elif request["method"] == "PUT" and len(segments) == 2 and not query:
                mapping[full_url] = f"{rtype}/{segments[1]}"
        return mapping

    def _safe(self, index: int, entry: dict[str, Any], base_url: str, mapping: dict[str, str]) -> Result:
        try:
            return self._entry(entry, base_url, mapping)
        except SandboxError as exc:
            exc.message = f"Bundle.entry[{index}]: {exc.message}"
            return Result(exc.status, error_outcome(exc))

    def _entry(
        self,
        entry: dict[str, Any],
        base_url: str,
        mapping: dict[str, str],
        known: frozenset[str] = frozenset(),
        resolve: Resolver | None = None,
    ) -> Result:
        request = entry["request"]
        method = request["method"]
        segments, query = _split_url(request["url"])
        if not segments:
            raise BadRequest(f"request.url {request['url']!r} names no resource type")
        rtype = segments[0]
        resource = _rewrite(entry.get("resource"), mapping) if mapping else entry.get("resource")
        if method == "POST":
            if entry.get("_exists"):
                return self.ops.read(rtype, entry["_assigned"], base_url)
            # A transaction resolved ifNoneExist in _assign_ids under the same lock: no second search.
            condition = None if "_exists" in entry else request.get("ifNoneExist")
            return self.ops.create(
                rtype, resource, condition, base_url, entry.get("_assigned"), known=known, resolve=resolve
            )
        if method == "PUT":
            if len(segments) == 2:
                if_match = parse_etag(request.get("ifMatch"))
                return self.ops.update(rtype, segments[1], resource, if_match, base_url, known=known, resolve=resolve)
            if query:
                return self.ops.conditional_update(rtype, query, resource, base_url, known=known, resolve=resolve)
            raise BadRequest("PUT needs Type/id or Type?search")
        if method == "DELETE":
            if len(segments) != 2:
                raise BadRequest("DELETE needs Type/id (conditional delete is not supported)")
            return self.ops.delete(rtype, segments[1])
        # GET / HEAD
        if len(segments) == 1:
            return self.ops.search(rtype, parse_qsl(query, keep_blank_values=True), base_url, strict=False)
        if len(segments) == 2:
            return self.ops.read(rtype, segments[1], base_url)
        if len(segments) == 4 and segments[2] == "_history":
            return self.ops.vread(rtype, segments[1], segments[3], base_url)
        raise BadRequest(f"request.url {request['url']!r} is not supported")


def _response_entry(result: Result, with_resource: bool) -> dict[str, Any]:
    response: dict[str, Any] = {"status": _status_text(result.status)}
    if result.stored is not None:
        response["location"] = result.headers["Location"]
        response["etag"] = result.headers["ETag"]
        response["lastModified"] = result.headers["Last-Modified"]
    entry: dict[str, Any] = {"response": response}
    if result.body is not None:
        if result.body.get("resourceType") == "OperationOutcome" and result.status >= 400:
            response["outcome"] = result.body
        elif with_resource:
            entry["resource"] = result.body
    if result.stored is not None:
        entry["fullUrl"] = result.headers["Location"].rsplit("/_history/", 1)[0]
    return entry
