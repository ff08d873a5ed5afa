"""The raw body: content type, UTF-8 JSON, and the structural limits checked before any shape is parsed.

A body that parses as JSON can still be something no later step may see: nesting deep enough to break
pickling in the queue (Python's recursion limit), lone UTF-16 surrogates (``"\\ud800"``: valid JSON
escapes, but no valid Unicode, so encoding them for Redis or a log fails), ``NaN`` / ``Infinity``
(not JSON at all, though Python's parser takes them). Each is a 400 here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from fhir_smartflow.fhir.notifications.model import NotificationError, header

ACCEPTED_CONTENT_TYPES = ("application/fhir+json", "application/json")
# FHIR resources nest a few levels per element (a QuestionnaireResponse's nested items deepest: four
# levels per item); a notification Bundle adds four. Far below the ~500 levels where pickling an event
# for the queue hits Python's recursion limit.
MAX_JSON_DEPTH = 100
_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


def check_content_type(headers: Mapping[str, str], body: bytes) -> None:
    """415 unless the body is empty or declared as FHIR JSON / JSON."""
    if not body.strip():
        return
    declared = (header(headers, "Content-Type") or "").split(";", 1)[0].strip().lower()
    if declared not in ACCEPTED_CONTENT_TYPES:
        shown = declared[:60] or "none"
        raise NotificationError(
            415, f"unsupported content type {shown!r}: send application/fhir+json or application/json"
        )


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def load_json(body: bytes) -> Any:
    try:
        text = body.decode("utf-8-sig")  # FHIR JSON is UTF-8; tolerate a byte-order mark
    except UnicodeDecodeError:
        raise NotificationError(400, "body is not UTF-8 text") from None
    try:
        data = json.loads(text, parse_constant=_no_constants)
    except ValueError as exc:
        raise NotificationError(400, f"body is not valid JSON: {exc}") from None
    except RecursionError:  # a small body can nest deeper than the parser's stack: bad input, not a 500
        raise NotificationError(400, f"body is nested deeper than {MAX_JSON_DEPTH} levels") from None
    check_structure(text, data)
    return data


def check_structure(text: str, data: Any, max_depth: int = MAX_JSON_DEPTH) -> None:
    """400 for nesting deeper than ``max_depth`` or a lone surrogate in any key or string. Both walks
    run only when the text could hold the problem: more brackets than ``max_depth`` (brackets inside
    strings count too: an upper bound), a ``\\uD8xx``-``\\uDFxx`` escape (valid UTF-8 has no surrogates;
    only escapes make them, and escaped pairs are joined by the JSON parser)."""
    if text.count("{") + text.count("[") > max_depth:
        _check_depth(data, max_depth)
    if _ESCAPED_SURROGATE.search(text):
        _check_surrogates(data)


def _containers(value: Any) -> Any:
    return value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()


def _check_depth(data: Any, max_depth: int) -> None:
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > max_depth:
            raise NotificationError(400, f"body is nested deeper than {max_depth} levels")
        stack.extend((child, depth + 1) for child in _containers(value) if isinstance(child, dict | list))


def _check_surrogates(data: Any) -> None:
    stack: list[Any] = [data]
    while stack:
        value = stack.pop()
        texts = list(value) if isinstance(value, dict) else []  # keys
        for child in _containers(value):
            if isinstance(child, dict | list):
                stack.append(child)
            elif isinstance(child, str):
                texts.append(child)
        if isinstance(value, str):
            texts.append(value)
        if any(_SURROGATE.search(t) for t in texts):
            raise NotificationError(
                400, "body contains a lone UTF-16 surrogate escape (\\ud800-\\udfff): not valid text"
            )
