"""The R4 Subscription resources the enabled flows need, and syncing them onto a FHIR server.

Enabled flows → the triggers they need (``Engine.needed_triggers``: theirs, ``task.completed``, and the
discharge triggers when a flow stops at discharge) →
the mappings producing them → one Subscription per distinct search (a resource type subscribed without
a filter makes its filtered searches redundant). Two styles:

- ``classic``: R4 ``criteria`` = the mapping's ``search``, rest-hook, ``application/fhir+json``;
- ``backport``: the R4 Backport IG profile: ``criteria`` = a SubscriptionTopic canonical, the search as a
  ``backport-filter-criteria`` extension, payload content / heartbeat / timeout as channel extensions.

R4 Subscription has no ``identifier`` element, so each resource is marked with a ``meta.tag``
(system = ``[fhir] identifier_system``, code = ``subscription/<key>``) and ``sync`` finds it by that tag
(``_tag`` search, filtered again client-side for servers that ignore the parameter).

Servers differ in how a Subscription becomes ``active`` (ACTIVATIONS): Medplum evaluates only ``active``
ones and never activates a ``requested`` one, so it is written ``active``; HAPI FHIR (and R4 generally)
takes ``requested`` and activates it itself, or sets ``error``. ``sync`` reads each one back and reports
those not active with the server's own ``error`` text. ``hmac`` entries carry their secret in Medplum's
``subscription-secret`` extension (Medplum signs each delivery with it, ``X-Signature``).
"""

from __future__ import annotations

import copy
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from fhir_smartflow.config import FHIR_SERVER_KINDS, Settings, SubscriptionConfig, secret
from fhir_smartflow.engine.model import Engine, MappingRule
from fhir_smartflow.fhir.backport import (
    EXT_FILTER,
    EXT_HEARTBEAT,
    EXT_PAYLOAD,
    EXT_TIMEOUT,
    GENERIC_TOPIC,
    PROFILE_SUBSCRIPTION,
    TOPIC_FOR_TYPE,
)
from fhir_smartflow.ingest.policy import declared_resource_types

log = logging.getLogger(__name__)

R5_IDENTIFIER = "http://hl7.org/fhir/5.0/StructureDefinition/extension-Subscription.identifier"
STYLES = ("classic", "backport")
INACTIVE = {"error", "off"}
MASK = "********"
# Medplum signs notifications (X-Signature, HMAC-SHA256 of the body) with this extension's valueString.
EXT_SECRET = "https://www.medplum.com/fhir/StructureDefinition/subscription-secret"


@dataclass(frozen=True)
class Activation:
    """How a kind of server gets a Subscription to ``active``."""

    written: str  # the status sync writes on create / re-activation
    server_activates: bool  # the server moves requested → active (or error) itself: wait for it


# The kinds sync knows ([fhir] server / --server); "auto" picks one from CapabilityStatement.software.name.
ACTIVATIONS: dict[str, Activation] = {
    "medplum": Activation("active", server_activates=False),
    "hapi": Activation("requested", server_activates=True),
    "generic": Activation("requested", server_activates=True),
}
SERVER_KINDS = FHIR_SERVER_KINDS
# A substring of CapabilityStatement.software.name (lower case) → the kind of server.
SOFTWARE_KINDS = (("medplum", "medplum"), ("hapi", "hapi"))


def server_kind(capabilities: Mapping[str, Any], configured: str = "auto") -> str:
    """The kind of server: ``configured`` unless "auto", else read from ``software.name``."""
    if configured != "auto":
        if configured not in ACTIVATIONS:
            raise ValueError(f"server must be one of {', '.join(SERVER_KINDS)}, got {configured!r}")
        return configured
    name = str((capabilities.get("software") or {}).get("name") or "").lower()
    return next((kind for part, kind in SOFTWARE_KINDS if part in name), "generic")


@dataclass(frozen=True)
class Wanted:
    """One subscription to have: a resource type, an optional search filter, the triggers it feeds."""

    resource: str
    search: str  # "Appointment?status=noshow" or "Appointment?" (every change)
    triggers: tuple[str, ...]

    @property
    def key(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.search.lower()).strip("-") or self.resource.lower()


