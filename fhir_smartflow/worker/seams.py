"""The worker's collaborators that other parts of the service provide, and their stand-ins until then.

- `ResourceFetcher`: fetches what a notification did not carry (id-only, empty, full-resource without
  the resource); for a batch job it can read ahead the focus of every event at once (`read_ahead`). The
  FHIR client implements it; until it is wired, `PassThroughFetcher` hands the event on as it is.
- `GapRecovery`: asked to recover missed events (``$events`` or a ``_lastUpdated`` search).
- `Dispatcher`: receives every deduplicated event; the engine pipeline (worker/pipeline.py) is the real one.
- `RecordingDispatcher`: the default `Dispatcher` until the engine is wired: it
  appends every event it receives to a Redis list, so tests and operators see exactly what reached it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import redis

from fhir_smartflow.events import ResourceEvent

if TYPE_CHECKING:
    from fhir_smartflow.worker.gaps import Gap

log = logging.getLogger(__name__)


class Dispatcher(Protocol):
    """Receives every deduplicated ResourceEvent from the worker."""

    def dispatch(self, event: ResourceEvent) -> object: ...


class ResourceFetcher(Protocol):
    """Completes an event that arrived without its resource.

    Returns the event with its resource (``event.with_resource(...)``), or, for an ``empty`` payload
    without a focus, the events of re-querying the subscription's ``criteria`` (one per resource).
    """

    def fetch(self, event: ResourceEvent) -> ResourceEvent | list[ResourceEvent]: ...

    def read_ahead(self, questions: Sequence[ResourceEvent]) -> ResourceFetcher:
        """The fetcher for one batch job whose events will be fetched as ``questions``: it may answer them
        from what it read ahead (each answer once, the same answer `fetch` would give), and fetches
        anything else itself. ``self`` when nothing is read ahead."""
        ...


class GapRecovery(Protocol):
    """Recovers the events of a recorded gap (called once per gap, after it is recorded)."""

    def recover(self, subscription: str, gap: Gap) -> None: ...


class PassThroughFetcher:
    """Until the FHIR client is wired: hand the event on without a resource."""

    def fetch(self, event: ResourceEvent) -> ResourceEvent:
        log.debug("no fetcher configured: %s dispatched without its resource", event.reference or "criteria event")
        return event

    def read_ahead(self, questions: Sequence[ResourceEvent]) -> PassThroughFetcher:
        return self  # nothing is read


class LoggingGapRecovery:
    """Until recovery is wired: the gap is recorded in Redis and logged; nothing is re-queried."""

    def recover(self, subscription: str, gap: Gap) -> None:
        log.warning(
            "missed events %s..%s of subscription %s (after %s); no gap recovery configured",
            gap.first,
            gap.last,
            subscription,
            gap.after_timestamp or "unknown time",
        )


class RecordingDispatcher:
    """Appends each event's JSON to ``<prefix>dispatched``; logs the reference only (no PHI)."""

    def __init__(self, conn: redis.Redis, key_prefix: str) -> None:
        self.conn = conn
        self.key = f"{key_prefix}dispatched"

    def dispatch(self, event: ResourceEvent) -> None:
        self.conn.rpush(self.key, json.dumps(event.to_dict(), sort_keys=True))
        version = f" v{event.version_id}" if event.version_id else ""
        log.info(
            "dispatched %s%s (%s, subscription %s)",
            event.reference or event.resource_type or "criteria event",
            version,
            event.interaction or "change",
            event.subscription,
        )

    def dispatched(self) -> list[ResourceEvent]:
        """Everything dispatched so far, in order."""
        return [ResourceEvent.from_dict(json.loads(raw)) for raw in self.conn.lrange(self.key, 0, -1)]
