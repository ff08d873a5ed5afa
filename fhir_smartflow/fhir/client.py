"""The one FHIR REST client: base URL, auth, timeouts, retries, paging, conditional writes, SSRF guard.

Every URL goes through ``BaseUrl`` (fhir/urls.py) before a request is made. Retries follow
``RetryPolicy`` on connection errors, timeouts, 429 and 5xx (Retry-After honoured); other 4xx raise the
typed error from fhir/errors.py at once. A POST that is not idempotent (no ``If-None-Exist``) is only
retried when the server cannot have acted on it (connect failures, 429, 503).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qsl, urljoin

import requests
import urllib3

from fhir_smartflow.config import Settings
from fhir_smartflow.defaults import FHIR_JSON
from fhir_smartflow.fhir.errors import FhirError, FhirUnavailable, error_for_status
from fhir_smartflow.fhir.urls import BaseUrl
from fhir_smartflow.metrics import Metrics
from fhir_smartflow.refs import RESOURCE_TYPE_RE, split_reference
from fhir_smartflow.retry import RETRYABLE_STATUS, RetryPolicy

log = logging.getLogger(__name__)

_REDIRECTS = {301, 302, 303, 307, 308}
_MAX_REDIRECTS = 3
_MAX_PAGES = 1000
# Statuses that tell us a non-idempotent request was not carried out, so sending it again is safe.
_NOT_PROCESSED = {429, 503}


class FhirClient:
    def __init__(
        self,
        base_url: str,
        *,
        auth: requests.auth.AuthBase | None = None,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        metrics: Metrics | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.base = BaseUrl(base_url)
        self.auth = auth
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.session = session or requests.Session()
        self.sleep = sleep
        self.metrics = metrics
        self.rng = rng

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics | None = None) -> FhirClient:
        """The client for ``[fhir]``; an empty base_url means the embedded sandbox store."""
        from fhir_smartflow.fhir.auth import build_auth

        base = settings.fhir.base_url or sandbox_base_url(settings)
        session = requests.Session()
        return cls(
            base,
            auth=build_auth(settings, base, session=session),
            timeout=settings.fhir.timeout_seconds,
            retry=RetryPolicy(
                max_retries=settings.fhir.max_retries,
                base_seconds=settings.fhir.backoff_base_seconds,
                max_seconds=settings.fhir.backoff_max_seconds,
            ),
            session=session,
            metrics=metrics,
        )

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

    def capabilities(self) -> dict[str, Any]:
        return self._json(self.request("GET", self.base.join("metadata")))

    # -- writes -----------------------------------------------------------------------------------
    def create(self, resource: dict[str, Any], if_none_exist: str | None = None) -> tuple[dict[str, Any], bool]:
        """POST the resource; with ``if_none_exist`` (a query string) the server creates it only when
        nothing matches. Returns (stored resource, created?)."""
        rtype = _check_type(resource.get("resourceType"))
        headers = {"Prefer": "return=representation"}
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
        resp = self.request("PUT", url, json=resource, headers={"Prefer": "return=representation"})
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
        """POST a transaction Bundle to the base; retried only when every entry is conditional or a PUT."""
        if bundle.get("resourceType") != "Bundle" or bundle.get("type") not in {"transaction", "batch"}:
            raise ValueError("transaction() needs a Bundle of type transaction or batch")
        idempotent = all(
            (e.get("request") or {}).get("method") in {"GET", "PUT", "DELETE"}
            or (e.get("request") or {}).get("ifNoneExist")
            for e in bundle.get("entry") or []
        )
        return self._json(self.request("POST", self.base.url, json=bundle, idempotent=idempotent))

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

    # -- the request loop -------------------------------------------------------------------------
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
        """One logical request: guarded, authenticated, retried; returns a 2xx response or raises."""
        url = self.base.check(url)
        if idempotent is None:
            idempotent = method in {"GET", "HEAD", "PUT", "DELETE"}
        all_headers = {"Accept": FHIR_JSON}
        if json is not None:
            all_headers["Content-Type"] = FHIR_JSON
        all_headers.update(headers or {})
        attempt = 0
        reauthed = False
        redirects = 0
        while True:
            attempt += 1
            try:
                resp = self.session.request(
                    method,
                    url,
                    params=params,
                    json=json,
                    headers=all_headers,
                    auth=self.auth,
                    timeout=self.timeout,
                    allow_redirects=False,
                )
            except requests.RequestException as exc:
                self._count(method, "error")
                retryable = isinstance(exc, requests.ConnectionError | requests.Timeout) and (
                    idempotent or _never_sent(exc)
                )
                if retryable and self.retry.should_retry(attempt):
                    self._wait(attempt, None, f"{method} {url}: {type(exc).__name__}")
                    continue
                raise FhirUnavailable(
                    f"{method} {url} failed after {attempt} attempt(s): {type(exc).__name__}: {exc}",
                    url=url,
                    method=method,
                ) from exc
            self._count(method, str(resp.status_code))
            status = resp.status_code
            if status < 300:
                return resp
            if status in _REDIRECTS and redirects < _MAX_REDIRECTS and resp.headers.get("Location"):
                redirects += 1
                url = self.base.check(urljoin(url, resp.headers["Location"]))
                params = None  # the Location carries its own query
                attempt -= 1
                continue
            if status == 401 and not reauthed and hasattr(self.auth, "invalidate"):
                reauthed = True
                self.auth.invalidate()  # type: ignore[union-attr]
                attempt -= 1
                continue
            retryable = status in RETRYABLE_STATUS and (idempotent or status in _NOT_PROCESSED)
            if retryable and self.retry.should_retry(attempt):
                self._wait(attempt, resp.headers.get("Retry-After"), f"{method} {url}: {status}")
                continue
            err = error_for_status(status, resp.content, url=url, method=method, headers=dict(resp.headers))
            if retryable:
                raise FhirUnavailable(
                    f"{err.message} (gave up after {attempt} attempts)",
                    status=status,
                    outcome=err.outcome,
                    url=url,
                    method=method,
                )
            raise err

    def _wait(self, attempt: int, retry_after: str | None, why: str) -> None:
        delay = self.retry.delay(attempt, retry_after, rng=self.rng)
        log.info("fhir: retry %d in %.2fs (%s)", attempt, delay, why)
        self.sleep(delay)

    def _count(self, method: str, status: str) -> None:
        if self.metrics is not None:
            try:
                self.metrics.inc("fhir_requests", method=method, status=status)
            except Exception:  # metrics must never break a FHIR call
                log.debug("fhir: could not record metric", exc_info=True)

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


def _never_sent(exc: requests.RequestException) -> bool:
    """True when the request cannot have reached the server (no connection was made)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, urllib3.exceptions.NewConnectionError)


def sandbox_base_url(settings: Settings) -> str:
    """Where ``serve`` mounts the embedded sandbox store when no FHIR base is configured."""
    host = settings.server.host
    if host in {"0.0.0.0", "::", ""}:  # listening on all interfaces: talk to ourselves on loopback
        host = "127.0.0.1"
    return f"http://{host}:{settings.server.port}{settings.sandbox.path}"


def _check_type(resource_type: Any) -> str:
    if not isinstance(resource_type, str) or not RESOURCE_TYPE_RE.match(resource_type):
        raise ValueError(f"not a FHIR resource type: {resource_type!r}")
    return resource_type


def _query_dict(query: str) -> dict[str, str]:
    return dict(parse_qsl(query, keep_blank_values=True))
