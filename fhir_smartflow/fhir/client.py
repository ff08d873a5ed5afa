"""The one FHIR REST client: reads, searches with paging, conditional writes, transactions, operations.

Every request goes through one ``Transport`` (fhir/transport.py): the URL guard of fhir/urls.py (so a
``next`` link or ``Location`` outside the base is refused), the bearer token of the configured
``TokenProvider`` (fhir/auth.py builds it from ``[fhir] auth``), timeouts, retries with backoff on
connection errors, 429 and 5xx (Retry-After honoured; a POST without ``If-None-Exist`` only when the
server cannot have acted on it) and the ``fhir_requests`` metric. Other 4xx raise the typed error of
fhir/errors.py at once. The CapabilityStatement is read once per client and kept.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qsl, urljoin

import requests

from fhir_smartflow.config import Settings
from fhir_smartflow.connections import connect_host
from fhir_smartflow.fhir.auth import EngineSource, build_auth, retry_policy
from fhir_smartflow.fhir.errors import FhirError, FhirForbidden, FhirUnavailable, error_for_status
from fhir_smartflow.fhir.scopes import forbidden_hint, grant_context, request_scopes
from fhir_smartflow.fhir.tokens import TokenProvider
from fhir_smartflow.fhir.transport import Session, Transport, idempotent_method
from fhir_smartflow.fhir.urls import BaseUrl
from fhir_smartflow.metrics import Metrics
from fhir_smartflow.refs import RESOURCE_TYPE_RE, split_reference
from fhir_smartflow.retry import RetryPolicy

log = logging.getLogger(__name__)

_MAX_PAGES = 1000
_REPRESENTATION = {"Prefer": "return=representation"}  # the stored resource in the answer to a write


class FhirClient:
    def __init__(
        self,
        base_url: str,
        *,
        auth: TokenProvider | None = None,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        metrics: Metrics | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.http = Transport(
            base_url, auth=auth, timeout=timeout, retry=retry, session=session, sleep=sleep, metrics=metrics, rng=rng
        )
        self._capabilities: dict[str, Any] | None = None
        self._no_capabilities = False  # the server has no CapabilityStatement (a permanent error)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        metrics: Metrics | None = None,
        session: requests.Session | None = None,
        *,
        env: Mapping[str, str] | None = None,
        engine: EngineSource | None = None,
    ) -> FhirClient:
        """The client for ``[fhir]``; an empty base_url means the embedded sandbox store. ``env``: where
        secrets are read (default the process environment); ``engine``: the loaded flows, when the token's
        scopes are computed from them (default: loaded from ``[engine]`` when the first token is needed)."""
        base = settings.fhir.base_url or sandbox_base_url(settings)
        session = session or Session()
        return cls(
            base,
            auth=build_auth(settings, base, session=session, env=env, engine=engine),
            timeout=settings.fhir.timeout_seconds,
            retry=retry_policy(settings.fhir),
            session=session,
            metrics=metrics,
        )

    @classmethod
    def asking_once(cls, settings: Settings) -> FhirClient:
        """The client for ``[fhir]`` without retries: for a check at start, which must not wait through the
        retry backoff (the service starts anyway; ``doctor`` asks again)."""
        return cls.from_settings(replace(settings, fhir=replace(settings.fhir, max_retries=0)))

    @property
    def base(self) -> BaseUrl:
        return self.http.base

    @property
    def retry(self) -> RetryPolicy:
        return self.http.retry

    @property
    def session(self) -> requests.Session:
        return self.http.session

    @property
    def base_url(self) -> str:
        return self.base.url

    # -- reads ------------------------------------------------------------------------------------
    def read(self, reference: str) -> dict[str, Any] | None:
        """The resource at a reference (``Patient/1`` or an absolute URL under the base); None if 404/410."""
        url = self.base.resolve(reference)
        return self._get_or_none(url)

    def vread(self, resource_type: str, resource_id: str, version: str) -> dict[str, Any] | None:
        split_reference(f"{resource_type}/{resource_id}/_history/{version}")  # validates the parts
        return self._get_or_none(self.base.join(f"{resource_type}/{resource_id}/_history/{version}"))

    def get_url(self, url: str) -> dict[str, Any]:
        """GET an absolute URL (e.g. a ``next`` link); refused unless it lies under the base."""
        return self._json(self.request("GET", self.base.check(url)))

    def search_pages(self, resource_type: str, params: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Every searchset Bundle page, following ``Bundle.link[next]`` (guarded)."""
        _check_type(resource_type)
        bundle = self._json(self.request("GET", self.base.join(resource_type), params=params or {}))
        seen: set[str] = set()
        for _ in range(_MAX_PAGES):
            yield bundle
            nxt = next((lk.get("url") for lk in bundle.get("link") or [] if lk.get("relation") == "next"), None)
            if not nxt or nxt in seen:
                return
            seen.add(nxt)
            bundle = self.get_url(nxt)
        log.warning("fhir: stopped paging %s after %d pages", resource_type, _MAX_PAGES)

    def search(self, resource_type: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """All matching resources over all pages (``_include``d resources are left out)."""
        found: list[dict[str, Any]] = []
        for bundle in self.search_pages(resource_type, params):
            for entry in bundle.get("entry") or []:
                mode = (entry.get("search") or {}).get("mode", "match")
                if mode == "match" and isinstance(entry.get("resource"), dict):
                    found.append(entry["resource"])
        return found

    def capabilities(self, refresh: bool = False) -> dict[str, Any]:
        """The server's CapabilityStatement, read once and kept (``refresh`` reads it again)."""
        if self._capabilities is None or refresh:
            self._capabilities = self._json(self.request("GET", self.base.join("metadata")))
        return self._capabilities

    def supports_interaction(self, code: str) -> bool:
        """True when the CapabilityStatement lists the system interaction ``code`` (``transaction``,
        ``batch``). Asked once per client (one per process): a server that has no statement (a permanent
        error) is not asked again; after a transient error the next call asks again."""
        if self._no_capabilities:
            return False
        try:
            statement = self.capabilities()
        except FhirError as exc:
            log.warning("fhir: CapabilityStatement not available (%s); going without %s Bundles", exc, code)
            self._no_capabilities = not exc.transient
            return False
        return any(
            interaction.get("code") == code
            for rest in statement.get("rest") or []
            if rest.get("mode", "server") == "server"
            for interaction in rest.get("interaction") or []
        )

    def batch_read(self, references: Sequence[str]) -> list[dict[str, Any]]:
        """GET each relative ``Type/id[/_history/v]`` in ONE ``batch`` Bundle (POST to the base, so every
        entry resolves under it). The response entries, in order; FhirError when the answer is not one
        entry per read (each entry's own status is the caller's to judge)."""
        for reference in references:
            split_reference(reference)  # validates the parts: nothing else goes into an entry url
        entries = [{"request": {"method": "GET", "url": reference}} for reference in references]
        answer = self.transaction({"resourceType": "Bundle", "type": "batch", "entry": entries})
        found = answer.get("entry") or []
        if not isinstance(found, list) or len(found) != len(entries) or not all(isinstance(e, dict) for e in found):
            count = len(found) if isinstance(found, list) else "no list of"
            raise FhirError(f"a batch of {len(entries)} reads was answered with {count} entries", status=None)
        return found

    # -- writes -----------------------------------------------------------------------------------
    def create(self, resource: dict[str, Any], if_none_exist: str | None = None) -> tuple[dict[str, Any], bool]:
        """POST the resource; with ``if_none_exist`` (a query string) the server creates it only when
        nothing matches. Returns (stored resource, created?)."""
        rtype = _check_type(resource.get("resourceType"))
        headers = dict(_REPRESENTATION)
        if if_none_exist:
            headers["If-None-Exist"] = if_none_exist
        resp = self.request(
            "POST", self.base.join(rtype), json=resource, headers=headers, idempotent=bool(if_none_exist)
        )
        created = resp.status_code == 201
        stored = self._written(resp, rtype)
        if stored is None and if_none_exist:  # 200 with no body and no Location: find the match
            matches = self.search(rtype, _query_dict(if_none_exist))
            stored = matches[0] if matches else None
        if stored is None:
            raise FhirError(
                f"POST {rtype} answered {resp.status_code} without a body or Location", status=resp.status_code
            )
        return stored, created

    def update(self, resource: dict[str, Any], condition: str | None = None) -> dict[str, Any]:
        """PUT ``Type/id``, or ``Type?condition`` (conditional update)."""
        rtype = _check_type(resource.get("resourceType"))
        if condition:
            url = self.base.join(f"{rtype}?{condition}")
        else:
            rid = resource.get("id")
            split_reference(f"{rtype}/{rid}")
            url = self.base.join(f"{rtype}/{rid}")
        resp = self.request("PUT", url, json=resource, headers=_REPRESENTATION)
        stored = self._written(resp, rtype)
        if stored is None and resource.get("id"):
            stored = self.read(f"{rtype}/{resource['id']}")
        if stored is None:
            raise FhirError(
                f"PUT {rtype} answered {resp.status_code} without a body or Location", status=resp.status_code
            )
        return stored

    def delete(self, reference: str) -> None:
        split_reference(self.base.relative(reference))
        self.request("DELETE", self.base.resolve(reference))

    def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]:
        """POST a transaction Bundle to the base; retried only when every entry is conditional or a PUT.
        Asks for the stored resources in the answer (``Prefer: return=representation``): HAPI FHIR puts
        them in only then, and without them every written entry would be read back one GET each."""
        if bundle.get("resourceType") != "Bundle" or bundle.get("type") not in {"transaction", "batch"}:
            raise ValueError("transaction() needs a Bundle of type transaction or batch")
        idempotent = all(
            (e.get("request") or {}).get("method") in {"GET", "PUT", "DELETE"}
            or (e.get("request") or {}).get("ifNoneExist")
            for e in bundle.get("entry") or []
        )
        return self._json(
            self.request("POST", self.base.url, json=bundle, headers=_REPRESENTATION, idempotent=idempotent)
        )

    def operation(
        self,
        path: str,
        params: dict[str, Any] | None = None,
        *,
        method: str = "GET",
        body: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Invoke an operation, e.g. ``Subscription/x/$events`` (GET with params, or POST Parameters)."""
        url = self.base.join(path)
        if method == "GET":
            return self._json(self.request("GET", url, params=params or {}))
        return self._json(self.request(method, url, params=params or {}, json=body, idempotent=False))

    # -- the request ----------------------------------------------------------------------------------
    def request(
        self,
        method: str,
        url: str,
        *,
        params: dict[str, Any] | None = None,
        json: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        idempotent: bool | None = None,
    ) -> requests.Response:
        """One logical request (guarded, authenticated, retried); a 2xx response or a typed FhirError."""
        if idempotent is None:
            idempotent = idempotent_method(method)
        resp = self.http.send(method, url, params=params, json=json, headers=headers, idempotent=idempotent)
        status = resp.status_code
        if status < 300:
            return resp
        err = error_for_status(status, resp.content, url=url, method=method, headers=dict(resp.headers))
        if isinstance(err, FhirForbidden):
            err = self._forbidden(err, method, url, json)
        if self.http.retryable(status, idempotent):
            raise FhirUnavailable(
                f"{err.message} (gave up after {self.retry.max_retries + 1} attempts)",
                status=status,
                outcome=err.outcome,
                url=url,
                method=method,
            )
        raise err

    def _forbidden(self, err: FhirForbidden, method: str, url: str, body: dict[str, Any] | None) -> FhirForbidden:
        """The 403 with the scope the token probably lacks for this request (the server's text kept)."""
        granted = self.http.auth.granted_scopes() if self.http.auth is not None else ""
        needed = request_scopes(method, self.base.relative(url), body, grant_context(granted))
        hint = forbidden_hint(granted, needed)
        return FhirForbidden(err.message + hint, status=err.status, outcome=err.outcome, url=url, method=method)

    def _get_or_none(self, url: str) -> dict[str, Any] | None:
        try:
            return self._json(self.request("GET", url))
        except FhirError as exc:
            if exc.status in (404, 410):
                return None
            raise

    def _written(self, resp: requests.Response, rtype: str) -> dict[str, Any] | None:
        """The stored resource from a write response: its body, else what Location points at."""
        if resp.content:
            body = self._json(resp)
            if body.get("resourceType") == rtype:
                return body
        location = resp.headers.get("Location") or resp.headers.get("Content-Location")
        if location:
            return self.read(self.base.relative(urljoin(self.base.url + "/", location)))
        return None

    @staticmethod
    def _json(resp: requests.Response) -> dict[str, Any]:
        if not resp.content:
            return {}
        try:
            data = resp.json()
        except ValueError:
            raise FhirError(
                f"{resp.request.method} {resp.url} answered {resp.status_code} with a body that is not JSON",
                status=resp.status_code,
            ) from None
        if not isinstance(data, dict):
            raise FhirError(
                f"{resp.url} answered a JSON {type(data).__name__}, not a resource", status=resp.status_code
            )
        return data


def sandbox_base_url(settings: Settings) -> str:
    """Where ``serve`` mounts the embedded sandbox store when no FHIR base is configured."""
    return f"http://{connect_host(settings.server.host)}:{settings.server.port}{settings.sandbox.path}"


def _check_type(resource_type: Any) -> str:
    if not isinstance(resource_type, str) or not RESOURCE_TYPE_RE.match(resource_type):
        raise ValueError(f"not a FHIR resource type: {resource_type!r}")
    return resource_type


def _query_dict(query: str) -> dict[str, str]:
    return dict(parse_qsl(query, keep_blank_values=True))
