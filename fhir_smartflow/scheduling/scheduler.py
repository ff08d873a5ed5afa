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
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import redis
from rq import Queue
from rq.job import Job, JobStatus

from fhir_smartflow import defaults
from fhir_smartflow.config import Settings
from fhir_smartflow.connections import Keys
from fhir_smartflow.engine.plan import Schedule
from fhir_smartflow.metrics import Metrics
from fhir_smartflow.queueing import queue_for
from fhir_smartflow.scheduling.clock import Clock, make_clock

log = logging.getLogger(__name__)

JOB_FUNC = "fhir_smartflow.worker.followup_jobs.run_followup"
JOB_ID_PREFIX = "smartflow-followup-"
# Kinds whose identifier may be scheduled again after it fired (each deferral of a delivery is a new fire).
REPEATABLE_KINDS = frozenset({"delivery"})
_ACTIVE_JOB_STATES = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED}
_ACTIVE_STATUS_VALUES = frozenset(s.value for s in _ACTIVE_JOB_STATES)  # as stored in the job hash


class ScheduleKeys:
    """The scheduler's Redis keys, all under the service prefix."""

    def __init__(self, keys: Keys) -> None:
        base = f"{keys.prefix}sched:"
        # Members are short_id(identifier); the identifier itself is inside the data blob.
        self.due = base + "due"  # zset sid -> due epoch seconds
        self.data = base + "data"  # hash sid -> compressed JSON {i, k, a, p, n}
        self.inflight = base + "inflight"  # hash sid -> claimed epoch (crash recovery)
        self.fired = base + "fired"  # zset sid -> fired epoch (no re-scheduling a fired one)
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


# Blobs are raw DEFLATE with a preset dictionary of the payload's usual keys and values: a reminder's
# ~470 bytes of JSON become ~150 (the memory budget is 1 KiB per pending reminder). The first byte is
# the format version; NEVER edit _ZDICT_V1 (stored blobs need it to decode) — add a version instead.
_ZDICT_V1 = (
    b'{"i":"","k":"reminder","a":,"p":{"flow_id":"","flow_version":"1","action":"","action_index":0,'
    b'"trigger_id":"patient.registered|Patient/|v1","task_identifier":"/task/","group":"",'
    b'"patient":"Patient/","due":"T00:00:00+00:00","occurrence":,"methods":["sms","email","portal"]},'
    b'"n":"","i":"/reminder/overdue/recurrence/delivery/"}'
)
_BLOB_V1 = b"\x01"


def short_id(identifier: str) -> str:
    """The scheduler's internal member name: 64 bits of sha256 (zset / index members stay small)."""
    return hashlib.sha256(identifier.encode()).hexdigest()[:16]


def _encode(action: Schedule) -> bytes:
    raw = json.dumps(
        {
            "i": action.identifier,
            "k": action.kind,
            "a": round(_epoch(action.at), 3),
            "p": action.payload,
            "n": action.action,
        },
        separators=(",", ":"),
        default=str,
    ).encode()
    packer = zlib.compressobj(9, zlib.DEFLATED, -15, zdict=_ZDICT_V1)
    return _BLOB_V1 + packer.compress(raw) + packer.flush()


def _decode(blob: bytes) -> Pending:
    if blob[:1] != _BLOB_V1:
        raise ValueError(f"unknown scheduler blob version {blob[:1]!r}")
    unpacker = zlib.decompressobj(-15, zdict=_ZDICT_V1)
    raw = json.loads(unpacker.decompress(blob[1:]) + unpacker.flush())
    return Pending(raw["i"], raw["k"], datetime.fromtimestamp(raw["a"], UTC), raw.get("p") or {}, raw.get("n", ""))


