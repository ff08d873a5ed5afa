"""One HTTP path to one configured server: URL guard, bearer token, timeouts, retries, redirects, metrics.

``FhirClient`` (FHIR semantics, typed errors) and OpenEMR's ``StandardApi`` (its own envelope and errors)
both send through a ``Transport``; so does SMART discovery (without a token). What it does per request:

* every URL, and every redirect ``Location``, goes through ``BaseUrl.check`` (fhir/urls.py) first;
* ``Authorization: Bearer <token>`` from the ``TokenProvider``; a 401 invalidates that token and the
  request is sent once more with a fresh one (a provider that cannot renew, a static bearer token, raises
  from ``invalidate`` instead, and nothing is sent again);
* connection errors, timeouts, 429 and 5xx are retried as ``RetryPolicy`` says (Retry-After honoured); a
  request that is not idempotent is only resent when the server cannot have acted on it (no connection
  was made, 429, 503);
* each answer is counted in the ``metric`` counter by method and status.

``send`` returns the final response whatever its status (callers map statuses to their own errors) and
raises ``FhirUnavailable`` / ``FhirTimeout`` when no answer came.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
from requests.cookies import RequestsCookieJar
from requests.sessions import merge_hooks
from requests.structures import CaseInsensitiveDict

from fhir_smartflow.defaults import FHIR_JSON
from fhir_smartflow.fhir.errors import FhirError, FhirTimeout, FhirUnavailable
from fhir_smartflow.fhir.tokens import TokenProvider
from fhir_smartflow.fhir.urls import BaseUrl
from fhir_smartflow.metrics import Metrics
from fhir_smartflow.retry import RETRYABLE_STATUS, RetryPolicy

log = logging.getLogger(__name__)

_REDIRECTS = {301, 302, 303, 307, 308}
_MAX_REDIRECTS = 3
# Statuses that tell us a non-idempotent request was not carried out, so sending it again is safe.
_NOT_PROCESSED = {429, 503}
_IDEMPOTENT_METHODS = {"GET", "HEAD", "PUT", "DELETE"}


def idempotent_method(method: str) -> bool:
    return method in _IDEMPOTENT_METHODS


class Session(requests.Session):
    """A ``requests.Session`` that reads the environment's proxy and CA-bundle settings once per host.

    requests looks them up on every request (``merge_environment_settings``: the whole environment
    scanned for ``*_proxy``, ``no_proxy`` matched against the host), ≈ 0.15 ms of CPU per request, more
    than the rest of a small FHIR POST's client-side work. The answer depends only on the host and on the
    session's own settings, so it is kept per (scheme, host, settings); variables changed after the
    first request to a host are not seen. Explicit ``proxies`` and ``trust_env = False`` go to requests.
    """

    def __init__(self) -> None:
        super().__init__()
        self._environment: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._netrc: dict[tuple[str, str], tuple[str, str] | None] = {}

    def prepare_request(self, request: requests.Request) -> requests.PreparedRequest:
        """``requests.Session.prepare_request`` without its per-request overhead when the session holds
        no cookies, auth or params of its own (a FHIR client's case): the same merge of headers, the
        netrc lookup kept per (scheme, host) like the environment, no cookie jars merged. ≈ 0.1 ms of
        CPU per request, most of it in requests' generic ``merge_setting`` (a slow runtime Protocol
        ``isinstance`` per call) and the netrc file lookup. Anything else goes to requests."""
        if self.cookies or request.cookies or self.auth or self.params or not isinstance(request.headers, dict):
            return super().prepare_request(request)
        url = request.url
        auth = request.auth
        if self.trust_env and not auth:
            parts = urlsplit(url)
            host = (parts.scheme, parts.netloc)
            if host not in self._netrc:
                self._netrc[host] = requests.utils.get_netrc_auth(url)
            auth = self._netrc[host]
        headers = CaseInsensitiveDict(self.headers)
        headers.update(request.headers)
        for name in [name for name, value in headers.items() if value is None]:
            del headers[name]  # as requests' merge: None removes a session header
        params = request.params
        prepared = requests.PreparedRequest()
        prepared.prepare(
            method=request.method.upper(),
            url=url,
            files=request.files,
            data=request.data,
            json=request.json,
            headers=headers,
            params={k: v for k, v in params.items() if v is not None} if isinstance(params, dict) else params,
            auth=auth,
            cookies=RequestsCookieJar(),
            hooks=merge_hooks(request.hooks, self.hooks),
        )
        return prepared

    def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any) -> dict[str, Any]:
        if proxies or not self.trust_env:
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        parts = urlsplit(url)
        key = (
            parts.scheme,
            parts.netloc,
            stream,
            verify,
            cert,
            self.stream,
            self.verify,
            self.cert,
            tuple(sorted(self.proxies.items())),
        )
        known = self._environment.get(key)
        if known is None:
            known = self._environment[key] = super().merge_environment_settings(url, {}, stream, verify, cert)
        return {**known, "proxies": dict(known["proxies"])}  # requests may change the dict it is handed


class Transport:
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
        media_type: str = FHIR_JSON,
        metric: str = "fhir_requests",
    ) -> None:
        self.base = BaseUrl(base_url)
        self.auth = auth
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.session = session or Session()
        self.sleep = sleep
        self.metrics = metrics
        self.rng = rng
        self.media_type = media_type
        self.metric = metric

    def retryable(self, status: int, idempotent: bool) -> bool:
        """Whether an answer with ``status`` is retried (so, when it is final, retries ran out)."""
        return status in RETRYABLE_STATUS and (idempotent or status in _NOT_PROCESSED)

    def send(
        self,
        method: str,
        url: str,
        *,
        params: dict[str, Any] | None = None,
        json: dict[str, Any] | None = None,
        files: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        idempotent: bool | None = None,
    ) -> requests.Response:
        """One logical request: guarded, authenticated, retried; the final response, whatever its status."""
        url = self.base.check(url)
        if idempotent is None:
            idempotent = idempotent_method(method)
        all_headers = {"Accept": self.media_type}
        if json is not None:
            all_headers["Content-Type"] = self.media_type
        all_headers.update(headers or {})
        attempt = 0
        reauthed = False
        redirects = 0
        while True:
            attempt += 1
            token = self.auth.token() if self.auth is not None else None
            if token is not None:
                all_headers["Authorization"] = f"Bearer {token}"
            try:
                resp = self.session.request(
                    method,
                    url,
                    params=params,
                    json=json,
                    files=files,
                    headers=all_headers,
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
                unanswered = FhirTimeout if _no_answer(exc) else FhirUnavailable
                raise unanswered(
                    f"{method} {url} failed after {attempt} attempt(s): {type(exc).__name__}: {exc}",
                    url=url,
                    method=method,
                ) from exc
            self._count(method, str(resp.status_code))
            status = resp.status_code
            if status in _REDIRECTS and redirects < _MAX_REDIRECTS and resp.headers.get("Location"):
                redirects += 1
                url = self.base.check(urljoin(url, resp.headers["Location"]))
                params = None  # the Location carries its own query
                attempt -= 1
                continue
            if status == 401 and token is not None and self.auth is not None and not reauthed:
                reauthed = True
                try:
                    self.auth.invalidate(token)
                except FhirError as exc:  # the token cannot be renewed: say which request it failed on
                    exc.url, exc.method = exc.url or url, exc.method or method
                    raise
                attempt -= 1
                continue
            if self.retryable(status, idempotent) and self.retry.should_retry(attempt):
                self._wait(attempt, resp.headers.get("Retry-After"), f"{method} {url}: {status}")
                continue
            return resp

    def _wait(self, attempt: int, retry_after: str | None, why: str) -> None:
        delay = self.retry.delay(attempt, retry_after, rng=self.rng)
        log.info("%s: retry %d in %.2fs (%s)", self.base.netloc, attempt, delay, why)
        self.sleep(delay)

    def _count(self, method: str, status: str) -> None:
        if self.metrics is not None:
            try:
                self.metrics.inc(self.metric, method=method, status=status)
            except Exception:  # metrics must never break a request
                log.debug("could not record metric %s", self.metric, exc_info=True)


def _never_sent(exc: requests.RequestException) -> bool:
    """True when the request cannot have reached the server (no connection was made)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    cause = exc.args[0] if exc.args else None
    return isinstance(cause, urllib3.exceptions.MaxRetryError) and isinstance(
        cause.reason, urllib3.exceptions.NewConnectionError
    )


def _no_answer(exc: requests.RequestException) -> bool:
    """A read timeout: the request went out and no answer came (a connect timeout is a connection error)."""
    return isinstance(exc, requests.Timeout) and not isinstance(exc, requests.ConnectionError)
