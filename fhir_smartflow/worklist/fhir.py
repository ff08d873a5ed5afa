"""FHIR calls as the signed-in user (their bearer token), so the EHR's own permissions and audit apply."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import requests

TIMEOUT = 15
MAX_PAGES = 20


class FhirError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class UserFhir:
    base: str
    token: str
    http: requests.Session

    def _call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = path if path.startswith(self.base.rstrip("/") + "/") else f"{self.base.rstrip('/')}/{path.lstrip('/')}"
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/fhir+json"}
        headers.update(kwargs.pop("headers", {}))
        try:
            answer = self.http.request(method, url, headers=headers, timeout=TIMEOUT, **kwargs)
        except requests.RequestException as exc:
            raise FhirError(502, f"the FHIR server is unreachable ({type(exc).__name__})") from None
        if answer.status_code >= 400:
            raise FhirError(answer.status_code, f"the FHIR server answered HTTP {answer.status_code} to {method}")
        return answer

    def read(self, rtype: str, rid: str) -> tuple[dict[str, Any], str | None]:
        answer = self._call("GET", f"{rtype}/{rid}")
        return answer.json(), answer.headers.get("ETag")

    def search(self, rtype: str, params: dict[str, str]) -> Iterator[dict[str, Any]]:
        answer = self._call("GET", rtype, params=params)
        for _ in range(MAX_PAGES):
            bundle = answer.json()
            for entry in bundle.get("entry") or []:
                resource = entry.get("resource") or {}
                if resource.get("resourceType") == rtype:
                    yield resource
            following = next((link["url"] for link in bundle.get("link") or [] if link.get("relation") == "next"), None)
            if not following:
                return
            if not following.startswith(self.base.rstrip("/") + "/"):
                # The user's token goes to the FHIR base only, never to a host a paging link names.
                raise FhirError(502, "the FHIR server's next-page link leaves its base URL")
            answer = self._call("GET", following)

    def versions(self, rtype: str, rid: str) -> list[dict[str, Any]]:
        """The resource's versions (its ``_history``), as the server lists them."""
        bundle = self._call("GET", f"{rtype}/{rid}/_history").json()
        return [e["resource"] for e in bundle.get("entry") or [] if isinstance(e.get("resource"), dict)]

    def update(self, resource: dict[str, Any], etag: str | None) -> dict[str, Any]:
        headers = {"Content-Type": "application/fhir+json", "Prefer": "return=representation"}
        if etag:
            headers["If-Match"] = etag
        answer = self._call("PUT", f"{resource['resourceType']}/{resource['id']}", json=resource, headers=headers)
        return answer.json() if answer.content else resource

    def create(self, resource: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/fhir+json", "Prefer": "return=representation"}
        answer = self._call("POST", resource["resourceType"], json=resource, headers=headers)
        return answer.json() if answer.content else resource
