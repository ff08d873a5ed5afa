"""The webhook's answers: every one is FHIR JSON (an OperationOutcome; informational on success).

Some servers parse the reply and count anything else as a failed delivery. An `Answer` is what the
WSGI front sends as it is; `fhir_response` wraps the same body in a Flask `Response` for the routes
Flask serves (health, readiness, its error handlers)."""

from __future__ import annotations

import functools
import http
import json
import logging
from collections.abc import Mapping
from typing import Any, NamedTuple

import redis
from flask import Response

from fhir_smartflow import defaults

log = logging.getLogger(__name__)

_ISSUE_CODES = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    413: "too-costly",
    415: "not-supported",
    503: "transient",
}


class Answer(NamedTuple):
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def status_line(self) -> str:
        return _status_line(self.status)

    def wsgi_headers(self) -> list[tuple[str, str]]:
        return [("Content-Type", defaults.FHIR_JSON), ("Content-Length", str(len(self.body))), *self.headers]


def operation_outcome(status: int, diagnostics: str, severity: str | None = None) -> dict[str, Any]:
    if severity is None:
        severity = "information" if status < 400 else "error"
    code = "informational" if status < 400 else _ISSUE_CODES.get(status, "exception")
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }


def fhir_answer(status: int, diagnostics: str, headers: Mapping[str, str] | None = None) -> Answer:
    body = _informational_body(diagnostics) if status < 400 else _outcome_body(status, diagnostics)
    return Answer(status, body, tuple(headers.items()) if headers else ())


def fhir_response(status: int, diagnostics: str, headers: Mapping[str, str] | None = None) -> Response:
    return as_response(fhir_answer(status, diagnostics, headers))


def as_response(answer: Answer) -> Response:
    return Response(answer.body, status=answer.status, content_type=defaults.FHIR_JSON, headers=dict(answer.headers))


def error_answer(exc: Exception, retry_after_seconds: int) -> Answer:
    """An exception no handler expected, logged: a Redis error is 503 with ``Retry-After`` (only its type
    is logged), anything else is our fault (500), never the client's input."""
    if isinstance(exc, redis.RedisError):
        log.error("Redis unavailable: %s", type(exc).__name__)
        return fhir_answer(503, "queue unavailable; retry later", {"Retry-After": str(retry_after_seconds)})
    log.exception("unexpected error handling a request")
    return fhir_answer(500, "internal error; the delivery was not accepted")


def _outcome_body(status: int, diagnostics: str) -> bytes:
    return json.dumps(operation_outcome(status, diagnostics)).encode()


@functools.lru_cache(maxsize=512)
def _informational_body(diagnostics: str) -> bytes:
    """Success answers repeat (kind, subscription, count): serialized once each."""
    return _outcome_body(200, diagnostics)


@functools.lru_cache(maxsize=64)
def _status_line(status: int) -> str:
    try:
        return f"{status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"
