"""The webhook's routes as a plain WSGI app in front of Flask.

A delivery is the hot path: under load every notification costs a Flask request context, URL map
matching and a `Response` object on top of its own work. The front answers the webhook's paths itself
(``<notify_path>`` and ``<notify_path>/<Type>/<id>``) and hands every other request to the Flask app
(health, readiness, ``/metrics``, ``/rq``, the mounted apps), whose error handlers still answer
everything it serves. What Flask gave these routes is kept here: the body limit (checked before and
while reading, chunked bodies too), 405 with ``Allow`` for another method, FHIR JSON for every answer,
503 + ``Retry-After`` for a Redis error and 500 for anything unexpected.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wsgi import get_input_stream

from fhir_smartflow.ingest.answers import Answer, error_answer, fhir_answer
from fhir_smartflow.ingest.app import IngestContext, deliver

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

ROOT_METHODS = ("POST",)
RESOURCE_METHODS = ("DELETE", "POST", "PUT")
_PLAIN_HEADERS = {"CONTENT_TYPE": "Content-Type", "CONTENT_LENGTH": "Content-Length"}


class WebhookFront:
    """WSGI: deliveries to the notify paths answered here, everything else passed to ``app``."""

    def __init__(self, ctx: IngestContext, app: WSGIApp) -> None:
        self._ctx = ctx
        self._app = app
        root = ctx.settings.server.notify_path.rstrip("/") or "/"
        self._roots = frozenset({root, root + "/"})
        self._resource_prefix = root + "/"
        # Deliveries without X-Request-Id: this process's tag and a count (unique, without a uuid4 each).
        self._process_tag = uuid.uuid4().hex[:16]
        self._numbers = itertools.count(1)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = _decoded(environ.get("PATH_INFO") or "/")
        if path in self._roots:
            allowed, path_resource = ROOT_METHODS, None
        elif path_resource := _resource(path, self._resource_prefix):
            allowed = RESOURCE_METHODS
        else:
            return self._app(environ, start_response)
        method = str(environ.get("REQUEST_METHOD") or "GET").upper()
        if method in allowed:
            answer = self._deliver(environ, method, path_resource)
        else:
            answer = fhir_answer(405, f"method {method[:20]} is not allowed here", {"Allow": ", ".join(allowed)})
        start_response(answer.status_line, answer.wsgi_headers())
        return [answer.body]

    def _deliver(self, environ: dict[str, Any], method: str, path_resource: str | None) -> Answer:
        ctx = self._ctx
        headers = request_headers(environ)
        delivery_id = headers.get("X-Request-Id") or f"{self._process_tag}-{next(self._numbers)}"
        try:
            body = read_body(environ, ctx.settings.server.max_body_bytes)
            return deliver(ctx, method, path_resource, headers, body, delivery_id=delivery_id)
        except Exception as exc:  # as the Flask app's error handler answers (fhir_smartflow.app)
            return error_answer(exc, ctx.settings.server.retry_after_seconds)


def request_headers(environ: dict[str, Any]) -> dict[str, str]:
    """The request's headers by their usual names, as werkzeug's ``EnvironHeaders`` lists them."""
    headers = {
        key[5:].replace("_", "-").title(): value
        for key, value in environ.items()
        if key.startswith("HTTP_") and key not in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH")
    }
    for key, name in _PLAIN_HEADERS.items():
        if environ.get(key):
            headers[name] = environ[key]
    return headers


def read_body(environ: dict[str, Any], limit: int) -> bytes | None:
    """The raw body, or None when it is over ``limit`` (by its Content-Length before reading, or while
    reading one the server streams: chunked)."""
    try:
        body = get_input_stream(environ, max_content_length=limit).read()
    except RequestEntityTooLarge:
        return None
    return None if len(body) > limit else body


def _decoded(path: str) -> str:
    """WSGI carries the path as latin-1 characters of its bytes; Flask routes on its UTF-8 reading."""
    try:
        return path.encode("latin-1").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return path


def _resource(path: str, prefix: str) -> str | None:
    """``<Type>/<id>`` when ``path`` is the prefix and exactly two non-empty segments, else None."""
    if not path.startswith(prefix):
        return None
    rtype, slash, rid = path[len(prefix) :].partition("/")
    return f"{rtype}/{rid}" if rtype and slash and rid and "/" not in rid else None
