"""What a FHIR server says about itself: its software, whether it does topic-based subscriptions, and the
base URL it believes it has.

- Topic-based subscriptions (R4 Backport IG): declared by a ``backport-subscription`` supported profile,
  ``subscriptiontopic-canonical`` extensions or the IG in ``implementationGuide`` / ``instantiates``, or
  shown by SubscriptionTopic resources the server serves. A server without them (Medplum) stores a
  backport Subscription and never notifies, so ``sync --style backport`` refuses first.
- Its own base: ``implementation.url`` and the host of its paging links (Medplum writes its configured
  host into them). When they differ from ``[fhir] base_url`` the URL guard refuses every next page; the
  guard is never widened, the operator is told exactly what to set (``base_url_advice``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fhir_smartflow.config import Settings
from fhir_smartflow.fhir.backport import PROFILE_SUBSCRIPTION
from fhir_smartflow.fhir.client import FhirClient
from fhir_smartflow.fhir.errors import FhirError, FhirUrlRejected
from fhir_smartflow.fhir.urls import BaseUrl

log = logging.getLogger(__name__)

BACKPORT_IG = "subscriptions-backport"
TOPIC_CANONICAL_EXT_SUFFIX = "capabilitystatement-subscriptiontopic-canonical"


def software(capabilities: Mapping[str, Any]) -> str:
    """``name version`` from CapabilityStatement.software (empty when the server says nothing)."""
    soft = capabilities.get("software") or {}
    return " ".join(str(p) for p in (soft.get("name"), soft.get("version")) if p)


def _resources(capabilities: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    for rest in capabilities.get("rest") or []:
        if rest.get("mode", "server") == "server":
            yield from rest.get("resource") or []


def declares_topic_subscriptions(capabilities: Mapping[str, Any]) -> bool:
    """The CapabilityStatement declares R4 Backport topic-based subscriptions."""
    guides = [*(capabilities.get("implementationGuide") or []), *(capabilities.get("instantiates") or [])]
    if any(BACKPORT_IG in str(g) for g in guides):
        return True
    for resource in _resources(capabilities):
        if resource.get("type") != "Subscription":
            continue
        profiles = [str(p).split("|")[0] for p in resource.get("supportedProfile") or []]
        if PROFILE_SUBSCRIPTION in profiles:
            return True
        if any(str(e.get("url", "")).endswith(TOPIC_CANONICAL_EXT_SUFFIX) for e in resource.get("extension") or []):
            return True
    return False


def topic_subscriptions_supported(capabilities: Mapping[str, Any], has_topics: Callable[[], bool]) -> bool:
    """Declared in the CapabilityStatement, or the server serves SubscriptionTopic resources
    (``has_topics``: a SubscriptionTopic search that found some)."""
    return declares_topic_subscriptions(capabilities) or has_topics()


def self_urls(capabilities: Mapping[str, Any]) -> list[str]:
    """The base URL the server names for itself (CapabilityStatement.implementation.url)."""
    url = (capabilities.get("implementation") or {}).get("url")
    return [str(url).rstrip("/")] if url else []


@dataclass(frozen=True)
class BaseUrlAdvice:
    """The server names itself outside ``[fhir] base_url``: what it said, and exactly what to set."""

    problem: str
    fix: str

    def __str__(self) -> str:
        return f"{self.problem}; {self.fix}"


def base_url_advice(
    base_url: str, capabilities: Mapping[str, Any], link_urls: Iterable[str] = ()
) -> BaseUrlAdvice | None:
    """None when the server's own URLs lie under ``base_url``; else what it said and what to set, e.g.
    ``set [fhir] base_url = "http://localhost:8103/fhir/R4"``."""
    guard = BaseUrl(base_url)
    candidates = [(url, "CapabilityStatement implementation.url") for url in self_urls(capabilities)]
    candidates += [(_base_of(url, guard), "its paging links") for url in link_urls if url]
    for url, where in candidates:
        try:
            guard.check(url)
        except FhirUrlRejected:
            return BaseUrlAdvice(
                f"the server calls itself {url} ({where}), but [fhir] base_url is {guard.url}: the URL guard "
                "refuses its links",
                f'set [fhir] base_url = "{url}" (and reach the server by that name)',
            )
    return None


def _base_of(link: str, guard: BaseUrl) -> str:
    """The base a link implies: its scheme and host with our base path (paging links are ``{base}?...``
    or ``{base}/Type?...``)."""
    parts = urlsplit(link)
    path = parts.path
    if guard.path and guard.path in path:
        path = path[: path.index(guard.path) + len(guard.path)]
    else:
        path = path.rsplit("/", 1)[0] if "/" in path.strip("/") else path
    return f"{parts.scheme}://{parts.netloc}{path}".rstrip("/")


def first_page_links(client: FhirClient, resource_type: str = "Subscription") -> list[str]:
    """The link URLs of one search page (``_count=1``) as the server writes them (read, not followed)."""
    resp = client.request("GET", client.base.join(resource_type), params={"_count": "1"})
    try:
        bundle = resp.json()
    except ValueError:
        return []
    links = bundle.get("link") if isinstance(bundle, dict) else None
    return [str(lk["url"]) for lk in links or [] if isinstance(lk, dict) and lk.get("url")]


def has_subscription_topics(client: FhirClient) -> bool:
    """The server answers a SubscriptionTopic search with at least one topic."""
    try:
        bundle = client.request("GET", client.base.join("SubscriptionTopic"), params={"_count": "1"}).json()
    except (FhirError, ValueError):
        return False
    return isinstance(bundle, dict) and bool(bundle.get("entry"))


def base_url_at_start(settings: Settings) -> BaseUrlAdvice | None:
    """``base_url_advice`` for ``[fhir]``, asked once at start (no retries); None when the server agrees,
    or cannot be asked now (``doctor`` asks again)."""
    if not settings.fhir.base_url:
        return None
    client = FhirClient.asking_once(settings)
    try:
        return base_url_advice(client.base_url, client.capabilities(), first_page_links(client))
    except (FhirError, ValueError) as exc:
        log.info("fhir: could not compare [fhir] base_url with the server's own URL now: %s", exc)
        return None


def warn_on_base_url(settings: Settings) -> None:
    """Log what to set when the server names itself outside ``[fhir] base_url`` (the guard is not widened)."""
    advice = base_url_at_start(settings)
    if advice is not None:
        log.error("fhir: %s; %s", advice.problem, advice.fix)