def _search_of(rule: MappingRule) -> str:
    return rule.search or f"{rule.resource}?"


def wanted_subscriptions(engine: Engine) -> list[Wanted]:
    """Distinct searches of the mappings behind the needed triggers, sorted; unfiltered ones absorb filtered."""
    needed = engine.needed_triggers()
    by_search: dict[str, set[str]] = {}
    resource_of: dict[str, str] = {}
    for rule in engine.mappings:
        if rule.trigger in needed:
            search = _search_of(rule)
            by_search.setdefault(search, set()).add(rule.trigger)
            resource_of[search] = rule.resource
    unfiltered = {resource_of[s] for s in by_search if s.endswith("?")}
    result: list[Wanted] = []
    for search in sorted(by_search):
        resource = resource_of[search]
        if resource in unfiltered and not search.endswith("?"):
            by_search[f"{resource}?"] |= by_search[search]
            continue
        result.append(Wanted(resource, search, ()))
    return [Wanted(w.resource, w.search, tuple(sorted(by_search[w.search]))) for w in result]


def _matching_config(wanted: Wanted, topic: str, configs: list[SubscriptionConfig]) -> SubscriptionConfig | None:
    """The [[subscriptions]] entry whose secret this subscription's deliveries carry."""
    for cfg in configs:
        if cfg.criteria and cfg.criteria == wanted.search:
            return cfg
    for cfg in configs:
        if cfg.topic and cfg.topic == topic:
            return cfg
    for cfg in configs:
        if cfg.criteria and cfg.criteria.split("?")[0] == wanted.resource:
            return cfg
    # The webhook refuses a type the entry does not deliver (ingest/policy.py): an entry that may.
    for cfg in configs:
        if wanted.resource in (declared_resource_types(cfg) or ()):
            return cfg
    return configs[0] if configs else None


def topic_for(wanted: Wanted, configs: list[SubscriptionConfig]) -> str:
    """A configured topic canonical for this resource type, else the project's own SubscriptionTopic for
    the type (the ones the sandbox store serves), else its generic ``resource-changes`` topic."""
    for cfg in configs:
        if cfg.topic and (cfg.criteria.split("?")[0] == wanted.resource or cfg.criteria == wanted.search):
            return cfg.topic
    return TOPIC_FOR_TYPE.get(wanted.resource, GENERIC_TOPIC)


