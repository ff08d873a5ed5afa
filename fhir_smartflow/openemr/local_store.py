"""The "local task store": the sandbox FHIR store in SQLite-file mode, used in-process.

The `openemr` target keeps the canonical Task / Communication / DocumentReference / Flag / Provenance
here, because OpenEMR cannot store them. It talks plain FHIR REST to the sandbox Flask app through
Flask's in-process test client, so it depends only on ``create_sandbox_app(settings, store=None)`` and
FHIR semantics (conditional create with If-None-Exist, read, update, search), not on the store's
Python internals.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from typing import Any
from urllib.parse import urlencode

from fhir_smartflow.config import Settings
from fhir_smartflow.fhir.target import WriteBackTarget

FHIR_JSON = "application/fhir+json"


class LocalStoreError(RuntimeError):
    pass


class LocalFhirStore(WriteBackTarget):
    """WriteBackTarget over the in-process sandbox store (one SQLite file, config [openemr] local_store)."""

    def __init__(self, settings: Settings, app: Any = None) -> None:
        if app is None:
            from fhir_smartflow.sandbox.app import create_sandbox_app  # only a store of our own needs it

            local = dataclasses.replace(
                settings, sandbox=dataclasses.replace(settings.sandbox, database=settings.openemr.local_store)
            )
            # Our own store: lenient whatever [sandbox] profile says (there is no server to imitate).
            app = create_sandbox_app(local, start_notifier=False, faults=False, profile="lenient")
        self.client = app.test_client()
        self.base = ""  # the sandbox app serves FHIR at its own root
        self.identifier_system = settings.fhir.identifier_system
        self._lock = threading.Lock()  # the Flask test client is not meant for concurrent use

    def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        with self._lock:
            resp = self.client.open(
                f"{self.base}/{path}",
                method=method,
                headers={"Accept": FHIR_JSON, **(headers or {})},
                data=json.dumps(body) if body is not None else None,
                content_type=FHIR_JSON if body is not None else None,
            )
        payload = resp.get_json(silent=True)
        if resp.status_code >= 400 and resp.status_code != 404:
            raise LocalStoreError(f"local store {method} {path}: {resp.status_code} {payload}")
        return resp.status_code, payload

    def create(self, resource: dict[str, Any], identifier: str) -> dict[str, Any]:
        return self.create_with_status(resource, identifier)[0]

    def create_with_status(self, resource: dict[str, Any], identifier: str) -> tuple[dict[str, Any], bool | None]:
        """(stored resource, True when created now / False when it already existed)."""
        rtype = resource["resourceType"]
        condition = urlencode({"identifier": f"{self.identifier_system}|{identifier}"})
        status, body = self._call("POST", rtype, resource, {"If-None-Exist": condition})
        if not isinstance(body, dict) or body.get("resourceType") != rtype:
            found = self.search(rtype, {"identifier": f"{self.identifier_system}|{identifier}"})
            if not found:
                raise LocalStoreError(f"local store did not return the {rtype} {identifier}")
            return found[0], status == 201
        return body, status == 201

    def read(self, reference: str) -> dict[str, Any] | None:
        status, body = self._call("GET", reference)
        return body if status == 200 else None

    def update(self, resource: dict[str, Any]) -> dict[str, Any]:
        _, body = self._call("PUT", f"{resource['resourceType']}/{resource['id']}", resource)
        return body

    def search(self, resource_type: str, params: dict[str, str]) -> list[dict[str, Any]]:
        _, bundle = self._call("GET", f"{resource_type}?{urlencode(params)}")
        entries = (bundle or {}).get("entry") or []
        return [e["resource"] for e in entries if e.get("resource", {}).get("resourceType") == resource_type]
