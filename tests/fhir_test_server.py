"""A small, honest in-memory FHIR R4 server for integration tests (until the sandbox store lands).

Real HTTP on a free port (werkzeug in a thread). Supports: create (with If-None-Exist), read, vread,
update, delete, search by identifier / _tag / group-identifier / patient / subject / status (comma = OR) /
_lastUpdated (ge) / _count with next links, and fault injection (the next N requests answer 503 or 429
with Retry-After). Every request is logged so tests can count them.
"""

from __future__ import annotations

import copy
import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

from flask import Flask, Response, json, request
from werkzeug.serving import make_server

FHIR_JSON = "application/fhir+json"


def _outcome(status: int, text: str, code: str = "processing") -> Response:
    body = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code, "diagnostics": text}]}
    return Response(json.dumps(body), status=status, mimetype=FHIR_JSON)


def _unescape_token(raw: str) -> tuple[str | None, str]:
    """``system|value`` with FHIR escapes (``\\|``) → (system, value); no ``|`` → (None, value)."""
    parts: list[str] = []
    current = ""
    chars = iter(raw)
    for ch in chars:
        if ch == "\\":
            current += next(chars, "")
        elif ch == "|":
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    if len(parts) == 1:
        return None, parts[0]
    return parts[0], "|".join(parts[1:])


def _token_match(codings: list[dict[str, Any]], raw: str, value_key: str) -> bool:
    system, value = _unescape_token(raw)
    return any(c.get(value_key) == value and (system is None or c.get("system") == system) for c in codings)


