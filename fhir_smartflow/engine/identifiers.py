"""Deterministic identifiers (docs/internals.md): same flow + version + trigger event + action → same value.

Also the flow URNs: ``urn:fhir-smartflow:flow:<id>`` names a flow (PlanDefinition.url),
``...:<id>:<version>`` one version of it (Provenance.policy), and Task.instantiatesUri
``...:<id>:<version>#<action-slug>`` the action a Task was made by. Flow ids never contain ":".
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

FLOW_URN_PREFIX = "urn:fhir-smartflow:flow:"


def digest(*parts: object) -> str:
    """First 20 hex of sha256 over ``|``-joined parts."""
    return hashlib.sha256("|".join(str(p) for p in parts).encode("utf-8")).hexdigest()[:20]


def group_id(flow_id: str, version: str, trigger_id: str) -> str:
    """Task.groupIdentifier value shared by every task of one flow run."""
    return f"{flow_id}/{digest(flow_id, version, trigger_id)}"


def resource_id(
    flow_id: str,
    version: str,
    trigger_id: str,
    action_index: int,
    action_slug: str,
    kind: str,
    method: str = "",
    occurrence: int | str = 0,
) -> str:
    """Business identifier value of one resource (or plan action) of one flow run."""
    hashed = digest(flow_id, version, trigger_id, action_index, kind, method, occurrence)
    return f"{flow_id}/{action_slug}/{kind}/{hashed}"


def flow_urn(flow_id: str, version: str | None = None) -> str:
    """The flow (``version`` None) or one version of it."""
    return f"{FLOW_URN_PREFIX}{flow_id}" if version is None else f"{FLOW_URN_PREFIX}{flow_id}:{version}"


def instantiates_uri(flow_id: str, version: str, action_slug: str) -> str:
    return f"{flow_urn(flow_id, version)}#{action_slug}"


class FlowAction(NamedTuple):
    flow_id: str
    version: str
    action_slug: str


def parse_instantiates_uri(uri: object) -> FlowAction | None:
    """(flow_id, version, action_slug) from a Task.instantiatesUri we wrote, else None."""
    if not isinstance(uri, str) or not uri.startswith(FLOW_URN_PREFIX) or "#" not in uri:
        return None
    head, slug = uri[len(FLOW_URN_PREFIX) :].split("#", 1)
    flow_id, sep, version = head.partition(":")
    if not sep or not flow_id or not slug:
        return None
    return FlowAction(flow_id, version, slug)