def _epoch(when: datetime) -> float:
    if when.tzinfo is None:
        raise ValueError("Schedule.at must be timezone-aware (UTC)")
    return when.timestamp()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Scheduler(Protocol):
    """Runs Schedule actions later (reminders, overdue checks, recurrences, deferred deliveries).

    What the executor and the follow-up jobs use; ``RqScheduler`` is the implementation."""

    def schedule(self, action: Schedule) -> None:
        """Fire ``action`` once at ``action.at``; the same identifier scheduled twice stays one job."""
        ...

    def reschedule(self, action: Schedule) -> bool:
        """Schedule an identifier again although it fired (a failed follow-up's retry)."""
        ...

    def cancel(self, group: str | None = None, patient: str | None = None, flows: tuple[str, ...] = ()) -> int:
        """Remove a workflow group's, or a patient's ``flows``' pending jobs; how many were removed."""
        ...

    def pending_for(
        self, group: str | None = None, patient: str | None = None, flows: tuple[str, ...] = ()
    ) -> list[Pending]:
        """The pending jobs ``cancel`` with the same arguments would remove."""
        ...


class RqScheduler(Scheduler):
    """The ``Scheduler`` on Redis + rq."""

    def __init__(
        self,
        conn: redis.Redis,
        keys: Keys,
        queue: Queue,
        clock: Callable[[], datetime],  # a Clock, or any callable giving "now"
        metrics: Metrics | None = None,
        *,
        batch_size: int = 500,
        late_warning_seconds: float = 60.0,
        inflight_timeout_seconds: float = 60.0,
        fired_retention_seconds: int = 30 * 24 * 3600,
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
        self.result_ttl_seconds = result_ttl_seconds
        self.failure_ttl_seconds = failure_ttl_seconds

    # -- Scheduler protocol -------------------------------------------------------------------------

    def schedule(self, action: Schedule) -> None:
        """Fire ``action`` once at ``action.at``. The same identifier scheduled twice stays one job."""
        self.add(action)

    def cancel(self, group: str | None = None, patient: str | None = None, flows: tuple[str, ...] = ()) -> int:
        """Remove pending follow-ups of a workflow group, or of a patient's ``flows`` (all flows when
        empty). Returns how many were removed. Already-fired ones re-check the Task when they run."""
        removed = 0
        ordered = sorted(self._select(group, patient, flows))
        for start in range(0, len(ordered), self.batch_size):
            removed += self._remove(ordered[start : start + self.batch_size], result="cancelled")
        if removed:
            log.info("cancelled %d pending follow-up(s) (group=%s patient=%s flows=%s)", removed, group, patient, flows)
        return removed

    def pending_for(
        self, group: str | None = None, patient: str | None = None, flows: tuple[str, ...] = ()
    ) -> list[Pending]:
        """The pending follow-ups ``cancel`` with the same arguments would remove."""
        sids = sorted(self._select(group, patient, flows))
        blobs = self.conn.hmget(self.skeys.data, sids) if sids else []
        return [_decode(b) for b in blobs if b]

    def _select(self, group: str | None, patient: str | None, flows: tuple[str, ...]) -> set[str]:
        sids: set[str] = set()
        if group:
            sids |= {_text(m) for m in self.conn.smembers(self.skeys.group(group))}
        if patient:
            members = [_text(m) for m in self.conn.smembers(self.skeys.patient(patient))]
            if flows:
                blobs = self.conn.hmget(self.skeys.data, members) if members else []
                members = [
                    m for m, b in zip(members, blobs, strict=True) if b and _decode(b).payload.get("flow_id") in flows
                ]
            sids |= set(members)
        return sids

    # -- more API -----------------------------------------------------------------------------------

    def add(self, action: Schedule, force: bool = False) -> bool:
        """Store a pending follow-up. False when it is already pending, or already fired (unless
        ``force`` or a repeatable kind)."""
        sid = short_id(action.identifier)
        if not force and action.kind not in REPEATABLE_KINDS and self.conn.zscore(self.skeys.fired, sid) is not None:
            self._count(action.kind, "already-fired")
            return False
        if self.conn.hexists(self.skeys.inflight, sid):
            self._count(action.kind, "duplicate")
            return False
        pipe = self.conn.pipeline(transaction=True)
        if force:
            pipe.zrem(self.skeys.fired, sid)
        pipe.zadd(self.skeys.due, {sid: _epoch(action.at)}, nx=True)
        pipe.hsetnx(self.skeys.data, sid, _encode(action))
        group, patient = action.payload.get("group"), action.payload.get("patient")
        if group:
            pipe.sadd(self.skeys.group(str(group)), sid)
        if patient:
            pipe.sadd(self.skeys.patient(str(patient)), sid)
        results = pipe.execute()
        added = bool(results[1 if force else 0])
        self._count(action.kind, "scheduled" if added else "duplicate")
        if added:
            log.debug("scheduled %s %s at %s", action.kind, action.identifier, action.at.isoformat())
        return added

    def reschedule(self, action: Schedule) -> bool:
        """Schedule an identifier again even though it fired (a failed follow-up's retry)."""
        return self.add(action, force=True)

    def get(self, identifier: str) -> Pending | None:
        blob = self.conn.hget(self.skeys.data, short_id(identifier))
        return _decode(blob) if blob else None

    def pending_count(self) -> int:
        return int(self.conn.zcard(self.skeys.due))

    def next_due(self) -> datetime | None:
        first = self.conn.zrange(self.skeys.due, 0, 0, withscores=True)
        return datetime.fromtimestamp(first[0][1], UTC) if first else None

    def tick(self, now: datetime | None = None) -> int:
        """Move every follow-up due at ``now`` into the rq queue. Returns how many were enqueued."""
        now = now or self.clock()
        enqueued = self._recover_inflight(now)
        while True:
            claimed = self._claim(now)
            enqueued += self._fire_batch(claimed, now)
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
                    sids = [_text(m) for m in due]
                    if not sids:
                        pipe.unwatch()
                        return []
                    blobs = pipe.hmget(self.skeys.data, sids)
                    pipe.multi()
                    pipe.zrem(self.skeys.due, *sids)
                    pipe.hset(self.skeys.inflight, mapping={i: _epoch(now) for i in sids})
                    pipe.execute()
                    return list(zip(sids, blobs, strict=True))
                except redis.WatchError:
                    continue  # another tick or a schedule() changed the set: read it again

    def _recover_inflight(self, now: datetime) -> int:
        """Re-fire follow-ups a crashed scheduler claimed but may not have enqueued."""
        stale = [
            _text(i)
            for i, claimed in self.conn.hgetall(self.skeys.inflight).items()
            if _epoch(now) - float(claimed) > self.inflight_timeout_seconds
        ]
        for sid in stale:
            log.warning("recovering follow-up %s claimed by a scheduler that did not finish", sid)
        blobs = self.conn.hmget(self.skeys.data, stale) if stale else []
        return self._fire_batch(list(zip(stale, blobs, strict=True)), now)

    def _fire_batch(self, claimed: list[tuple[str, bytes | None]], now: datetime) -> int:
        """Turn claimed follow-ups into rq jobs: one read of the existing jobs' status, then ONE
        transaction with every job, the bookkeeping (data, inflight, fired, indexes) and the counters.
        A crash before it commits leaves them in ``inflight`` for `_recover_inflight`; deterministic job
        ids and the status check keep a re-fire from queueing a job twice."""
        if not claimed:
            return 0
        items = [(sid, _decode(blob) if blob is not None else None) for sid, blob in claimed]
        live = [(sid, item) for sid, item in items if item is not None]
        read = self.conn.pipeline(transaction=False)
        for _, item in live:
            read.hget(Job.key_for(job_id_for(item.identifier)), "status")
        statuses = dict(zip((sid for sid, _ in live), read.execute(), strict=True)) if live else {}
        pipe = self.conn.pipeline(transaction=True)
        pipe.multi()  # rq needs the pipeline in MULTI mode before anything is queued on it
        enqueued = 0
        counts: dict[tuple[str, str], int] = {}
        for sid, item in items:
            if item is None:  # cancelled between claim and fire
                pipe.hdel(self.skeys.inflight, sid)
                continue
            late = max(0.0, (now - item.at).total_seconds())
            job_id = job_id_for(item.identifier)
            status = statuses.get(sid)
            if status is not None and _text(status) in _ACTIVE_STATUS_VALUES:
                log.info("follow-up %s already queued as %s", item.identifier, job_id)
            else:
                self.queue.enqueue_call(
                    JOB_FUNC,
                    args=(item.kind, item.payload),
                    kwargs={
                        "identifier": item.identifier,
                        "scheduled_at": item.at.isoformat(),
                        "late_seconds": round(late, 3),
                    },
                    job_id=job_id,
                    result_ttl=self.result_ttl_seconds,
                    failure_ttl=self.failure_ttl_seconds,
                    description=f"follow-up {item.kind} {job_id}",  # no payload (PHI) in the description
                    pipeline=pipe,
                )
                enqueued += 1
            pipe.hdel(self.skeys.data, sid)
            pipe.hdel(self.skeys.inflight, sid)
            pipe.zadd(self.skeys.fired, {sid: _epoch(now)})
            self._unindex(pipe, sid, item)
            counts[(item.kind, "enqueued")] = counts.get((item.kind, "enqueued"), 0) + 1
            if late > self.late_warning_seconds:
                counts[(item.kind, "late")] = counts.get((item.kind, "late"), 0) + 1
                log.warning(
                    "follow-up %s %s fired %.0f s late (due %s; catch-up after downtime)",
                    item.kind,
                    item.identifier,
                    late,
                    item.at.isoformat(),
                )
        if self.metrics is not None:
            for (kind, result), amount in counts.items():
                self.metrics.inc("scheduled_jobs", amount, pipe=pipe, kind=kind, result=result)
        pipe.execute()
        return enqueued

    def _remove(self, sids: list[str], result: str) -> int:
        blobs = self.conn.hmget(self.skeys.data, sids)
        pipe = self.conn.pipeline(transaction=True)
        for sid in sids:
            pipe.zrem(self.skeys.due, sid)
        pipe.hdel(self.skeys.data, *sids)
        for sid, blob in zip(sids, blobs, strict=True):
            if blob:
                self._unindex(pipe, sid, _decode(blob))
        results = pipe.execute()
        removed = 0
        for blob, gone in zip(blobs, results[: len(sids)], strict=True):
            if gone:
                removed += 1
                self._count(_decode(blob).kind if blob else "unknown", result)
        return removed

    def _unindex(self, pipe: redis.client.Pipeline, sid: str, item: Pending) -> None:
        if item.payload.get("group"):
            pipe.srem(self.skeys.group(str(item.payload["group"])), sid)
        if item.payload.get("patient"):
            pipe.srem(self.skeys.patient(str(item.payload["patient"])), sid)

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

    def _if_mine(self, op: Callable[[redis.client.Pipeline], object]) -> bool:
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


def build_scheduler(settings: Settings, conn: redis.Redis, clock: Clock | None = None) -> RqScheduler:
    """The scheduler for a process, from settings (used by the runtime and the scheduler command)."""
    keys = Keys(settings.redis.key_prefix)
    cfg = settings.scheduler
    return RqScheduler(
        conn,
        keys,
        queue_for(conn, settings.redis),  # its jobs get the configured job timeout
        clock or make_clock(conn, keys, test_clock=cfg.test_clock),
        Metrics(conn, settings.redis.key_prefix),
        batch_size=cfg.batch_size,
        late_warning_seconds=cfg.late_warning_seconds,
        fired_retention_seconds=cfg.fired_retention_seconds,
        failure_ttl_seconds=defaults.FAILED_JOB_TTL_SECONDS,
    )


def iter_pending(scheduler: RqScheduler, limit: int = 100) -> Iterable[Pending]:
    """The next ``limit`` pending follow-ups, soonest first (for status output)."""
    sids = [_text(m) for m in scheduler.conn.zrange(scheduler.skeys.due, 0, limit - 1)]
    for blob in scheduler.conn.hmget(scheduler.skeys.data, sids) if sids else []:
        if blob:
            yield _decode(blob)
