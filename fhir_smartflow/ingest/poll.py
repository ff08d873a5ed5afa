"""Polling bridge: subscriptions for FHIR servers that have none (OpenEMR, plain FHIR stores).

For each resource type it picks a strategy from the server's CapabilityStatement:

* ``last-updated``: search ``_lastUpdated=gt<watermark - overlap>&_sort=_lastUpdated&_count=N``, follow
  the ``next`` links, turn each resource into a ``ResourceEvent(source="poll")`` and queue it through the
  same ``enqueue_events`` as the webhook. The watermark (Redis) moves only after a page's events are
  durably queued, so a crash re-reads a little and the worker's dedupe absorbs it.
* ``date-window`` (types in ``[poll] date_window_types``, by default Appointment): OpenEMR's Appointment
  ``_lastUpdated`` is its creation time (``pc_time``, src/Services/FHIR/FhirAppointmentService.php) and its
  ``meta.versionId`` is always "1", so a status change (booked → noshow) is invisible to ``_lastUpdated``.
  Instead, search ``date=ge<now - back>&date=le<now + ahead>`` every pass, compare each appointment with a
  compact snapshot kept in Redis (status, start, participants, lastUpdated) and queue only the changed ones.
* ``unsupported``: the type is not searchable on this server (not in the CapabilityStatement): skipped.

Dedupe marker: ``meta.versionId`` when the CapabilityStatement says the type is versioned; otherwise (OpenEMR
answers versionId "1" forever) ``meta.lastUpdated``, or for the date window the snapshot's hash, so a real
change is never mistaken for a duplicate.

Reads go through the service's one ``FhirClient`` (auth from ``[fhir] auth``, the URL guard on every ``next``
link, retries, ``fhir_requests`` metrics); the CapabilityStatement is the client's cached one.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
import requests

from fhir_smartflow.config import ConfigError, PollConfig, Settings
from fhir_smartflow.connections import Keys, connect
from fhir_smartflow.events import ResourceEvent, content_hash
from fhir_smartflow.fhir.client import FhirClient
from fhir_smartflow.ingest.poll_plan import (
    DATE_WINDOW,
    FULL_SCAN,
    LAST_UPDATED,
    UNSUPPORTED,
    NothingToPoll,
    TypePlan,
    plan_strategies,
    require_something,
)
from fhir_smartflow.instants import format_instant as _iso  # every watermark and query instant
from fhir_smartflow.instants import parse_instant
from fhir_smartflow.metrics import Metrics
from fhir_smartflow.openemr.factory import appointment_sources
from fhir_smartflow.queueing import enqueue_events, queue_for

log = logging.getLogger(__name__)

_BASELINE = "__baseline__"
LOCK_SECONDS = 120
__all__ = ["DATE_WINDOW", "FULL_SCAN", "LAST_UPDATED", "UNSUPPORTED", "NothingToPoll", "Poller", "TypePlan"]
Source = Callable[[datetime], list[dict[str, Any]]]  # resources of a type from an API of its own, at ``now``


class FullScanTooLarge(RuntimeError):
    """A full scan found more resources than [poll] full_scan_max."""


@dataclass
class PassResult:
    resource_type: str
    strategy: str
    found: int = 0
    queued: int = 0
    pages: int = 0
    watermark: str | None = None
    note: str = ""
    error: str | None = None
    queued_ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "queued_ids"}


def _resources(bundle: dict[str, Any], resource_type: str) -> list[dict[str, Any]]:
    out = []
    for entry in bundle.get("entry") or []:
        res = entry.get("resource") or {}
        mode = (entry.get("search") or {}).get("mode", "match")
        if res.get("resourceType") == resource_type and res.get("id") and mode == "match":
            out.append(res)
    return out


def _fingerprint(resource: dict[str, Any]) -> str:
    """The fields a flow can react to. Other edits (comments, display text) fire nothing on OpenEMR, whose
    Appointment lastUpdated / versionId never move; on servers where they do, the change is queued and the
    mappings' ``previous`` conditions decide."""
    meta = resource.get("meta") or {}
    compact = {
        "status": resource.get("status"),
        "start": resource.get("start"),
        "end": resource.get("end"),
        "participants": sorted(
            f"{(p.get('actor') or {}).get('reference')}:{p.get('status')}" for p in resource.get("participant") or []
        ),
        "lastUpdated": meta.get("lastUpdated"),
        "versionId": meta.get("versionId"),
    }
    return f"{resource.get('status')}|{content_hash(compact)}"


