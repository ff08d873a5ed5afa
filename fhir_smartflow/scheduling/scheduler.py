"""``RqScheduler``: pending follow-ups in a compact Redis sorted set, fired as rq jobs when due.

Design (docs/scheduling.md has the why): a pending follow-up is one member of ``sched:due`` (score =
due instant) plus one field of the ``sched:data`` hash and two index-set members (group, patient).
No rq job exists until the follow-up is due: ``tick(now)`` claims due members atomically (WATCH/MULTI,
so two racing ticks get disjoint sets), enqueues each as an rq job with a deterministic job id, then
records it as fired. "Now" comes from an injectable clock, so tests fast-forward without sleeping.
Everything lives in Redis: a restarted scheduler continues where the last one stopped, and
follow-ups that came due while nothing ran fire on the next tick (catch-up, lateness logged).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from rq import Queue
from rq.job import Job, JobStatus

from fhir_smartflow.connections import Keys
from fhir_smartflow.engine.plan import Schedule
from fhir_smartflow.metrics import Metrics
from fhir_smartflow.scheduling.clock import Clock

log = logging.getLogger(__name__)

JOB_FUNC = "fhir_smartflow.scheduling.jobs.run_followup"
JOB_ID_PREFIX = "smartflow-followup-"
# Kinds whose identifier may be scheduled again after it fired (each deferral of a delivery is a new fire).
REPEATABLE_KINDS = frozenset({"delivery"})
_ACTIVE_JOB_STATES = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED}


class ScheduleKeys:
    """The scheduler's Redis keys, all under the service prefix."""

    def __init__(self, keys: Keys) -> None:
        base = f"{keys.prefix}sched:"
        self.due = base + "due"  # zset identifier -> due epoch seconds
        self.data = base + "data"  # hash identifier -> compact JSON {k, a, p, n}
        self.inflight = base + "inflight"  # hash identifier -> claimed epoch (crash recovery)
        self.fired = base + "fired"  # zset identifier -> fired epoch (no re-scheduling a fired one)
        self._base = base
        self.lock = keys.lock("scheduler")

    def group(self, group: str) -> str:
        return f"{self._base}g:{group}"

    def patient(self, patient: str) -> str:
        return f"{self._base}p:{patient}"

    def ran(self, identifier: str, at: str) -> str:
        return f"{self._base}ran:{identifier}@{at}"


def job_id_for(identifier: str) -> str:
    """rq job ids allow only [A-Za-z0-9_-]; our identifiers contain '/' — hash them (deterministic)."""
    return JOB_ID_PREFIX + hashlib.sha256(identifier.encode()).hexdigest()[:40]


@dataclass(frozen=True)
class Pending:
    identifier: str
    kind: str
    at: datetime
    payload: dict[str, Any]
    action: str = ""


def _encode(action: Schedule) -> str:
    return json.dumps(
        {"k": action.kind, "a": round(_epoch(action.at), 3), "p": action.payload, "n": action.action},
        separators=(",", ":"),
        default=str,
    )


def _decode(identifier: str, blob: bytes | str) -> Pending:
    raw = json.loads(blob)
    return Pending(identifier, raw["k"], datetime.fromtimestamp(raw["a"], UTC), raw.get("p") or {}, raw.get("n", ""))


