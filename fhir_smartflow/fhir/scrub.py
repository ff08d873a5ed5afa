"""Error texts without PHI, for logs, run history and ``Communication.statusReason``.

A FHIR server refusing a write often quotes the resource in its OperationOutcome (HAPI: ``... value
"Rivera" ...``; profile validators: the offending element's value), and a channel provider's error may
quote the phone number or the message. What is kept:

- of a `FhirError`: status, method, the URL's path (``Type`` / ``id`` / ``_history``, query parameter
  names but not their values), and per OperationOutcome issue its severity, code, coded details,
  ``expression`` / ``location`` (element paths) and, from its diagnostics, only what looks like a
  message code (``HAPI-0450``), an element path (``Communication.payload[0]``) or a reference;
- of a free text (`scrub_text`): the text with every value it quotes, every e-mail address, every
  phone-like or long digit run and the values the caller knows are private (the address, the body)
  replaced by ``[…]``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from fhir_smartflow.engine.validation import ResourceInvalid
from fhir_smartflow.fhir.errors import FhirError

MAX_CHARS = 300
HIDDEN = "[…]"

_CODE = re.compile(r"^[A-Z][A-Z0-9_]*-\d{2,}$|^\d{3,6}$")  # HAPI-0450, a provider's numeric code 21211
_PATH = re.compile(r"^[A-Z][A-Za-z]+(?:\.[a-z][A-Za-z0-9]*(?:\[\d+\])?)+$")  # Patient.name[0].family
_REFERENCE = re.compile(r"^[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}(?:/_history/[A-Za-z0-9\-.]{1,64})?$")
_CODED = re.compile(r"^[A-Za-z0-9_.\-]{1,40}$")  # a code from a code system: never a value
_TOKEN_EDGES = "\"'`.,;:()[]{}<>"
_ID_SEGMENT = re.compile(r"^[A-Za-z0-9\-.$_]{1,64}$")

_QUOTED = re.compile("\"[^\"]*\"|'[^']*'|`[^`]*`|\u201c[^\u201d]*\u201d|\u2018[^\u2019]*\u2019")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# International (+...), North American (555 123 4567, (555) 123-4567) and long digit runs; not short
# codes such as "HTTP 400 21610" (the caller hides the exact address it sent to anyway).
_PHONE = re.compile(r"\+\d[\d\s().-]{5,}\d|\(?\b\d{3}\)?[\s.-]?\d{3}[\s.-]?\d{4}\b|\b\d{10,}\b")


def scrub_error(exc: BaseException) -> str:
    """A PHI-free description of an error met while executing a plan."""
    if isinstance(exc, FhirError):
        return scrub_fhir_error(exc)
    if isinstance(exc, ResourceInvalid):  # our own validation: paths and reasons, never input values
        return _cap(f"invalid {exc.resource_type}: {'; '.join(_problem(p) for p in exc.problems)}")
    return _cap(scrub_text(str(exc)))


def scrub_in_place(exc: BaseException) -> BaseException:
    """Scrub ``exc``'s message (and drop a FhirError's OperationOutcome) before it is re-raised: rq
    logs and keeps the text of a job's exception."""
    text = scrub_error(exc)
    if isinstance(exc, FhirError):
        exc.message, exc.outcome = text, None
    exc.args = (text,)
    return exc


def scrub_fhir_error(exc: FhirError) -> str:
    where = " ".join(p for p in (exc.method or "", _url_shape(exc.url)) if p)
    status = f" answered {exc.status}" if exc.status else " failed"
    issues = _outcome_summary(exc.outcome)
    if issues:
        return _cap(f"{where}{status}: {issues}".strip())
    if exc.outcome is None and exc.status is None:  # no answer (connection, timeout, guard): our own text
        return _cap(scrub_text(exc.message))
    return _cap(f"{where}{status}".strip())


def scrub_text(text: str, known: Iterable[str] = ()) -> str:
    """``text`` with quoted values, e-mail addresses, phone-like numbers and ``known`` values hidden."""
    for value in sorted((k for k in known if k and len(k) >= 3), key=len, reverse=True):
        text = text.replace(value, HIDDEN)
    text = _QUOTED.sub(HIDDEN, text)
    text = _EMAIL.sub(HIDDEN, text)
    text = _PHONE.sub(HIDDEN, text)
    return _cap(text)


def _problem(problem: str) -> str:
    path, _, reason = problem.partition(": ")
    return f"{path}: {scrub_text(reason)}" if reason else scrub_text(path)


def _url_shape(url: str | None) -> str:
    if not url:
        return ""
    parts = urlsplit(url)
    segments = [s if _ID_SEGMENT.match(s) else HIDDEN for s in parts.path.split("/") if s]
    names = sorted({name for name, _ in parse_qsl(parts.query, keep_blank_values=True)})
    query = "?" + "&".join(f"{n}=…" for n in names if re.match(r"^[A-Za-z_:.-]{1,40}$", n)) if names else ""
    return "/" + "/".join(segments[-4:]) + query


def _outcome_summary(outcome: dict[str, Any] | None) -> str:
    if not isinstance(outcome, dict):
        return ""
    out: list[str] = []
    for issue in outcome.get("issue") or []:
        if not isinstance(issue, dict):
            continue
        bits = [str(issue.get(k)) for k in ("severity", "code") if isinstance(issue.get(k), str)]
        details = issue.get("details") if isinstance(issue.get("details"), dict) else {}
        codes = [c.get("code") for c in details.get("coding") or [] if isinstance(c, dict)]
        bits += [c for c in codes if isinstance(c, str) and _CODED.match(c)]
        paths = [p for k in ("expression", "location") for p in issue.get(k) or [] if isinstance(p, str)]
        bits += [f"at {_cap_to(_QUOTED.sub(HIDDEN, p), 120)}" for p in paths]
        diagnostics = issue.get("diagnostics")
        if isinstance(diagnostics, str):
            bits += _structural_tokens(diagnostics)
        if bits:
            out.append(" ".join(dict.fromkeys(bits)))
    return "; ".join(out)


def _structural_tokens(text: str) -> list[str]:
    """The message code a diagnostics text starts with (``HAPI-0450:``) and the element paths and
    references it mentions, nothing else (an MRN looks like a code too: only the leading one counts)."""
    kept: list[str] = []
    for index, raw in enumerate(_QUOTED.sub(" ", text).split()):
        token = raw.strip(_TOKEN_EDGES)
        leading_code = index == 0 and raw.endswith(":") and _CODE.match(token) and not token.isdigit()
        if leading_code or _PATH.match(token) or _REFERENCE.match(token):
            kept.append(token)
    return kept


def _cap(text: str) -> str:
    return _cap_to(text, MAX_CHARS)


def _cap_to(text: str, size: int) -> str:
    return text if len(text) <= size else text[: size - 1] + "…"