def content_marker(resource: dict[str, Any]) -> str:
    """The hash of what a resource says, without the server's bookkeeping (``meta``, the narrative): OpenEMR
    7.0.0 stamps a Patient's ``meta.lastUpdated`` at every read, so that time says nothing about a change."""
    return content_hash({k: v for k, v in resource.items() if k not in {"meta", "text"}})


class Poller:
    """One poller for a set of resource types. ``run_once()`` for a single pass, ``run(stop)`` to keep going."""

    def __init__(
        self,
        client: FhirClient,
        enqueue: Callable[[list[ResourceEvent]], Any],
        conn: redis.Redis,
        keys: Keys,
        config: PollConfig,
        types: Iterable[str],
        metrics: Metrics | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        rng: random.Random | None = None,
        sources: dict[str, Source] | None = None,
    ) -> None:
        self.client = client
        self.enqueue = enqueue
        self.conn = conn
        self.keys = keys
        self.config = config
        self.types = sorted(set(types))
        self.metrics = metrics
        self.clock = clock
        self.rng = rng or random.Random()
        self.sources = dict(sources or {})
        self._plans: list[TypePlan] | None = None
        self._lock: Any = None

    def _keepalive(self) -> None:
        if self._lock is not None:
            self._lock.reacquire()

    # -- keys --------------------------------------------------------------------------------------
    def watermark_key(self, resource_type: str) -> str:
        return self.keys.watermark(f"poll:{resource_type}")

    def snapshot_key(self, resource_type: str) -> str:
        return f"{self.keys.prefix}poll:snapshot:{resource_type}"

    def watermark(self, resource_type: str) -> datetime | None:
        raw = self.conn.hget(self.watermark_key(resource_type), "lastUpdated")
        return parse_instant(raw.decode()) if raw else None

    # -- strategies --------------------------------------------------------------------------------
    def plans(self, refresh: bool = False) -> list[TypePlan]:
        if self._plans is None or refresh:
            capability = self.client.capabilities(refresh=refresh)
            self._plans = plan_strategies(
                capability, self.types, self.config.date_window_types, self.config.full_scan_max, self.sources
            )
        return self._plans

    def require_something(self) -> list[TypePlan]:
        """The plans, or NothingToPoll when every type is unsupported (said loudly, never an idle poller)."""
        plans = self.plans()
        require_something(plans)
        return plans

    def describe(self) -> list[str]:
        return [f"{p.resource_type}: {p.strategy} ({p.reason})" for p in self.plans()]

    def run_once(self) -> list[PassResult]:
        return [self.poll(plan) for plan in self.plans()]

    def poll(self, plan: TypePlan) -> PassResult:
        """One pass over one type, under a Redis lock so two pollers never interleave on a watermark."""
        result = PassResult(plan.resource_type, plan.strategy)
        if plan.strategy == UNSUPPORTED:
            result.note = plan.reason
            return result
        # Short lock, renewed after every page: a killed poller does not block its successor for long.
        lock = self.conn.lock(self.keys.lock(f"poll:{plan.resource_type}"), timeout=LOCK_SECONDS)
        if not lock.acquire(blocking=False):
            result.note = "another poller holds this type"
            return result
        self._lock = lock
        outcome = "error"
        try:
            if plan.strategy == LAST_UPDATED:
                self._poll_last_updated(plan, result)
            elif plan.strategy == DATE_WINDOW:
                self._poll_date_window(plan, result)
            elif plan.strategy == FULL_SCAN:
                self._poll_full_scan(plan, result)
            else:
                self._poll_source(plan, result)
            outcome = "ok"
        except Exception as exc:
            result.error = f"{type(exc).__name__}: {exc}"
            outcome = "error"
            raise
        finally:
            self._lock = None
            with contextlib.suppress(redis.exceptions.LockError):  # expired during a very slow page
                lock.release()
            if self.metrics:
                self.metrics.inc("poll_passes", resource_type=plan.resource_type, result=outcome)
        return result

    def _event(self, plan: TypePlan, resource: dict[str, Any], marker: str | None = None) -> ResourceEvent:
        """The event of a polled resource. Deduplicated on its versionId where the server versions it, else
        on a hash of its content (never on meta.lastUpdated, which some servers stamp at every read)."""
        meta = resource.get("meta") or {}
        return ResourceEvent(
            subscription=f"poll:{plan.resource_type}",
            resource_type=plan.resource_type,
            resource_id=str(resource["id"]),
            received_at=_iso(self.clock()),
            version_id=str(meta["versionId"]) if plan.versioned and meta.get("versionId") else None,
            resource=resource,
            source="poll",
            body_hash=marker or content_marker(resource),
        )

    def _queue(self, events: list[ResourceEvent], result: PassResult) -> None:
        if events:
            ids = self.enqueue(events)
            result.queued += len(events)
            result.queued_ids += [str(i) for i in ids or []]

    def _set_lag(self, resource_type: str, seen_up_to: datetime) -> None:
        if self.metrics:
            lag = max(0.0, (self.clock() - seen_up_to).total_seconds())
            self.metrics.set("poll_lag_seconds", lag, resource_type=resource_type)

    def _poll_last_updated(self, plan: TypePlan, result: PassResult) -> None:
        started = self.clock()
        wkey = self.watermark_key(plan.resource_type)
        mark = self.watermark(plan.resource_type)
        if mark is None:
            if self.config.initial_lookback_hours <= 0:
                self.conn.hset(wkey, mapping={"lastUpdated": _iso(started), "checked": _iso(started)})
                result.watermark, result.note = _iso(started), "first run: watermark set to now, nothing queued"
                self._set_lag(plan.resource_type, started)
                return
            mark = started - timedelta(hours=self.config.initial_lookback_hours)
        since = mark - timedelta(seconds=self.config.overlap_seconds)
        params = {"_lastUpdated": f"gt{_iso(since)}", **self._paging(plan, sort="_lastUpdated")}
        in_order, newest, complete = True, mark, True
        previous_page_max: datetime | None = None
        for bundle in self.client.search_pages(plan.resource_type, params):
            resources = _resources(bundle, plan.resource_type)
            stamps = [parse_instant((r.get("meta") or {}).get("lastUpdated")) for r in resources]
            known = [s for s in stamps if s is not None]
            if (
                len(known) != len(stamps)
                or known != sorted(known)
                or (known and previous_page_max is not None and known[0] < previous_page_max)
            ):
                in_order = False  # the server ignored _sort: only a complete pass may move the watermark
            if known:
                previous_page_max = known[-1]
            self._queue([self._event(plan, r) for r in resources], result)  # durably queued before the mark moves
            result.found += len(resources)
            result.pages += 1
            self._keepalive()
            if known:
                newest = max(newest, *known)
            if in_order and newest > mark:
                self.conn.hset(wkey, "lastUpdated", _iso(newest))
            if result.pages >= self.config.max_pages:
                complete = False
                result.note = f"stopped after {result.pages} pages; the next pass continues"
                break
        if complete:
            self.conn.hset(wkey, mapping={"lastUpdated": _iso(newest), "checked": _iso(started)})
        result.watermark = self.conn.hget(wkey, "lastUpdated").decode()
        self._set_lag(plan.resource_type, started if complete else newest)

    def _poll_date_window(self, plan: TypePlan, result: PassResult) -> None:
        started = self.clock()
        skey = self.snapshot_key(plan.resource_type)
        baseline = not self.conn.hexists(skey, _BASELINE) and self.config.initial_lookback_hours <= 0
        low = (started - timedelta(days=self.config.appointment_window_days_back)).date()
        high = (started + timedelta(days=self.config.appointment_window_days_ahead)).date()
        params: dict[str, Any] = {"date": [f"ge{low.isoformat()}", f"le{high.isoformat()}"], **self._paging(plan)}
        for bundle in self.client.search_pages(plan.resource_type, params):
            resources = _resources(bundle, plan.resource_type)
            result.found += len(resources)
            result.pages += 1
            self._keepalive()
            prints = {r["id"]: _fingerprint(r) for r in resources}
            stored = dict(zip(prints, self.conn.hmget(skey, list(prints)), strict=True)) if prints else {}
            changed = [r for r in resources if (stored[r["id"]] or b"").decode().rsplit("|", 1)[0] != prints[r["id"]]]
            if not baseline:
                self._queue([self._event(plan, r, marker=prints[r["id"]].split("|", 1)[1]) for r in changed], result)
            if changed:  # remember what was queued only after it is durably queued
                self.conn.hset(skey, mapping={r["id"]: f"{prints[r['id']]}|{r.get('start') or ''}" for r in changed})
            if result.pages >= self.config.max_pages:
                result.note = f"stopped after {result.pages} pages"
                break
        self._prune(skey, low.isoformat())
        self.conn.hset(skey, _BASELINE, _iso(started))
        self.conn.hset(self.watermark_key(plan.resource_type), "checked", _iso(started))
        result.watermark = f"window {low.isoformat()}..{high.isoformat()}"
        if baseline:
            result.note = f"first run: recorded {result.found} appointments as they stand, nothing queued"
        self._set_lag(plan.resource_type, started)

    def _paging(self, plan: TypePlan, sort: str = "") -> dict[str, str]:
        """``_count`` / ``_sort`` only where the server declares them (else OpenEMR matches nothing)."""
        params = {"_count": str(self.config.page_size)} if plan.declares("_count") else {}
        if sort and plan.declares("_sort"):
            params["_sort"] = sort
        return params

    def _compare(self, plan: TypePlan, resources: list[dict[str, Any]], baseline: bool, result: PassResult) -> None:
        """Queue the resources whose content hash differs from the one stored, then store the new hashes."""
        skey = self.snapshot_key(plan.resource_type)
        prints = {str(r["id"]): content_marker(r) for r in resources}
        stored = dict(zip(prints, self.conn.hmget(skey, list(prints)), strict=True)) if prints else {}
        changed = [r for r in resources if (stored[str(r["id"])] or b"").decode() != prints[str(r["id"])]]
        if not baseline:
            self._queue([self._event(plan, r, prints[str(r["id"])]) for r in changed], result)
        if changed:  # remembered only after it is durably queued
            self.conn.hset(skey, mapping={str(r["id"]): prints[str(r["id"])] for r in changed})

    def _finish_snapshot(
        self, plan: TypePlan, seen: set[str], started: datetime, baseline: bool, result: PassResult
    ) -> None:
        skey = self.snapshot_key(plan.resource_type)
        gone = [k for k in self.conn.hkeys(skey) if k.decode() not in seen and k != _BASELINE.encode()]
        if gone:
            self.conn.hdel(skey, *gone)
        self.conn.hset(skey, _BASELINE, _iso(started))
        self.conn.hset(self.watermark_key(plan.resource_type), "checked", _iso(started))
        if baseline:
            result.note = f"first run: recorded {result.found} as they stand, nothing queued"
        self._set_lag(plan.resource_type, started)

    def _poll_full_scan(self, plan: TypePlan, result: PassResult) -> None:
        """Read every resource of the type (no _lastUpdated to search by) and queue those whose content changed.
        Bounded: more than [poll] full_scan_max resources fail the pass, naming what the server lacks."""
        started = self.clock()
        skey = self.snapshot_key(plan.resource_type)
        baseline = not self.conn.hexists(skey, _BASELINE) and self.config.initial_lookback_hours <= 0
        seen: set[str] = set()
        for bundle in self.client.search_pages(plan.resource_type, self._paging(plan)):
            resources = _resources(bundle, plan.resource_type)
            result.found += len(resources)
            result.pages += 1
            if result.found > self.config.full_scan_max:
                rtype = plan.resource_type
                raise FullScanTooLarge(
                    f"{rtype}: more than {self.config.full_scan_max} resources in a full scan. This server has no "
                    f"_lastUpdated search for {rtype} (OpenEMR 7.0.0 development builds: upgrade to a release that "
                    f"has it), so every pass reads them all; raise [poll] full_scan_max if that is acceptable, or "
                    f"leave {rtype} out of [poll] types"
                )
            self._keepalive()
            self._compare(plan, resources, baseline, result)
            seen |= {str(r["id"]) for r in resources}
        self._finish_snapshot(plan, seen, started, baseline, result)
        result.watermark = f"full scan of {result.found}"

    def _poll_source(self, plan: TypePlan, result: PassResult) -> None:
        """A type read from an API of its own (``sources``), compared by content hash like a full scan."""
        started = self.clock()
        skey = self.snapshot_key(plan.resource_type)
        baseline = not self.conn.hexists(skey, _BASELINE) and self.config.initial_lookback_hours <= 0
        resources = self.sources[plan.resource_type](started)
        result.found, result.pages = len(resources), 1
        self._compare(plan, resources, baseline, result)
        self._finish_snapshot(plan, {str(r["id"]) for r in resources}, started, baseline, result)
        result.watermark = "own API"

    def _prune(self, skey: str, low: str) -> None:
        """Forget snapshots of appointments that left the window (their start is before it)."""
        stale = []
        for name, value in self.conn.hgetall(skey).items():
            start = value.decode().rsplit("|", 1)[-1][:10]  # "<status>|<hash>|<start>"
            if name != _BASELINE.encode() and start and start < low:
                stale.append(name)
        if stale:
            self.conn.hdel(skey, *stale)

    # -- loop --------------------------------------------------------------------------------------
    def interval(self, resource_type: str) -> float:
        return float(self.config.intervals.get(resource_type, self.config.interval_seconds))

    def run(self, stop: threading.Event, monotonic: Callable[[], float] = time.monotonic) -> None:
        """Poll every type on its own interval (+ jitter), backing off exponentially on errors, until stopped."""
        failures: dict[str, int] = {}
        due: dict[str, float] = {}
        while not stop.is_set():
            try:
                plans = [p for p in self.require_something() if p.strategy != UNSUPPORTED]
            except NothingToPoll:
                raise
            except Exception as exc:  # capability not readable yet: back off and ask again
                failures["*"] = failures.get("*", 0) + 1
                log.warning("poller: cannot read the CapabilityStatement (%s); retrying", type(exc).__name__)
                stop.wait(self._backoff(self.config.interval_seconds, failures["*"]))
                continue
            for plan in plans:
                rtype = plan.resource_type
                if monotonic() < due.get(rtype, 0.0) or stop.is_set():
                    continue
                try:
                    res = self.poll(plan)
                    failures[rtype] = 0
                    if res.queued:
                        log.info("poll %s: found %d, queued %d", rtype, res.found, res.queued)
                    delay = self.interval(rtype) + self.rng.uniform(0, self.config.jitter_seconds)
                except Exception as exc:
                    failures[rtype] = failures.get(rtype, 0) + 1
                    delay = self._backoff(self.interval(rtype), failures[rtype])
                    log.warning("poll %s failed (%s: %s); next try in %.0fs", rtype, type(exc).__name__, exc, delay)
                due[rtype] = monotonic() + delay
            wait = min((due.get(p.resource_type, 0.0) for p in plans), default=self.config.interval_seconds)
            stop.wait(max(0.05, wait - monotonic()))

    def _backoff(self, base: float, failures: int) -> float:
        ceiling = min(self.config.backoff_max_seconds, base * (2 ** min(failures, 16)))
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2) + self.rng.uniform(0, self.config.jitter_seconds)


