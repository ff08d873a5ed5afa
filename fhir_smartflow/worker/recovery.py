"""Gap recovery: fetch the events a subscription missed (an event-number jump).

First ``Subscription/<id>/$events?eventsSinceNumber=&eventsUntilNumber=`` (Subscriptions Backport IG:
returns a notification Bundle, type history, first entry the status), else — when the server does not
support the operation — search the subscription's resource type by ``_lastUpdated=ge<since>``.
Recovered events are marked ``source="recovery"`` and go through the same dedupe as any other.

The returned notification bundle is read with the ingest's parser (``fhir/notifications.py``), so recovered
events look exactly like delivered ones. ``ClientGapRecovery`` plugs this into the ingest's gap tracker.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import redis
import rq

from fhir_smartflow.config import Settings, SubscriptionConfig
from fhir_smartflow.connections import Keys
from fhir_smartflow.events import ResourceEvent
from fhir_smartflow.fhir.client import FhirClient
from fhir_smartflow.fhir.errors import FhirError
from fhir_smartflow.fhir.notifications import NotificationError, parse_notification
from fhir_smartflow.metrics import Metrics
from fhir_smartflow.queueing import enqueue_events
from fhir_smartflow.refs import RESOURCE_ID_RE, parse_reference
from fhir_smartflow.worker.context import parse_criteria
from fhir_smartflow.worker.gaps import Gap

log = logging.getLogger(__name__)


def recover_gap(
    client: FhirClient,
    subscription: SubscriptionConfig,
    gap: dict[str, Any],
    *,
    server_id: str | None = None,
    now: datetime | None = None,
) -> list[ResourceEvent]:
    """Events numbered ``gap["from"]``..``gap["to"]`` (inclusive), or changes since ``gap["since_timestamp"]``.

    ``server_id`` is the Subscription's logical id on the FHIR server (defaults to the configured id).
    """
    received = (now or datetime.now(UTC)).isoformat()
    sub_id = server_id or subscription.id
    if not RESOURCE_ID_RE.match(sub_id):
        raise ValueError(f"not a valid Subscription id: {sub_id!r}")
    try:
        bundle = client.operation(
            f"Subscription/{sub_id}/$events",
            {"eventsSinceNumber": str(gap["from"]), "eventsUntilNumber": str(gap["to"])},
        )
    except FhirError as exc:
        if exc.transient:
            raise
        log.info("recovery: %s has no usable $events (%s); searching by _lastUpdated", subscription.id, exc.status)
    else:
        events = parse_notification_events(bundle, subscription, received)
        if events is not None:
            return events
        log.info("recovery: $events for %s did not answer a notification bundle; searching instead", subscription.id)
    return _search_since(client, subscription, gap.get("since_timestamp"), received)


def _search_since(
    client: FhirClient, subscription: SubscriptionConfig, since: str | None, received: str
) -> list[ResourceEvent]:
    if not subscription.criteria:
        log.warning("recovery: %s has no criteria; cannot search for missed changes", subscription.id)
        return []
    rtype, _ = parse_criteria(subscription.criteria)  # mappings decide what matters: search the whole type
    params = {"_lastUpdated": f"ge{since}"} if since else {}
    events = []
    for resource in client.search(rtype, params):
        if not resource.get("id"):
            continue
        events.append(
            ResourceEvent(
                subscription=subscription.id,
                resource_type=rtype,
                resource_id=str(resource["id"]),
                received_at=received,
                topic=subscription.topic or None,
                version_id=(resource.get("meta") or {}).get("versionId"),
                resource=resource,
                timestamp=(resource.get("meta") or {}).get("lastUpdated"),
                payload_content="full-resource",
                source="recovery",
            )
        )
    return events


def parse_notification_events(
    bundle: dict[str, Any], subscription: SubscriptionConfig, received: str
) -> list[ResourceEvent] | None:
    """ResourceEvents of a notification Bundle (the ingest's parser); None when it is not one."""
    body = json.dumps(bundle).encode()
    try:
        note = parse_notification(
            "POST",
            None,
            {"Content-Type": "application/fhir+json"},
            body,
            subscription=subscription.id,
            received_at=received,
        )
    except NotificationError as exc:
        log.info("recovery: $events answer is not a notification bundle: %s", exc.message)
        return None
    if note.style in {"rest-hook", "hapi", "medplum"}:  # a plain Bundle of resources, not a notification
        return None
    return [
        dataclasses.replace(event, source="recovery", topic=event.topic or subscription.topic or None)
        for event in note.events
    ]


class ClientGapRecovery:
    """GapRecovery (worker/seams.py): recover a recorded gap and enqueue its events like any others."""

    def __init__(
        self,
        client: FhirClient,
        settings: Settings,
        conn: redis.Redis,
        queue: rq.Queue,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.client = client
        self.subscriptions = {s.id: s for s in settings.subscriptions}
        self.conn = conn
        self.keys = Keys(settings.redis.key_prefix)
        self.queue = queue
        self.metrics = metrics
        self.clock = clock

    def server_id(self, subscription: str) -> str | None:
        """The Subscription's id on the server, as its notifications named it (kept by the webhook)."""
        raw = self.conn.hget(self.keys.subscription(subscription), "server_subscription")
        if not raw:
            return None
        ref = parse_reference(raw.decode())
        return ref[1] if ref and ref[0] == "Subscription" else None

    def recover(self, subscription: str, gap: Gap) -> None:
        config = self.subscriptions.get(subscription) or SubscriptionConfig(id=subscription)
        events = recover_gap(
            self.client,
            config,
            {"from": gap.first, "to": gap.last, "since_timestamp": gap.after_timestamp},
            server_id=self.server_id(subscription),
            now=self.clock(),
        )
        enqueue_events(self.queue, events, metrics=self.metrics)
        log.info("recovery: %s events %s..%s: %d event(s) re-queued", subscription, gap.first, gap.last, len(events))
