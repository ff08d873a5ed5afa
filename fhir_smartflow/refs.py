"""FHIR references ``[base/]Type/id[/_history/version]``: the one parser, and the type and id patterns.

Two readings, both here so they cannot drift apart:

- `parse_reference` is tolerant, for what servers send (a focus, a ``fullUrl``, a ``request.url``):
  an absolute URL or a query after the id is fine; anything that is not a resource reference
  (``urn:uuid:...``, ``#contained``, a search) is None.
- `split_reference` is strict, for a reference we are about to put in a request path: exactly
  ``Type/id`` or ``Type/id/_history/version``, every part valid, else ValueError.
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple

# FHIR ids: [A-Za-z0-9\-\.]{1,64} (R4 id datatype); resource types: a capitalized word.
ID_PATTERN = r"[A-Za-z0-9\-.]{1,64}"
RESOURCE_TYPE_RE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
RESOURCE_ID_RE = re.compile(rf"^{ID_PATTERN}$")


class Reference(NamedTuple):
    resource_type: str
    id: str
    version: str | None = None


def parse_reference(reference: object) -> Reference | None:
    """``[base/]Type/id[/_history/vid]`` → Reference; None for anything else (urn:uuid, #contained)."""
    if not isinstance(reference, str) or not reference or reference.startswith(("urn:", "#")):
        return None
    return _parse_reference(reference)


@functools.lru_cache(maxsize=4096)  # a notification names its focus several times (fullUrl, request, status)
def _parse_reference(reference: str) -> Reference | None:
    parts = reference.split("?", 1)[0].rstrip("/").split("/")
    version: str | None = None
    if len(parts) >= 4 and parts[-2] == "_history":
        version = parts[-1] or None
        parts = parts[:-2]
    if len(parts) < 2:
        return None
    rtype, rid = parts[-2], parts[-1]
    if not RESOURCE_TYPE_RE.match(rtype) or not RESOURCE_ID_RE.match(rid):
        return None
    return Reference(rtype, rid, version)


def split_reference(reference: str) -> Reference:
    """The relative ``Type/id[/_history/v]`` we are about to request; ValueError when malformed."""
    parts = reference.strip("/").split("/")
    if len(parts) == 2:
        rtype, rid, version = parts[0], parts[1], None
    elif len(parts) == 4 and parts[2] == "_history":
        rtype, rid, version = parts[0], parts[1], parts[3]
    else:
        raise ValueError(f"not a FHIR reference Type/id[/_history/version]: {reference!r}")
    if not RESOURCE_TYPE_RE.match(rtype) or not RESOURCE_ID_RE.match(rid):
        raise ValueError(f"not a valid resource type and id: {reference!r}")
    if version is not None and not RESOURCE_ID_RE.match(version):
        raise ValueError(f"not a valid version id: {reference!r}")
    return Reference(rtype, rid, version)