# -- wiring from Settings ------------------------------------------------------------------------------
def poll_types(settings: Settings) -> list[str]:
    """[poll] types, else the resource types the enabled flows need."""
    if settings.poll.types:
        return list(settings.poll.types)
    from fhir_smartflow.flowfiles import load_engine  # only when the types come from the flows

    # Task is kept: on a plain FHIR server staff complete our Tasks there (task.completed); OpenEMR's
    # CapabilityStatement has no Task, so there it is simply "unsupported".
    return sorted(load_engine(settings).resource_types())


def build_poller(
    settings: Settings,
    conn: redis.Redis | None = None,
    enqueue: Callable[[list[ResourceEvent]], Any] | None = None,
    session: requests.Session | None = None,
    env: Mapping[str, str] | None = None,
) -> Poller:
    """The poller for ``[poll]`` over the client of ``[fhir]`` (``session``: the HTTP session it uses). With
    the OpenEMR write-back, types its FHIR API lacks (Appointment on 7.0.0-dev) come from the Standard API."""
    if not settings.fhir.base_url:
        raise ConfigError("[fhir] base_url", "the poller needs a FHIR server to poll")
    conn = conn if conn is not None else connect(settings)
    metrics = Metrics(conn, settings.redis.key_prefix)
    if enqueue is None:
        queue = queue_for(conn, settings.redis)

        def enqueue(events: list[ResourceEvent]) -> Any:
            return enqueue_events(queue, events, metrics=metrics)

    return Poller(
        FhirClient.from_settings(settings, metrics=metrics, session=session),
        enqueue,
        conn,
        Keys(settings.redis.key_prefix),
        settings.poll,
        poll_types(settings),
        metrics,
        sources=appointment_sources(settings, conn, metrics, env),
    )


def run_poller(settings: Settings, stop: threading.Event, conn: redis.Redis | None = None) -> threading.Thread:
    """Start the poller in a daemon thread (used by `worker` when [poll] enabled); stop it with ``stop``."""
    poller = build_poller(settings, conn)
    for line in poller.describe():
        log.info("poll strategy: %s", line)
    try:
        poller.require_something()
    except NothingToPoll as exc:
        log.error("poller not started: %s", exc)
        raise
    thread = threading.Thread(target=poller.run, args=(stop,), name="smartflow-poller", daemon=True)
    thread.start()
    return thread