def _epoch(when: datetime) -> float:
    if when.tzinfo is None:
        raise ValueError("Schedule.at must be timezone-aware (UTC)")
    return when.timestamp()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RqScheduler:
    """Implements the ``Scheduler`` protocol (engine/interfaces.py) on Redis + rq."""

    def __init__(
        self,
        conn: redis.Redis,
        keys: Keys,
        queue: Queue,
        clock: Clock,
        metrics: Metrics | None = None,
        *,
        batch_size: int = 500,
        late_warning_seconds: float = 60.0,
        inflight_timeout_seconds: float = 60.0,
        fired_retention_seconds: int = 30 * 24 * 3600,
        job_timeout_seconds: int | None = None,
        result_ttl_seconds: int = 3600,
        failure_ttl_seconds: int | None = None,
    ) -> None:
        self.conn = conn
        self.keys = keys
        self.skeys = ScheduleKeys(keys)
        self.queue = queue
        self.clock = clock
        self.metrics = metrics
        self.batch_size = batch_size
        self.late_warning_seconds = late_warning_seconds
        self.inflight_timeout_seconds = inflight_timeout_seconds
        self.fired_retention_seconds = fired_retention_seconds
        self.job_timeout_seconds = job_timeout_seconds
        self.result_ttl_seconds = result_ttl_seconds
        self.failure_ttl_seconds = failure_ttl_seconds

    # -- Scheduler protocol -------------------------------------------------------------------------

    def schedule(self, action: Schedule) -> None:
        """Fire ``action`` once at ``action.at``. The same identifier scheduled twice stays one job."""
        self.add(action)

    def cancel(self, group: str | None = None, patient: str | None = None, flows: tuple[str, ...] = ()) -> int:
        """Remove pending follow-ups of a workflow group, or of a patient's ``flows`` (all flows when
        empty). Returns how many were removed. Already-fired ones re-check the Task when they run."""
        ids: set[str] = set()
        if group:
            ids |= {_text(m) for m in self.conn.smembers(self.skeys.group(group))}
        if patient:
            members = [_text(m) for m in self.conn.smembers(self.skeys.patient(patient))]
            if flows:
                blobs = self.conn.hmget(self.skeys.data, members) if members else []
                members = [
                    m
                    for m, b in zip(members, blobs, strict=True)
                    if b and _decode(m, b).payload.get("flow_id") in flows
                ]
            ids |= set(members)
        removed = 0
        ordered = sorted(ids)
        for start in range(0, len(ordered), self.batch_size):
            removed += self._remove(ordered[start : start + self.batch_size], result="cancelled")
        if removed:
            log.info("cancelled %d pending follow-up(s) (group=%s patient=%s flows=%s)", removed, group, patient, flows)
        return removed

    # -- more API -----------------------------------------------------------------------------------

    def add(self, action: Schedule, force: bool = False) -> bool:
        """Store a pending follow-up. False when it is already pending, or already fired (unless
        ``force`` or a repeatable kind)."""
        identifier = action.identifier
        if not force and action.kind not in REPEATABLE_KINDS and self.conn.zscore(self.skeys.fired, identifier):
            self._count(action.kind, "already-fired")
            return False
        if self.conn.hexists(self.skeys.inflight, identifier):
            self._count(action.kind, "duplicate")
            return False
        pipe = self.conn.pipeline(transaction=True)
        if force:
            pipe.zrem(self.skeys.fired, identifier)
        pipe.zadd(self.skeys.due, {identifier: _epoch(action.at)}, nx=True)
        pipe.hsetnx(self.skeys.data, identifier, _encode(action))
        group, patient = action.payload.get("group"), action.payload.get("patient")
        if group:
            pipe.sadd(self.skeys.group(str(group)), identifier)
        if patient:
            pipe.sadd(self.skeys.patient(str(patient)), identifier)
        results = pipe.execute()
        added = bool(results[1 if force else 0])
        self._count(action.kind, "scheduled" if added else "duplicate")
        if added:
            log.debug("scheduled %s %s at %s", action.kind, identifier, action.at.isoformat())
        return added

    def reschedule(self, action: Schedule) -> bool:
        """Schedule an identifier again even though it fired (a failed follow-up's retry)."""
        return self.add(action, force=True)

    def get(self, identifier: str) -> Pending | None:
        blob = self.conn.hget(self.skeys.data, identifier)
        return _decode(identifier, blob) if blob else None

    def pending_count(self) -> int:
        return int(self.conn.zcard(self.skeys.due))

    def next_due(self) -> datetime | None:
        first = self.conn.zrange(self.skeys.due, 0, 0, withscores=True)
        return datetime.fromtimestamp(first[0][1], UTC) if first else None

    def tick(self, now: datetime | None = None) -> int:
        """Move every follow-up due at ``now`` into the rq queue. Returns how many were enqueued."""
        now = now or self.clock.now()
        enqueued = self._recover_inflight(now)
        while True:
            claimed = self._claim(now)
            for identifier, blob in claimed:
                enqueued += self._fire(identifier, blob, now)
            if len(claimed) < self.batch_size:
                break
        self.conn.zremrangebyscore(self.skeys.fired, "-inf", _epoch(now) - self.fired_retention_seconds)
        return enqueued

    # -- internals ----------------------------------------------------------------------------------

    def _claim(self, now: datetime) -> list[tuple[str, bytes | None]]:
        """Atomically take up to batch_size due members out of ``due`` into ``inflight``."""
        with self.conn.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(self.skeys.due)
                    due = pipe.zrangebyscore(self.skeys.due, "-inf", _epoch(now), 0, self.batch_size)
                    ids = [_text(m) for m in due]
                    if not ids:
                        pipe.unwatch()
                        return []
                    blobs = pipe.hmget(self.skeys.data, ids)
                    pipe.multi()
                    pipe.zrem(self.skeys.due, *ids)
                    pipe.hset(self.skeys.inflight, mapping={i: _epoch(now) for i in ids})
                    pipe.execute()
                    return list(zip(ids, blobs, strict=True))
                except redis.WatchError:
                    continue  # another tick or a schedule() changed the set: read it again

    def _recover_inflight(self, now: datetime) -> int:
        """Re-fire follow-ups a crashed scheduler claimed but may not have enqueued."""
        stale = [
            _text(i)
            for i, claimed in self.conn.hgetall(self.skeys.inflight).items()
            if _epoch(now) - float(claimed) > self.inflight_timeout_seconds
        ]
        fired = 0
        for identifier in stale:
            log.warning("recovering follow-up %s claimed by a scheduler that did not finish", identifier)
            fired += self._fire(identifier, self.conn.hget(self.skeys.data, identifier), now)
        return fired

    def _fire(self, identifier: str, blob: bytes | None, now: datetime) -> int:
        if blob is None:  # cancelled between claim and fire
            self.conn.hdel(self.skeys.inflight, identifier)
            return 0
        item = _decode(identifier, blob)
        late = max(0.0, (now - item.at).total_seconds())
        job_id = job_id_for(identifier)
        enqueued = 0
        existing = Job.fetch(job_id, connection=self.conn) if Job.exists(job_id, connection=self.conn) else None
        if existing is not None and existing.get_status(refresh=False) in _ACTIVE_JOB_STATES:
            log.info("follow-up %s already queued as %s", identifier, job_id)
        else:
            self.queue.enqueue_call(
                JOB_FUNC,
                args=(item.kind, item.payload),
                kwargs={"identifier": identifier, "scheduled_at": item.at.isoformat(), "late_seconds": round(late, 3)},
                job_id=job_id,
                timeout=self.job_timeout_seconds,
                result_ttl=self.result_ttl_seconds,
                failure_ttl=self.failure_ttl_seconds,
                description=f"follow-up {item.kind} {job_id}",  # no payload (PHI) in the description
            )
            enqueued = 1
        pipe = self.conn.pipeline(transaction=True)
        pipe.hdel(self.skeys.data, identifier)
        pipe.hdel(self.skeys.inflight, identifier)
        pipe.zadd(self.skeys.fired, {identifier: _epoch(now)})
        self._unindex(pipe, identifier, item)
        pipe.execute()
        self._count(item.kind, "enqueued")
        if late > self.late_warning_seconds:
            self._count(item.kind, "late")
            log.warning(
                "follow-up %s %s fired %.0f s late (due %s; catch-up after downtime)",
                item.kind,
                identifier,
                late,
                item.at.isoformat(),
            )
        return enqueued

    def _remove(self, ids: list[str], result: str) -> int:
        blobs = self.conn.hmget(self.skeys.data, ids)
        pipe = self.conn.pipeline(transaction=True)
        for identifier in ids:
            pipe.zrem(self.skeys.due, identifier)
        pipe.hdel(self.skeys.data, *ids)
        for identifier, blob in zip(ids, blobs, strict=True):
            if blob:
                self._unindex(pipe, identifier, _decode(identifier, blob))
        results = pipe.execute()
        removed = 0
        for identifier, blob, gone in zip(ids, blobs, results[: len(ids)], strict=True):
            if gone:
                removed += 1
                self._count(_decode(identifier, blob).kind if blob else "unknown", result)
        return removed

    def _unindex(self, pipe: Any, identifier: str, item: Pending) -> None:
        if item.payload.get("group"):
            pipe.srem(self.skeys.group(str(item.payload["group"])), identifier)
        if item.payload.get("patient"):
            pipe.srem(self.skeys.patient(str(item.payload["patient"])), identifier)

    def _count(self, kind: str, result: str) -> None:
        if self.metrics is not None:
            self.metrics.inc("scheduled_jobs", kind=kind, result=result)