class FhirTestServer:
    def __init__(self, *, minimal_responses: bool = False, conditional_create: bool = True) -> None:
        self.store: dict[str, dict[str, dict[str, Any]]] = {}  # type -> id -> current version
        self.history: dict[str, list[dict[str, Any]]] = {}  # "Type/id" -> versions
        self.deleted: set[str] = set()
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # (method, full path, headers)
        self.faults: list[tuple[int, str | None]] = []
        self.minimal_responses = minimal_responses  # answer writes with no body, only Location
        self.conditional_create = conditional_create
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self.app = self._build_app()
        self._server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.port = self._server.server_port
        self.base_url = f"http://127.0.0.1:{self.port}/fhir"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    # -- lifecycle and test helpers ---------------------------------------------------------------------
    def start(self) -> FhirTestServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=5)

    def fail_next(self, count: int, status: int = 503, retry_after: str | None = "0") -> None:
        with self._lock:
            self.faults.extend([(status, retry_after)] * count)

    def all(self, resource_type: str) -> list[dict[str, Any]]:
        with self._lock:
            return [copy.deepcopy(r) for r in self.store.get(resource_type, {}).values()]

    def put_resource(self, resource: dict[str, Any]) -> dict[str, Any]:
        """Seed a resource directly (no HTTP)."""
        with self._lock:
            return self._save(copy.deepcopy(resource), resource.get("id"))

    def count(self, method: str, path_prefix: str = "") -> int:
        return sum(1 for m, p, _ in self.requests if m == method and p.startswith(path_prefix))

    # -- storage ----------------------------------------------------------------------------------------
    def _save(self, resource: dict[str, Any], rid: str | None) -> dict[str, Any]:
        rtype = resource["resourceType"]
        rid = rid or str(next(self._ids))
        key = f"{rtype}/{rid}"
        versions = self.history.setdefault(key, [])
        resource["id"] = rid
        resource["meta"] = {
            **(resource.get("meta") or {}),
            "versionId": str(len(versions) + 1),
            "lastUpdated": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }
        versions.append(copy.deepcopy(resource))
        self.store.setdefault(rtype, {})[rid] = resource
        self.deleted.discard(key)
        return resource

    def _matches(self, resource: dict[str, Any], params: list[tuple[str, str]]) -> bool:
        for name, raw in params:
            if name.startswith("_") and name not in {"_tag", "_lastUpdated", "_id"}:
                continue
            if name == "_id":
                ok = resource.get("id") in raw.split(",")
            elif name == "identifier":
                ok = _token_match(resource.get("identifier") or [], raw, "value")
            elif name == "_tag":
                ok = _token_match((resource.get("meta") or {}).get("tag") or [], raw, "code")
            elif name == "group-identifier":
                group = resource.get("groupIdentifier")
                ok = bool(group) and _token_match([group], raw, "value")
            elif name in {"patient", "subject"}:
                refs = [(resource.get(f) or {}).get("reference") for f in ("for", "subject", "patient")]
                ok = raw in refs
            elif name == "status":
                ok = resource.get("status") in raw.split(",")
            elif name == "_lastUpdated":
                since = raw[2:] if raw.startswith("ge") else raw
                ok = (resource.get("meta") or {}).get("lastUpdated", "") >= since
            else:
                return False  # unknown parameter: be strict so tests notice
            if not ok:
                return False
        return True

    def _search(self, rtype: str, params: list[tuple[str, str]]) -> list[dict[str, Any]]:
        return [r for r in self.store.get(rtype, {}).values() if self._matches(r, params)]

    # -- HTTP -------------------------------------------------------------------------------------------
    def _json(self, body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        return Response(json.dumps(body), status=status, mimetype=FHIR_JSON, headers=headers or {})

    def _write_response(self, resource: dict[str, Any], status: int) -> Response:
        ref = f"{resource['resourceType']}/{resource['id']}"
        location = f"{self.base_url}/{ref}/_history/{resource['meta']['versionId']}"
        if self.minimal_responses or request.headers.get("Prefer") == "return=minimal":
            return Response(status=status, headers={"Location": location})
        return self._json(resource, status, {"Location": location})

    def _build_app(self) -> Flask:
        app = Flask(__name__)

        @app.before_request
        def _log_and_faults() -> Response | None:
            with self._lock:
                self.requests.append((request.method, request.full_path.rstrip("?"), dict(request.headers)))
                if self.faults:
                    status, retry_after = self.faults.pop(0)
                    resp = _outcome(status, "injected fault", "transient")
                    if retry_after is not None:
                        resp.headers["Retry-After"] = retry_after
                    return resp
            return None

        @app.post("/fhir/<rtype>")
        def create(rtype: str) -> Response:
            resource = request.get_json(force=True, silent=True)
            if not isinstance(resource, dict) or resource.get("resourceType") != rtype:
                return _outcome(400, f"body must be a {rtype} resource", "invalid")
            with self._lock:
                condition = request.headers.get("If-None-Exist")
                if condition and self.conditional_create:
                    matches = self._search(rtype, parse_qsl(condition))
                    if len(matches) > 1:
                        return _outcome(412, "If-None-Exist matched more than one resource", "duplicate")
                    if matches:
                        return self._write_response(matches[0], 200)
                return self._write_response(self._save(resource, None), 201)

        @app.get("/fhir/<rtype>/<rid>")
        def read(rtype: str, rid: str) -> Response:
            with self._lock:
                if f"{rtype}/{rid}" in self.deleted:
                    return _outcome(410, f"{rtype}/{rid} was deleted", "deleted")
                resource = self.store.get(rtype, {}).get(rid)
                if resource is None:
                    return _outcome(404, f"{rtype}/{rid} is not known", "not-found")
                return self._json(resource)

        @app.get("/fhir/<rtype>/<rid>/_history/<vid>")
        def vread(rtype: str, rid: str, vid: str) -> Response:
            with self._lock:
                versions = self.history.get(f"{rtype}/{rid}", [])
                match = next((v for v in versions if v["meta"]["versionId"] == vid), None)
                if match is None:
                    return _outcome(404, f"{rtype}/{rid}/_history/{vid} is not known", "not-found")
                return self._json(match)

        @app.put("/fhir/<rtype>/<rid>")
        def update(rtype: str, rid: str) -> Response:
            resource = request.get_json(force=True, silent=True)
            if not isinstance(resource, dict) or resource.get("resourceType") != rtype or resource.get("id") != rid:
                return _outcome(400, "body must be the resource with the id of the URL", "invalid")
            with self._lock:
                existed = rid in self.store.get(rtype, {})
                return self._write_response(self._save(resource, rid), 200 if existed else 201)

        @app.delete("/fhir/<rtype>/<rid>")
        def delete(rtype: str, rid: str) -> Response:
            with self._lock:
                if self.store.get(rtype, {}).pop(rid, None) is not None:
                    self.deleted.add(f"{rtype}/{rid}")
            return Response(status=204)

        @app.get("/fhir/<rtype>")
        def search(rtype: str) -> Response:
            params = [(k, v) for k, v in parse_qsl(request.query_string.decode(), keep_blank_values=True)]
            count = int(dict(params).get("_count", "2"))  # small pages so paging is exercised
            offset = int(dict(params).get("_offset", "0"))
            with self._lock:
                matches = self._search(rtype, params)
            page = matches[offset : offset + count]
            bundle: dict[str, Any] = {
                "resourceType": "Bundle",
                "type": "searchset",
                "total": len(matches),
                "link": [{"relation": "self", "url": request.url}],
                "entry": [
                    {"fullUrl": f"{self.base_url}/{rtype}/{r['id']}", "resource": r, "search": {"mode": "match"}}
                    for r in page
                ],
            }
            if offset + count < len(matches):
                rest = [(k, v) for k, v in params if k != "_offset"] + [("_offset", str(offset + count))]
                bundle["link"].append({"relation": "next", "url": f"{self.base_url}/{rtype}?{urlencode(rest)}"})
            return self._json(bundle)

        return app


@contextmanager
def running_fhir_server(**kwargs: Any) -> Iterator[FhirTestServer]:
    server = FhirTestServer(**kwargs).start()
    try:
        yield server
    finally:
        server.stop()