def build_subscriptions(
    engine: Engine,
    settings: Settings,
    style: str,
    endpoint: str,
    *,
    show_secrets: bool = False,
    heartbeat_seconds: int = 300,
    timeout_seconds: int = 30,
    env: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """The Subscription resources (R4 JSON). Secrets are masked unless ``show_secrets``."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    resources = []
    for wanted in wanted_subscriptions(engine):
        topic = topic_for(wanted, settings.subscriptions)
        cfg = _matching_config(wanted, topic, settings.subscriptions)
        channel: dict[str, Any] = {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json"}
        if cfg is not None:
            value = secret(cfg.secret_env, env) if show_secrets else MASK
            if cfg.auth == "header":
                channel["header"] = [f"{cfg.header}: {value or ''}"]
        sub: dict[str, Any] = {
            "resourceType": "Subscription",
            "meta": {"tag": [{"system": settings.fhir.identifier_system, "code": f"subscription/{wanted.key}"}]},
            "status": "requested",
            "reason": f"fhir-smartflow: {', '.join(wanted.triggers)}",
            "channel": channel,
        }
        if style == "classic":
            sub["criteria"] = wanted.search
        else:
            sub["meta"]["profile"] = [PROFILE_SUBSCRIPTION]
            sub["extension"] = [
                {
                    "url": R5_IDENTIFIER,
                    "valueIdentifier": {
                        "system": settings.fhir.identifier_system,
                        "value": f"subscription/{wanted.key}",
                    },
                }
            ]
            sub["criteria"] = topic
            if not wanted.search.endswith("?") or topic == GENERIC_TOPIC:
                sub["_criteria"] = {"extension": [{"url": EXT_FILTER, "valueString": wanted.search}]}
            channel["extension"] = [
                {"url": EXT_HEARTBEAT, "valueUnsignedInt": heartbeat_seconds},
                {"url": EXT_TIMEOUT, "valueUnsignedInt": timeout_seconds},
            ]
            channel["_payload"] = {"extension": [{"url": EXT_PAYLOAD, "valueCode": "full-resource"}]}
        if cfg is not None and cfg.auth == "hmac":
            # The server signs each body with the shared secret (Medplum reads it from this extension).
            value = secret(cfg.secret_env, env) if show_secrets else MASK
            sub.setdefault("extension", []).append({"url": EXT_SECRET, "valueString": value or ""})
        resources.append(sub)
    return resources


def unauthenticated(resources: list[dict[str, Any]]) -> list[str]:
    """Keys of subscriptions that carry no secret, neither a header nor an hmac signing secret (their
    notifications would be refused)."""
    return [_tag(r)[1] for r in resources if "header" not in r["channel"] and not _secret_extension(r)]


def _secret_extension(resource: Mapping[str, Any]) -> str | None:
    for ext in resource.get("extension") or []:
        if isinstance(ext, dict) and ext.get("url") == EXT_SECRET:
            return str(ext.get("valueString") or "")
    return None


class SubscriptionServer(Protocol):
    """What ``sync`` needs of a FHIR client (``FhirClient`` has it)."""

    def search(self, resource_type: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]: ...

    def create(self, resource: dict[str, Any], if_none_exist: str | None = None) -> tuple[dict[str, Any], bool]: ...

    def update(self, resource: dict[str, Any], condition: str | None = None) -> dict[str, Any]: ...

    def read(self, reference: str) -> dict[str, Any] | None: ...


def _tag(resource: Mapping[str, Any]) -> tuple[str, str]:
    tag = (resource.get("meta") or {}).get("tag") or [{}]
    return tag[0].get("system", ""), tag[0].get("code", "")


def _has_tag(resource: Mapping[str, Any], system: str, code: str) -> bool:
    return any(
        t.get("system") == system and t.get("code") == code for t in (resource.get("meta") or {}).get("tag") or []
    )


def _masked(value: str) -> bool:
    """A secret the server shows masked (``****``, ``********``): present, value not disclosed."""
    return len(value) >= 3 and set(value) <= {"*", "\u2022"}


def _secrets(resource: Mapping[str, Any]) -> dict[str, str]:
    """Where the secrets are → their values: each channel header's value, and the signing extension."""
    found = {}
    for header in (resource.get("channel") or {}).get("header") or []:
        name, _, value = str(header).partition(":")
        found[f"header:{name.strip().lower()}"] = value.strip()
    ext = _secret_extension(resource)
    if ext is not None:
        found["extension"] = ext
    return found


def _without_secrets(resource: Mapping[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(dict(resource))
    channel = data.get("channel") or {}
    if channel.get("header"):
        channel["header"] = [str(h).partition(":")[0].strip().lower() for h in channel["header"]]
    for ext in data.get("extension") or []:
        if isinstance(ext, dict) and ext.get("url") == EXT_SECRET:
            ext["valueString"] = MASK
    return data


def _comparable(resource: Mapping[str, Any]) -> dict[str, Any]:
    """What we own: the server adds id, meta.versionId / lastUpdated, status (requested → active), error;
    secret values are compared apart (``same_secrets``)."""
    data = {
        k: copy.deepcopy(v) for k, v in _without_secrets(resource).items() if k not in {"id", "status", "error", "text"}
    }
    meta = data.get("meta") or {}
    data["meta"] = {k: v for k, v in meta.items() if k in {"tag", "profile"}}
    return data


def same_secrets(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Every wanted secret is present on the server, with the same value or masked (never printed)."""
    have = _secrets(current)
    for where, value in _secrets(wanted).items():
        if where not in have:
            return False
        if have[where] != value and not _masked(have[where]) and not _masked(value):
            return False
    return True


def unchanged(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """True when the stored Subscription is what we would write (server-managed fields left out)."""
    return _comparable(current) == _comparable(wanted) and same_secrets(current, wanted)


def sync_subscriptions(
    server: SubscriptionServer,
    resources: list[dict[str, Any]],
    *,
    kind: str = "generic",
    wait_seconds: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    rewrite_secrets: bool = False,
) -> list[dict[str, Any]]:
    """Create or update each Subscription, found by its tag, get it to ``active`` the way a ``kind`` server
    expects (ACTIVATIONS), and read it back; one report row per resource with its action, the status
    the server reports and the server's ``error`` text. An ``active`` one is never written back to
    ``requested``. ``rewrite_secrets``: write those carrying a secret again even when they compare equal
    (a server that masks secrets cannot show that the stored one is wrong)."""
    activation = ACTIVATIONS[kind]
    report = []
    for wanted in resources:
        system, code = _tag(wanted)
        found = [r for r in server.search("Subscription", {"_tag": f"{system}|{code}"}) if _has_tag(r, system, code)]
        if not found:
            stored, _ = server.create({**wanted, "status": activation.written})
            action = "created"
        else:
            current = found[0]
            if len(found) > 1:
                log.warning(
                    "%d Subscriptions carry tag %s; updating Subscription/%s", len(found), code, current.get("id")
                )
            status = current.get("status")
            if status in INACTIVE:
                # The server gave up on it (failed handshake / deliveries): asking again re-activates it.
                stored = server.update({**wanted, "id": current["id"], "status": activation.written})
                action = "reactivated"
            elif unchanged(current, wanted) and not (rewrite_secrets and _secrets(wanted)):
                if status == "requested" and not activation.server_activates:
                    stored = server.update({**current, "status": "active"})
                    action = "activated"
                else:
                    stored, action = current, "unchanged"
            else:
                keep = "active" if status == "active" else activation.written
                stored = server.update({**wanted, "id": current["id"], "status": keep})
                action = "updated"
        final = _read_back(server, stored, activation, wait_seconds, sleep, clock)
        report.append(
            {
                "key": code,
                "criteria": wanted["criteria"],
                "id": final.get("id"),
                "action": action,
                "status": final.get("status"),
                "error": final.get("error") or "",
            }
        )
    return report


def _read_back(
    server: SubscriptionServer,
    stored: dict[str, Any],
    activation: Activation,
    wait_seconds: float,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
) -> dict[str, Any]:
    """The Subscription as the server now has it; while the server activates ``requested`` ones itself,
    read again until it has decided (``active`` / ``error``) or ``wait_seconds`` passed."""
    reference = f"Subscription/{stored.get('id')}"
    deadline = clock() + wait_seconds
    current = server.read(reference) or stored
    while activation.server_activates and current.get("status") == "requested" and clock() < deadline:
        sleep(0.25)
        current = server.read(reference) or current
    return current


def not_active(report: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [row for row in report if row.get("status") != "active"]


def stored_problems(current: Mapping[str, Any], wanted: Mapping[str, Any], notify_path: str) -> list[str]:
    """Why the stored Subscription would not deliver what the webhook expects: not active (with the
    server's error text), an endpoint outside this webhook's path, a missing or different secret (never
    printed; a masked one counts as present)."""
    problems = []
    if current.get("status") != "active":
        why = f": {current['error']}" if current.get("error") else ""
        problems.append(f"is {current.get('status') or 'without status'}{why}")
    endpoint = str((current.get("channel") or {}).get("endpoint") or "")
    if urlsplit(endpoint).path.rstrip("/") != notify_path.rstrip("/"):
        problems.append(f"points at {endpoint or 'no endpoint'}, not this webhook ({notify_path})")
    if not same_secrets(current, wanted):
        problems.append("does not carry the secret the webhook expects")
    return problems


def find_stored(server: SubscriptionServer, wanted: Mapping[str, Any]) -> dict[str, Any] | None:
    """The Subscription on the server carrying ``wanted``'s tag (the first, when several do)."""
    system, code = _tag(wanted)
    found = [r for r in server.search("Subscription", {"_tag": f"{system}|{code}"}) if _has_tag(r, system, code)]
    return found[0] if found else None