class SchedulerLock:
    """Only one scheduler loop is active: a Redis lock with a TTL, renewed on every loop."""

    def __init__(self, conn: redis.Redis, key: str, ttl_seconds: float = 30.0, token: str | None = None) -> None:
        self.conn = conn
        self.key = key
        self.ttl_ms = int(ttl_seconds * 1000)
        self.token = token or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def acquire(self) -> bool:
        """Take the lock, or renew it when we hold it. False when another scheduler holds it."""
        if self.conn.set(self.key, self.token, nx=True, px=self.ttl_ms):
            return True
        return self._if_mine(lambda pipe: pipe.pexpire(self.key, self.ttl_ms))

    def release(self) -> None:
        self._if_mine(lambda pipe: pipe.delete(self.key))

    def holder(self) -> str | None:
        value = self.conn.get(self.key)
        return _text(value) if value is not None else None

    def _if_mine(self, op: Any) -> bool:
        with self.conn.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(self.key)
                if pipe.get(self.key) != self.token.encode():
                    pipe.unwatch()
                    return False
                pipe.multi()
                op(pipe)
                pipe.execute()
                return True
            except redis.WatchError:
                return False


def run_scheduler_loop(
    scheduler: RqScheduler,
    stop: threading.Event,
    *,
    interval_seconds: float = 1.0,
    lock_ttl_seconds: float = 30.0,
    lock: SchedulerLock | None = None,
) -> None:
    """Tick every ``interval_seconds`` while holding the scheduler lock; stand by while another holds it.

    For ``fhir-smartflow scheduler`` and for a thread started by ``worker --with-scheduler``.
    """
    lock = lock or SchedulerLock(scheduler.conn, scheduler.skeys.lock, lock_ttl_seconds)
    state = "starting"
    log.info("scheduler %s starting (lock %s, interval %.1fs)", lock.token, lock.key, interval_seconds)
    try:
        while not stop.is_set():
            try:
                if lock.acquire():
                    if state != "active":
                        log.info("scheduler %s is active", lock.token)
                        state = "active"
                    fired = scheduler.tick()
                    if fired:
                        log.info("enqueued %d due follow-up(s)", fired)
                elif state != "standby":
                    log.info("another scheduler (%s) holds the lock; %s stands by", lock.holder(), lock.token)
                    state = "standby"
            except redis.RedisError as exc:
                log.warning("scheduler tick failed (%s); retrying", type(exc).__name__)
            stop.wait(interval_seconds)
    finally:
        with contextlib.suppress(redis.RedisError):
            lock.release()
        log.info("scheduler %s stopped", lock.token)


