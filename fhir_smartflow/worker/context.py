"""Reading from the FHIR server for the worker: per-event context (planner) and missing resources (ingest).

``CachingContextSource`` answers the planner's reads and searches, each once per event (build a new one
per event, so nothing stale crosses events). ``ClientResourceFetcher`` completes notifications that
did not carry the resource: id-only / full-resource-without-resource → read the focus; empty payload
with no focus → search the subscription's criteria for what changed since the last time. For a batch
job it reads every event's focus in one ``batch`` Bundle first (`ReadAheadFetcher` hands those out).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl

import redis

from fhir_smartflow.config import Settings, SubscriptionConfig
from fhir_smartflow.connections import Keys
from fhir_smartflow.events import ResourceEvent
from fhir_smartflow.fhir.client import FhirClient
from fhir_smartflow.fhir.errors import FhirError
from fhir_smartflow.refs import RESOURCE_ID_RE, RESOURCE_TYPE_RE
from fhir_smartflow.worker.seams import ResourceFetcher

log = logging.getLogger(__name__)

DEFAULT_RECENT = 20  # empty notifications with no watermark yet: look at the most recent N changes


# Definitional / directory resources that change rarely: shared by every event of a process for a short
# while (a Questionnaire's title, a Practitioner's name, a Location's name: the appointment's merge fields),
# so each event does not pay a request for them.
STATIC_TYPES = frozenset({"Questionnaire", "Practitioner", "PractitionerRole", "Organization", "Location"})
STATIC_TTL_SECONDS = 60.0


class StaticCache:
    """Process-wide TTL cache of answers about ``STATIC_TYPES`` (thread-safe; the worst case is one
    extra request when two threads miss together)."""

    def __init__(self, ttl: float = STATIC_TTL_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self._items: dict[Any, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: Any, load: Callable[[], Any]) -> Any:
        now = self.clock()
        with self._lock:
            hit = self._items.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        value = load()
        with self._lock:
            if len(self._items) > 10_000:  # bounded: drop everything rather than grow without limit
                self._items.clear()
            self._items[key] = (now + self.ttl, value)
        return value


class CachingContextSource:
    """ContextSource (engine/interfaces.py) over a FhirClient; caches every answer for one event, and
    answers about ``STATIC_TYPES`` for ``StaticCache.ttl`` seconds across events when given ``shared``."""

    def __init__(self, client: FhirClient, shared: StaticCache | None = None) -> None:
        self.client = client
        self.shared = shared
        self._reads: dict[str, dict[str, Any] | None] = {}
        self._searches: dict[tuple[str, tuple[tuple[str, str], ...]], list[dict[str, Any]]] = {}

    def read(self, reference: str) -> dict[str, Any] | None:
        if reference not in self._reads:
            if self.shared is not None and reference.split("/", 1)[0] in STATIC_TYPES:
                self._reads[reference] = self.shared.get(("read", reference), lambda: self.client.read(reference))
            else:
                self._reads[reference] = self.client.read(reference)
        return self._reads[reference]

    def search(self, resource_type: str, params: dict[str, str]) -> list[dict[str, Any]]:
        key = (resource_type, tuple(sorted((str(k), str(v)) for k, v in params.items())))
        if key not in self._searches:
            if self.shared is not None and resource_type in STATIC_TYPES:
                found = self.shared.get(("search", key), lambda: self.client.search(resource_type, params))
            else:
                found = self.client.search(resource_type, params)
            self._searches[key] = found
            for resource in found:  # a later read of a searched resource needs no request
                if resource.get("id"):
                    self._reads.setdefault(f"{resource.get('resourceType')}/{resource['id']}", resource)
        return self._searches[key]


def parse_criteria(criteria: str) -> tuple[str, dict[str, str]]:
    """``"Appointment?status=noshow"`` → (``Appointment``, {status: noshow}); ValueError when malformed."""
    rtype, _, query = criteria.strip().partition("?")
    if not RESOURCE_TYPE_RE.match(rtype):
        raise ValueError(f"subscription criteria must start with a resource type: {criteria!r}")
    return rtype, dict(parse_qsl(query, keep_blank_values=False))


def _last_updated(resource: dict[str, Any]) -> str:
    return str((resource.get("meta") or {}).get("lastUpdated") or "")


class ClientResourceFetcher:
    """Completes ResourceEvents that arrived without their resource (the ingest's ResourceFetcher)."""

    def __init__(
        self,
        client: FhirClient,
        settings: Settings,
        conn: redis.Redis | None = None,
        keys: Keys | None = None,
        recent: int = DEFAULT_RECENT,
    ) -> None:
        self.client = client
        self.subscriptions: dict[str, SubscriptionConfig] = {s.id: s for s in settings.subscriptions}
        self.conn = conn
        self.keys = keys or Keys(settings.redis.key_prefix)
        self.recent = recent

    def fetch(self, event: ResourceEvent) -> ResourceEvent | list[ResourceEvent]:
        """ResourceFetcher (worker/seams.py): the event with its resource (a focus that is gone becomes a
        delete event), or — for an empty payload without a focus — a list, one event per resource found
        by re-querying the criteria (the ingest dedupes those one by one)."""
        if event.resource is not None or event.interaction == "delete":
            return event
        if event.resource_id:
            return self._fetch_focus(event)
        return self._fetch_by_criteria(event)

    def read_ahead(self, questions: Sequence[ResourceEvent]) -> ResourceFetcher:
        """ResourceFetcher.read_ahead (worker/seams.py): the first focus read of each question (2+ distinct
        ones) in one ``batch`` Bundle, when the server lists ``batch``; ``self`` when that is not worth it
        or fails, so every fetch goes to the server as it would have."""
        reads = list(dict.fromkeys(read for question in questions if (read := focus_read(question)) is not None))
        if len(reads) < 2 or not self.client.supports_interaction("batch"):
            return self
        answers = self._batch_read(reads)
        return ReadAheadFetcher(self, answers) if answers else self

    def _batch_read(self, reads: list[FocusRead]) -> dict[FocusRead, dict[str, Any]]:
        """The resources of the entries that answer their read exactly; whatever the server answered, no
        exception (the fetches it did not answer ask on their own). Logged: counts and statuses only."""
        try:
            entries = self.client.batch_read([_path(read) for read in reads])
        except FhirError as exc:
            log.debug("read-ahead: a batch of %d reads failed (status %s); reading one by one", len(reads), exc.status)
            return {}
        answers = {
            read: resource
            for read, entry in zip(reads, entries, strict=True)
            if (resource := _exact_answer(read, entry)) is not None
        }
        log.debug("read-ahead: %d of %d reads answered (statuses %s)", len(answers), len(reads), _statuses(entries))
        return answers

    def _fetch_focus(self, event: ResourceEvent) -> ResourceEvent:
        read = focus_read(event)
        if read is None:
            raise ValueError(f"event focus is not a valid Type/id: {event.resource_type}/{event.resource_id}")
        rtype, rid, version = read
        resource = None
        if version is not None:
            try:  # the version the notification is about, when the server keeps history
                resource = self.client.vread(rtype, rid, version)
            except FhirError as exc:
                if exc.transient:
                    raise
                log.debug("fetch: vread of %s unsupported (%s); reading current", event.reference, exc.status)
        if resource is None:
            resource = self.client.read(f"{rtype}/{rid}")
        if resource is None:
            log.info("fetch: %s is gone (404/410): treating as a delete", event.reference)
            return dataclasses.replace(event, interaction="delete")
        return event.with_resource(resource)

    def _fetch_by_criteria(self, event: ResourceEvent) -> list[ResourceEvent]:
        sub = self.subscriptions.get(event.subscription)
        criteria = (sub.criteria if sub else "") or (f"{event.resource_type}?" if event.resource_type else "")
        if not criteria:
            log.warning(
                "fetch: empty notification from %s and no criteria configured: nothing to fetch", event.subscription
            )
            return []
        rtype, params = parse_criteria(criteria)
        mark_key = self.keys.watermark(f"empty:{event.subscription}:{rtype}")
        mark = self.conn.get(mark_key) if self.conn is not None else None
        if mark:
            params["_lastUpdated"] = f"ge{mark.decode()}"
            found = self.client.search(rtype, params)
        else:  # first empty notification: only the most recent changes
            params.update({"_sort": "-_lastUpdated", "_count": str(self.recent)})
            found = next(iter(self.client.search_pages(rtype, params)), {})
            found = [e["resource"] for e in found.get("entry") or [] if isinstance(e.get("resource"), dict)]
            found = [r for r in found if r.get("resourceType") == rtype]
        events = [
            dataclasses.replace(
                event,
                resource_type=rtype,
                resource_id=str(r.get("id")),
                payload_content="full-resource",
            ).with_resource(r)
            for r in found
            if r.get("id")
        ]
        newest = max((_last_updated(r) for r in found), default="")
        if newest and self.conn is not None and (not mark or newest > mark.decode()):
            self.conn.set(mark_key, newest)
        return events


FocusRead = tuple[str, str, str | None]  # type, id, version (None: the current version)


def focus_read(event: ResourceEvent) -> FocusRead | None:
    """The first GET `ClientResourceFetcher.fetch` sends for ``event``: its focus at the notified version
    (a vread) or the current one (a read). None when it reads no focus: the resource came with the event,
    a delete, no focus (criteria), or a focus that is not a valid Type/id (fetch refuses it)."""
    if event.resource is not None or event.interaction == "delete" or not event.resource_id:
        return None
    if not RESOURCE_TYPE_RE.match(event.resource_type) or not RESOURCE_ID_RE.match(event.resource_id):
        return None
    version = event.version_id if event.version_id and RESOURCE_ID_RE.match(event.version_id) else None
    return event.resource_type, event.resource_id, version


def _path(read: FocusRead) -> str:
    rtype, rid, version = read
    return f"{rtype}/{rid}/_history/{version}" if version is not None else f"{rtype}/{rid}"


def _exact_answer(read: FocusRead, entry: dict[str, Any]) -> dict[str, Any] | None:
    """The entry's resource when it is what the GET of ``read`` would have answered: ``200`` with the
    resource of that type and id (and version, for a vread); else None (that fetch asks on its own)."""
    resource = entry.get("resource")
    if _entry_code(entry) != "200" or not isinstance(resource, dict):
        return None
    rtype, rid, version = read
    if resource.get("resourceType") != rtype or resource.get("id") != rid:
        return None
    meta = resource.get("meta")
    if version is not None and (not isinstance(meta, dict) or str(meta.get("versionId")) != version):
        return None
    return resource


def _statuses(entries: list[dict[str, Any]]) -> str:
    """``200: 5, 404: 1``: what the entries answered, without a word of their content."""
    codes = Counter(_entry_code(entry) for entry in entries)
    return ", ".join(f"{code}: {count}" for code, count in sorted(codes.items()))


def _entry_code(entry: dict[str, Any]) -> str:
    """The status code of a batch response entry (``"404"`` of ``"404 Not Found"``); ``"?"`` without one."""
    response = entry.get("response")
    status = response.get("status") if isinstance(response, dict) else None
    return str(status).split(" ", 1)[0] if status else "?"


class ReadAheadFetcher:
    """A batch job's ResourceFetcher: a fetch whose first read was read ahead takes that answer, once (the
    answer the server gave to that very GET, so the event comes out as it would have); any other fetch,
    or a second one of the same read, goes to ``fetcher`` as without the read-ahead."""

    def __init__(self, fetcher: ClientResourceFetcher, answers: dict[FocusRead, dict[str, Any]]) -> None:
        self.fetcher = fetcher
        self._answers = answers

    def fetch(self, event: ResourceEvent) -> ResourceEvent | list[ResourceEvent]:
        read = focus_read(event)
        resource = self._answers.pop(read, None) if read is not None else None
        if resource is None:
            return self.fetcher.fetch(event)
        return event.with_resource(resource)

    def read_ahead(self, questions: Sequence[ResourceEvent]) -> ResourceFetcher:
        return self.fetcher.read_ahead(questions)
