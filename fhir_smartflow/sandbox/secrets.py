"""A Subscription's secrets (``channel.header`` values, the signing-secret extension) as reads show them.

Servers do not hand the credential of a webhook to whoever can read the Subscription: reads and searches
show a mask instead. A client writing back what it read (the mask unchanged) keeps the stored secret.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from fhir_smartflow.sandbox.store import Change

MASK = "********"
EXT_SECRET = "https://www.medplum.com/fhir/StructureDefinition/subscription-secret"


def secret_of(resource: dict[str, Any]) -> str:
    """The signing secret (extension valueString), or ""."""
    for ext in resource.get("extension") or []:
        if isinstance(ext, dict) and ext.get("url") == EXT_SECRET and isinstance(ext.get("valueString"), str):
            return str(ext["valueString"])
    return ""


def _mask_header(line: Any) -> Any:
    name, sep, _ = str(line).partition(":")
    return f"{name.strip()}: {MASK}" if sep else line


def masked(resource: dict[str, Any]) -> dict[str, Any]:
    """A copy with every header value and the secret extension's value replaced by MASK."""
    shown = copy.deepcopy(resource)
    channel = shown.get("channel")
    if isinstance(channel, dict) and isinstance(channel.get("header"), list):
        channel["header"] = [_mask_header(line) for line in channel["header"]]
    for ext in shown.get("extension") or []:
        if isinstance(ext, dict) and ext.get("url") == EXT_SECRET and "valueString" in ext:
            ext["valueString"] = MASK
    return shown


def keep_secrets(resource: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """``resource`` with each masked header value / secret taken from ``current`` (same header name)."""
    stored_headers = {}
    for line in (current.get("channel") or {}).get("header") or []:
        name, sep, value = str(line).partition(":")
        if sep:
            stored_headers[name.strip().lower()] = value.strip()
    result = copy.deepcopy(resource)
    channel = result.get("channel")
    if isinstance(channel, dict) and isinstance(channel.get("header"), list):
        kept = []
        for line in channel["header"]:
            name, sep, value = str(line).partition(":")
            if sep and value.strip() == MASK and name.strip().lower() in stored_headers:
                line = f"{name.strip()}: {stored_headers[name.strip().lower()]}"
            kept.append(line)
        channel["header"] = kept
    secret = secret_of(current)
    for ext in result.get("extension") or []:
        if isinstance(ext, dict) and ext.get("url") == EXT_SECRET and ext.get("valueString") == MASK and secret:
            ext["valueString"] = secret
    return result


def without_secrets(change: Change) -> Change:
    """``change`` as a notification may carry it: a Subscription's secrets masked."""
    if change.resource_type != "Subscription" or not change.resource:
        return change
    return dataclasses.replace(change, resource=masked(change.resource))