def start_scheduler_thread(
    scheduler: RqScheduler, stop: threading.Event, *, interval_seconds: float = 1.0, lock_ttl_seconds: float = 30.0
) -> threading.Thread:
    """The ``worker --with-scheduler`` hook: the loop in a daemon thread, stopped by ``stop``."""
    thread = threading.Thread(
        target=run_scheduler_loop,
        args=(scheduler, stop),
        kwargs={"interval_seconds": interval_seconds, "lock_ttl_seconds": lock_ttl_seconds},
        name="smartflow-scheduler",
        daemon=True,
    )
    thread.start()
    return thread


def build_scheduler(settings: Any, conn: redis.Redis, clock: Clock | None = None) -> RqScheduler:
    """The scheduler for a process, from settings (used by the runtime and the scheduler command)."""
    from fhir_smartflow import defaults
    from fhir_smartflow.scheduling.clock import make_clock

    keys = Keys(settings.redis.key_prefix)
    cfg = getattr(settings, "scheduler", None)
    return RqScheduler(
        conn,
        keys,
        Queue(settings.redis.queue, connection=conn),
        clock or make_clock(conn, keys, test_clock=bool(getattr(cfg, "test_clock", False))),
        Metrics(conn, settings.redis.key_prefix),
        batch_size=getattr(cfg, "batch_size", 500),
        late_warning_seconds=getattr(cfg, "late_warning_seconds", 60.0),
        fired_retention_seconds=getattr(cfg, "fired_retention_seconds", 30 * 24 * 3600),
        job_timeout_seconds=settings.redis.job_timeout_seconds,
        failure_ttl_seconds=defaults.FAILED_JOB_TTL_SECONDS,
    )


def iter_pending(scheduler: RqScheduler, limit: int = 100) -> Iterable[Pending]:
    """The next ``limit`` pending follow-ups, soonest first (for status output)."""
    ids = [_text(m) for m in scheduler.conn.zrange(scheduler.skeys.due, 0, limit - 1)]
    for identifier, blob in zip(ids, scheduler.conn.hmget(scheduler.skeys.data, ids) if ids else [], strict=True):
        if blob:
            yield _decode(identifier, blob)
