"""The SSRF guard: every URL the client requests must lie under the configured FHIR base.

Notification contents (focus references, ``next`` links, ``Location`` headers) are attacker-controlled
as far as we know, so they are resolved here and refused unless scheme, host, port and path prefix match
the base after normalization. Refusal raises ``FhirUrlRejected`` before any request is made.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit, urlunsplit

from fhir_smartflow.fhir.errors import FhirUrlRejected

_DEFAULT_PORTS = {"http": 80, "https": 443}
_FORBIDDEN_CHARS = re.compile(r"[\x00-\x20\x7f\\]")


def _reject(url: str, why: str) -> FhirUrlRejected:
    shown = url if len(url) <= 200 else url[:200] + "..."
    return FhirUrlRejected(f"refused to request {shown!r}: {why}", url=shown)


class BaseUrl:
    """A normalized FHIR base (``scheme://host:port/path``) and the check that a URL lies under it."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url.strip())
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"FHIR base URL must be an absolute http(s) URL, got {base_url!r}")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError(f"FHIR base URL must not carry credentials, a query or a fragment: {base_url!r}")
        self.scheme = scheme
        self.host = parts.hostname.lower()
        self.port = parts.port or _DEFAULT_PORTS[scheme]
        self.path = parts.path.rstrip("/")
        if ".." in self.path.split("/"):
            raise ValueError(f"FHIR base URL must not contain '..': {base_url!r}")
        default = self.port == _DEFAULT_PORTS[scheme]
        netloc = self.host if default else f"{self.host}:{self.port}"
        if ":" in self.host:  # IPv6 literal
            netloc = f"[{self.host}]" if default else f"[{self.host}]:{self.port}"
        self.netloc = netloc
        self.url = urlunsplit((scheme, netloc, self.path, "", ""))
        # URLs `check_strictly` accepts as they are, without parsing: the base's canonical spelling, then
        # path segments of letters, digits, ``-``, ``_`` and ``.`` (never first, so no dot segments) and
        # nothing else (no query, fragment, escapes, credentials). What servers send; the rest is parsed.
        self.plain = re.compile(re.escape(self.url) + r"(?:/[A-Za-z0-9_\-][A-Za-z0-9_\-.]*)*/?")

    def __str__(self) -> str:
        return self.url

    def join(self, path: str) -> str:
        """``{base}/{path}`` for a relative path we built ourselves (still checked)."""
        return self.check(f"{self.url}/{path.lstrip('/')}")

    def check(self, url: str) -> str:
        """``url`` in canonical form (the base's scheme and host spelling, no fragment) when it lies
        under the base; raise FhirUrlRejected otherwise."""
        if isinstance(url, str) and self.plain.fullmatch(url):
            return url  # already canonical: what `check_strictly` would answer
        return self.check_strictly(url)

    def check_strictly(self, url: str) -> str:
        """`check` by parsing ``url`` in full."""
        if not isinstance(url, str) or not url:
            raise _reject(str(url), "empty URL")
        if _FORBIDDEN_CHARS.search(url):
            raise _reject(url, "whitespace, control characters or backslashes")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise _reject(url, f"unparseable URL ({exc})") from None
        if parts.scheme.lower() != self.scheme:
            raise _reject(url, f"scheme is not {self.scheme}")
        if "@" in parts.netloc or parts.username is not None or parts.password is not None:
            raise _reject(url, "credentials in the URL")
        if (parts.hostname or "").lower() != self.host:
            raise _reject(url, "host is not the FHIR server's")
        if (port or _DEFAULT_PORTS[self.scheme]) != self.port:
            raise _reject(url, "port is not the FHIR server's")
        decoded = unquote(unquote(parts.path))  # double decoding catches %252e%252e as well
        if any(seg in {".", ".."} for seg in decoded.split("/")) or "\\" in decoded:
            raise _reject(url, "dot segments in the path")
        if parts.path != self.path and not parts.path.startswith(self.path + "/"):
            raise _reject(url, f"path is not under {self.path or '/'}")
        return urlunsplit((self.scheme, self.netloc, parts.path, parts.query, ""))

    def resolve(self, reference: str) -> str:
        """Absolute URL for a FHIR reference: relative ``Patient/1`` resolves under the base;
        absolute references must already lie under it."""
        if not isinstance(reference, str) or not reference.strip():
            raise _reject(str(reference), "empty reference")
        ref = reference.strip()
        if "://" in ref or ref.startswith("//"):
            return self.check(ref)
        if ref.startswith(("/", "#", "?")) or ":" in ref.split("/", 1)[0]:
            raise _reject(ref, "not a relative FHIR reference (Type/id)")
        return self.check(f"{self.url}/{ref}")

    def relative(self, url_or_reference: str) -> str:
        """``Type/id[/_history/v]`` for an absolute URL under the base (or a relative reference)."""
        absolute = self.resolve(url_or_reference)
        rest = urlsplit(absolute).path[len(self.path) :].strip("/")
        return rest
