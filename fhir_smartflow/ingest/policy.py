"""What an authenticated subscription may send: the webhook's checks between parsing and queueing.

Authentication says which `[[subscriptions]]` entry a delivery belongs to; these rules (one
`SubscriptionRules` per entry, resolved at start, docs/security.md) say what that entry may deliver:

- resource types: ``resource_types``, else the type of ``criteria``, else the type of a shipped per-type
  ``topic``; an entry naming none is a start error. Any other type: 403, nothing queued.
- path-addressed deliveries (an event whose focus or delete comes only from the path or a header, which
  no credential covers): 403 unless ``allow_path_addressed``; accepted ones stay marked for re-reading.
- the subscription the notification names: never another configured entry's id, and one of
  ``server_ids`` when they are listed: 403 otherwise. It never renames the delivery's subscription.
- the topic it names, when the entry has one: the same canonical (versions aside), else 403.
- ``verify`` is carried on every event (the worker confirms the focus on the FHIR server).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from fhir_smartflow.config import ConfigError, SubscriptionConfig
from fhir_smartflow.fhir.backport import TYPE_FOR_TOPIC, canonical_url
from fhir_smartflow.fhir.notifications import Notification, is_resource_type
from fhir_smartflow.worker.context import parse_criteria


class DeliveryRefused(Exception):
    """An authenticated delivery this subscription may not make (403), with what was wrong."""

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def declared_resource_types(sub: SubscriptionConfig) -> frozenset[str] | None:
    """The resource types ``sub`` may deliver, as declared or derived; None when nothing says."""
    if sub.resource_types:
        return frozenset(sub.resource_types)
    if sub.criteria:
        try:
            return frozenset({parse_criteria(sub.criteria)[0]})
        except ValueError:
            return None
    rtype = TYPE_FOR_TOPIC.get(canonical_url(sub.topic)) if sub.topic else None
    return frozenset({rtype}) if rtype else None


def resource_types_of(sub: SubscriptionConfig) -> frozenset[str]:
    """`declared_resource_types`, checked against the R4 resource types; ConfigError when none or unknown."""
    types = declared_resource_types(sub)
    where = f"[[subscriptions]] {sub.id}"
    if types is None:
        raise ConfigError(
            f"{where} resource_types",
            'declare the resource types this subscription may deliver (e.g. resource_types = ["Patient"]): '
            "neither criteria nor a shipped per-type topic names them",
        )
    unknown = sorted(t for t in types if not is_resource_type(t))
    if unknown:
        key = "resource_types" if sub.resource_types else "criteria"
        raise ConfigError(f"{where} {key}", f"not R4 resource types: {', '.join(unknown)}")
    return types


@dataclass(frozen=True)
class SubscriptionRules:
    id: str
    auth: str
    resource_types: frozenset[str]
    allow_path_addressed: bool
    verify: bool
    server_ids: frozenset[str]
    topic: str

    @classmethod
    def of(cls, sub: SubscriptionConfig) -> SubscriptionRules:
        return cls(
            id=sub.id,
            auth=sub.auth,
            resource_types=resource_types_of(sub),
            allow_path_addressed=sub.allow_path_addressed,
            verify=sub.verify,
            server_ids=frozenset(sub.server_ids),
            topic=canonical_url(sub.topic),
        )


class DeliveryPolicy:
    """The rules of every configured subscription; `apply` checks one parsed delivery against its own."""

    def __init__(self, subscriptions: Iterable[SubscriptionConfig]) -> None:
        self._rules = {sub.id: SubscriptionRules.of(sub) for sub in subscriptions}

    def rules(self, subscription: str) -> SubscriptionRules | None:
        return self._rules.get(subscription)

    def apply(self, subscription: str, notification: Notification) -> Notification:
        """The notification with each event's ``verify`` set; raises `DeliveryRefused`.

        A subscription without rules (insecure-dev mode: nothing is configured) is not checked."""
        rules = self._rules.get(subscription)
        if rules is None:
            return notification
        self._check_subscription(rules, notification)
        self._check_topic(rules, notification)
        self._check_types(rules, notification)
        if notification.path_addressed and not rules.allow_path_addressed:
            raise DeliveryRefused(
                f"subscription {rules.id}: this delivery names its resource only in the request path or "
                f"headers, which its {rules.auth} authentication does not cover; refused (set "
                "allow_path_addressed = true to accept such deliveries as claims re-read from the FHIR server)"
            )
        if all(e.verify == rules.verify for e in notification.events):
            return notification  # parsed with the subscription's verify (the webhook does): nothing to copy
        events = tuple(dataclasses.replace(e, verify=rules.verify) for e in notification.events)
        return dataclasses.replace(notification, events=events)

    def _check_subscription(self, rules: SubscriptionRules, notification: Notification) -> None:
        named = notification.subscription_id
        if named is None:
            return
        if rules.server_ids:
            if named not in rules.server_ids:
                raise DeliveryRefused(
                    f"subscription {rules.id}: the notification names Subscription/{named}, "
                    f"not one of its server_ids ({', '.join(sorted(rules.server_ids))})"
                )
        elif named != rules.id and named in self._rules:
            raise DeliveryRefused(
                f"subscription {rules.id}: the notification names Subscription/{named}, another configured "
                "subscription; a delivery belongs to the subscription whose credentials it carries"
            )

    @staticmethod
    def _check_topic(rules: SubscriptionRules, notification: Notification) -> None:
        if rules.topic and notification.topic and canonical_url(notification.topic) != rules.topic:
            raise DeliveryRefused(f"subscription {rules.id} is for topic {rules.topic}, not {notification.topic}")

    @staticmethod
    def _check_types(rules: SubscriptionRules, notification: Notification) -> None:
        for event in notification.events:
            if event.resource_type and event.resource_type not in rules.resource_types:
                allowed = ", ".join(sorted(rules.resource_types))
                raise DeliveryRefused(
                    f"subscription {rules.id} may deliver {allowed}; this notification carries "
                    f"{event.reference or event.resource_type}; nothing was queued"
                )
