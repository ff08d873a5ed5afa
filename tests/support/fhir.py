"""The sandbox FHIR store in tests: serving it, seeding and reading it over HTTP, and the server variants
some tests need (a request log, no transaction support, bodiless write answers).

The variants are WSGI wrappers around the real sandbox app: the store does all the FHIR work, the
wrapper only changes one capability the way another server would have it.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import requests
from werkzeug.datastructures import EnvironHeaders
from werkzeug.wrappers import Response

from fhir_smartflow.config import Settings
from fhir_smartflow.sandbox.app import create_sandbox_app
from tests.support.net import ThreadedWsgiServer, wait_for

FHIR = {"Content-Type": "application/fhir+json"}
WsgiApp = Callable[..., Iterable[bytes]]


class LoggedRequest(NamedTuple):
    method: str
    path: str  # with the query string, if any
    headers: dict[str, str]


class RequestLog:
    """WSGI middleware: records every request (method, path, headers) before the app answers it."""

    def __init__(self, app: WsgiApp) -> None:
        self.app = app
        self._lock = threading.Lock()
        self._requests: list[LoggedRequest] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        query = environ.get("QUERY_STRING")
        path = environ.get("PATH_INFO", "") + (f"?{query}" if query else "")
        entry = LoggedRequest(environ["REQUEST_METHOD"], path, dict(EnvironHeaders(environ)))
        with self._lock:
            self._requests.append(entry)
        return self.app(environ, start_response)

    @property
    def requests(self) -> list[LoggedRequest]:
        with self._lock:
            return list(self._requests)

    def count(self, method: str, path_prefix: str = "") -> int:
        return sum(1 for r in self.requests if r.method == method and r.path.startswith(path_prefix))


def without_transactions(app: WsgiApp) -> WsgiApp:
    """A server without transaction / batch support: not in its CapabilityStatement, and ``POST /``
    refused, so clients write resource by resource."""

    def wrapped(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        if method == "POST" and path in ("", "/"):
            issue = {"severity": "error", "code": "not-supported", "diagnostics": "no transactions here"}
            refused = {"resourceType": "OperationOutcome", "issue": [issue]}
            return Response(json.dumps(refused), 405, mimetype="application/fhir+json")(environ, start_response)
        if method != "GET" or path != "/metadata":
            return app(environ, start_response)
        answer = Response.from_app(app, environ)
        statement = json.loads(answer.get_data())
        for rest in statement.get("rest") or []:
            kept = [i for i in rest.get("interaction") or [] if i.get("code") not in ("transaction", "batch")]
            rest["interaction"] = kept
        answer.set_data(json.dumps(statement))
        return answer(environ, start_response)

    return wrapped


def prefer_minimal(app: WsgiApp) -> WsgiApp:
    """A server that answers writes with no body, only ``Location`` (as if every client asked for
    ``Prefer: return=minimal``)."""

    def wrapped(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ["REQUEST_METHOD"] in ("POST", "PUT"):
            environ = {**environ, "HTTP_PREFER": "return=minimal"}
        return app(environ, start_response)

    return wrapped


class Sandbox(str):
    """The base URL of a sandbox served in this process (a ``str``), with the Flask app (its store and
    notifier: ``app.extensions["sandbox"]``) and the log of the requests it received."""

    app: Any
    log: RequestLog

    def __new__(cls, url: str, app: Any, log: RequestLog) -> Sandbox:
        obj = super().__new__(cls, url)
        obj.app = app
        obj.log = log
        return obj

    def close(self) -> None:
        """Stop the notifier threads (the HTTP server is stopped by whoever served it)."""
        self.app.extensions["sandbox"].close()


def serve_sandbox(
    serve: Callable[[WsgiApp], ThreadedWsgiServer],
    *,
    faults: bool = True,
    variant: Callable[[WsgiApp], WsgiApp] | None = None,
    profile: str = "lenient",
) -> Sandbox:
    """A fresh in-memory sandbox over real HTTP (``serve`` starts the server and stops it later), with the
    server behaviours of ``profile`` (lenient | medplum | hapi, docs/sandbox.md)."""
    app = create_sandbox_app(Settings(), faults=faults, profile=profile)
    log = RequestLog(variant(app) if variant else app)
    server = serve(log)
    state = app.extensions["sandbox"]
    state.base_url = state.notifier.base_url = server.url
    return Sandbox(server.url, app, log)


def client_id(length: int = 16) -> str:
    """A random id for a resource the test PUTs: it starts with a letter, as strict servers (HAPI) refuse
    purely numeric client-assigned ids, and a random hex string is all digits once in a while."""
    return "t" + uuid.uuid4().hex[: length - 1]


def seed(base: str, resource: dict[str, Any]) -> dict[str, Any]:
    """Store ``resource`` (PUT when it has an id, else POST) and return it as stored."""
    rtype = resource["resourceType"]
    if resource.get("id"):
        answer = requests.put(f"{base}/{rtype}/{resource['id']}", json=resource, headers=FHIR, timeout=10)
    else:
        answer = requests.post(f"{base}/{rtype}", json=resource, headers=FHIR, timeout=10)
    assert answer.status_code in (200, 201), answer.text
    if not answer.content:  # a server answering writes with Location only
        return requests.get(answer.headers["Location"].split("/_history/")[0], timeout=10).json()
    return answer.json()


def search_all(
    base: str, rtype: str, params: dict[str, str] | None = None, *, session: requests.Session | None = None
) -> list[dict[str, Any]]:
    """Every match of a search, following ``Bundle.link[next]``."""
    http = session or requests
    url: str | None = f"{base}/{rtype}"
    query: dict[str, str] | None = {"_count": "500", **(params or {})}
    found: list[dict[str, Any]] = []
    while url:
        answer = http.get(url, params=query, timeout=30)
        answer.raise_for_status()
        bundle = answer.json()
        found.extend(e["resource"] for e in bundle.get("entry", []) if "resource" in e)
        url = next((link["url"] for link in bundle.get("link", []) if link.get("relation") == "next"), None)
        query = None  # the next link carries the query
    return found


def wait_subscription(base: str, sid: str, status: str = "active", timeout: float = 15.0) -> dict[str, Any]:
    """The Subscription once the store reports ``status`` (handshakes run in the background)."""
    last: dict[str, Any] = {}

    def reached() -> dict[str, Any] | None:
        last.update(requests.get(f"{base}/Subscription/{sid}", timeout=10).json())
        return dict(last) if last.get("status") == status else None

    return wait_for(
        reached, f"Subscription/{sid} to be {status}", timeout=timeout, interval=0.02, log=lambda: str(last)
    )


def set_faults(base: str, **plan: Any) -> dict[str, Any]:
    """``POST /$faults`` (docs/sandbox.md): status_rate, statuses, retry_after, stall_rate, stall_seconds,
    fail_first, methods, seed. Returns the injector's state."""
    answer = requests.post(f"{base}/$faults", json=plan, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def clear_faults(base: str) -> None:
    assert requests.delete(f"{base}/$faults", timeout=10).status_code == 200


def fault_state(base: str) -> dict[str, Any]:
    return requests.get(f"{base}/$faults", timeout=10).json()


def subscription_events(base: str, session: requests.Session | None = None) -> int:
    """Events the store has numbered over all its topic-based subscriptions (``$status``): each is one
    notification it sends."""
    http = session or requests
    total = 0
    for sub in search_all(base, "Subscription", session=session):
        if "_criteria" not in sub:  # classic: no event numbers, no $status
            continue
        bundle = http.get(f"{base}/Subscription/{sub['id']}/$status", timeout=10).json()
        params = {p["name"]: p for p in bundle["entry"][0]["resource"]["parameter"]}
        total += int(params["events-since-subscription-start"]["valueString"])
    return total
