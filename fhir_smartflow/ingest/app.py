"""The webhook: authenticate → parse → record + enqueue (one Redis transaction) → answer.

Every answer is FHIR JSON (an OperationOutcome; informational on success): some servers parse the
reply and count anything else as a failed delivery. The 200 means "durably queued": events are in
Redis before we answer, and if Redis is unavailable the answer is 503 with Retry-After.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import redis
import rq
from flask import Blueprint, Response

from fhir_smartflow import logs
from fhir_smartflow.config import Settings
from fhir_smartflow.connections import Keys
from fhir_smartflow.fhir.notifications import Notification, NotificationError, parse_notification
from fhir_smartflow.ingest.answers import Answer, fhir_answer, fhir_response
from fhir_smartflow.ingest.auth import INSECURE_DEV_SUBSCRIPTION, Authenticator, AuthError
from fhir_smartflow.ingest.group_commit import GroupCommitter
from fhir_smartflow.ingest.policy import DeliveryPolicy, DeliveryRefused
from fhir_smartflow.metrics import Metrics
from fhir_smartflow.worker.gaps import record_status

log = logging.getLogger(__name__)


@dataclasses.dataclass
class IngestContext:
    settings: Settings
    conn: redis.Redis
    queue: rq.Queue
    keys: Keys
    metrics: Metrics
    authenticator: Authenticator
    clock: Callable[[], datetime]
    policy: DeliveryPolicy = dataclasses.field(default_factory=lambda: DeliveryPolicy([]))
    # Per subscription, the server Subscription recorded first (read once per process, then kept here).
    server_subscriptions: dict[str, str] = dataclasses.field(default_factory=dict)
    mismatch_logged: set[str] = dataclasses.field(default_factory=set)
    committer: GroupCommitter = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        limit = self.settings.server.group_commit_max_events
        self.committer = GroupCommitter(self.conn, self.settings.redis, self.queue, self.metrics, limit)


def create_ingest_blueprint(ctx: IngestContext) -> Blueprint:
    """Health and readiness (the deliveries themselves go through `fhir_smartflow.ingest.front`)."""
    bp = Blueprint("ingest", __name__)

    @bp.get("/healthz")
    def healthz() -> Response:
        return fhir_response(200, "process up")

    @bp.get("/readyz")
    def readyz() -> Response:
        problem = _queue_refuses_writes(ctx)
        if problem:
            return fhir_response(503, problem, {"Retry-After": str(ctx.settings.server.retry_after_seconds)})
        # Writes to OpenEMR held (its refresh token was refused): still ready to receive, but say so loudly.
        degraded = ctx.conn.get(f"{ctx.keys.prefix}openemr:auth_degraded")
        if degraded:  # "<reason>: <message>": only the reason (the message may name hosts)
            reason = degraded.decode(errors="replace").split(":", 1)[0][:60]
            return fhir_response(200, f"ready, DEGRADED: OpenEMR writes are queued ({reason}); see the logs")
        return fhir_response(200, "ready: the queue accepts writes")

    return bp


READY_PROBE_MS = 10_000


def _queue_refuses_writes(ctx: IngestContext) -> str | None:
    """Why an enqueue would fail now, else None (only Redis error codes are shown: no hosts, paths, messages).

    A real write (a short-lived key) catches a read-only replica (READONLY), a Redis refusing writes
    after a failed save (MISCONF) or without enough replicas (NOREPLICAS), and one already over its
    memory limit (OOM), none of which a PING notices. A Redis whose maxmemory policy refuses writes
    rather than evicting is also not ready when less than one delivery (``[server] max_body_bytes``)
    fits under the limit: tiny probes still pass there while every real enqueue fails."""
    try:
        ctx.conn.set(f"{ctx.keys.prefix}readyz", ctx.clock().isoformat(), px=READY_PROBE_MS)
        memory = ctx.conn.info("memory")
    except redis.ResponseError as exc:
        return f"not ready: Redis refuses writes ({_redis_error_code(exc)}); an enqueue would fail"
    except redis.RedisError as exc:
        return f"not ready: Redis unavailable ({type(exc).__name__})"
    limit = int(memory.get("maxmemory") or 0)
    policy = str(memory.get("maxmemory_policy") or "")
    if limit and (policy == "noeviction" or policy.startswith("volatile-")):
        free = limit - int(memory.get("used_memory") or 0)
        if free < ctx.settings.server.max_body_bytes:
            return (
                f"not ready: Redis is nearly full (OOM): {max(free, 0)} bytes free under maxmemory with {policy}, "
                f"less than one delivery of up to {ctx.settings.server.max_body_bytes} bytes"
            )
    return None


# redis-py turns these error codes into classes and drops the code from the message.
_ERROR_CODES: dict[type[redis.ResponseError], str] = {
    redis.exceptions.OutOfMemoryError: "OOM",
    redis.exceptions.ReadOnlyError: "READONLY",
    redis.exceptions.NoPermissionError: "NOPERM",
}


def _redis_error_code(exc: redis.ResponseError) -> str:
    """``OOM`` / ``READONLY`` / ``MISCONF`` / ``NOREPLICAS``...: the code, never the message."""
    for cls, code in _ERROR_CODES.items():
        if isinstance(exc, cls):
            return code
    first = str(exc).split(" ", 1)[0]
    return first if first.isalpha() and first.isupper() else "ERROR"


def _count(ctx: IngestContext, name: str, **labels: str) -> None:
    """Best-effort metric for refused deliveries (Redis may be the reason we refuse)."""
    with contextlib.suppress(redis.RedisError):
        ctx.metrics.inc(name, **labels)


def deliver(
    ctx: IngestContext,
    method: str,
    path_resource: str | None,
    headers: Mapping[str, str],
    body: bytes | None,
    *,
    delivery_id: str,
) -> Answer:
    """One delivery: authenticate → parse → record + enqueue → its answer. ``body`` None: it was over
    ``[server] max_body_bytes`` (refused unread); ``path_resource`` is ``<Type>/<id>`` from the path."""
    logs.request_id.set(delivery_id[:64])
    if body is None:
        _count(ctx, "notifications", type="unknown", result="too-large")
        return fhir_answer(413, f"body is larger than the limit of {ctx.settings.server.max_body_bytes} bytes")
    try:
        subscription = ctx.authenticator.identify(headers, body)
    except AuthError as exc:
        _count(ctx, "auth_failures", reason=exc.reason)
        _count(ctx, "notifications", type="unknown", result="unauthorized")
        with contextlib.suppress(redis.RedisError):  # `doctor` tells a wrong secret from this (webhook-auth)
            failure = {"last_auth_failure": ctx.clock().isoformat(), "last_auth_failure_reason": exc.reason}
            ctx.conn.hset(ctx.keys.webhook(), mapping=failure)
        log.warning("webhook delivery refused (%s): %s", exc.status, exc.message)
        return fhir_answer(exc.status, exc.message)
    now = ctx.clock()
    rules = ctx.policy.rules(subscription)
    try:
        notification = parse_notification(
            method,
            path_resource,
            headers,
            body,
            subscription=subscription,
            received_at=now.isoformat(),
            delivery_id=delivery_id,
            max_events=ctx.settings.server.max_events_per_notification,
            server_base=ctx.settings.fhir.base_url or None,
            verify=rules.verify if rules else False,
        )
        notification = ctx.policy.apply(subscription, notification)
    except NotificationError as exc:
        _count(ctx, "notifications", type="unknown", result="rejected")
        log.info("webhook delivery rejected (%s): %s", exc.status, exc.message)
        return fhir_answer(exc.status, exc.message)
    except DeliveryRefused as exc:
        _count(ctx, "notifications", type="unknown", result="forbidden")
        log.warning("webhook delivery refused (%s): %s", exc.status, exc.message)
        return fhir_answer(exc.status, exc.message)
    if ctx.authenticator.insecure_dev and notification.subscription_id:
        notification = _rename(notification, notification.subscription_id)
        subscription = notification.subscription_id
    try:
        queued = _record_and_enqueue(ctx, subscription, notification, now)
    except redis.RedisError as exc:
        retry_after = str(ctx.settings.server.retry_after_seconds)
        log.error("Redis unavailable, delivery not accepted (%s): answering 503", type(exc).__name__)
        return fhir_answer(
            503, f"queue unavailable; nothing was accepted, retry in {retry_after} s", {"Retry-After": retry_after}
        )
    if log.isEnabledFor(logging.INFO):  # the focus list is built only for a log line that is written
        focus = ", ".join(e.reference or "criteria" for e in notification.events[:5])
        log.info(
            "%s for subscription %s: %d event(s) queued%s",
            notification.kind,
            subscription,
            queued,
            f" ({focus})" if focus else "",
        )
    return fhir_answer(200, f"{notification.kind} accepted for subscription {subscription}: {queued} event(s) queued")


def _rename(notification: Notification, subscription: str) -> Notification:
    events = tuple(dataclasses.replace(e, subscription=subscription) for e in notification.events)
    return dataclasses.replace(notification, events=events)


def _record_and_enqueue(ctx: IngestContext, subscription: str, notification: Notification, now: datetime) -> int:
    """One transaction: the per-subscription record, the jobs and the metrics land together or not at all
    (under load, together with other deliveries': `GroupCommitter`)."""
    key = ctx.keys.subscription(subscription)
    mismatch = _server_subscription(ctx, subscription, notification)

    def queue_record(pipe: Any) -> None:  # queued on the (MULTI) pipeline of the transaction holding this delivery
        record: dict[str, str | int] = {"last_seen": now.isoformat()}
        if mismatch is not None:
            # Recorded as a mismatch, never adopted: the first server Subscription seen stays the recorded one.
            record["last_mismatch"] = mismatch
            pipe.hincrby(key, "mismatches", 1)
            ctx.metrics.inc("subscription_mismatches", pipe=pipe, subscription=subscription)
        numbers = [e.event_number for e in notification.events if e.event_number is not None]
        last_number = max(numbers) if numbers else notification.events_since_start
        if last_number is not None:
            record["last_event_number"] = last_number
        pipe.hset(key, mapping=record)  # one command for the whole record (each one costs on the hot path)
        pipe.hincrby(key, f"count:{notification.kind}", 1)
        if notification.kind in {"handshake", "heartbeat"}:
            record_status(pipe, ctx.keys, subscription, notification.kind, notification.events_since_start, now)
        ctx.metrics.inc("notifications", pipe=pipe, type=notification.kind, result="accepted")

    events = list(notification.events)
    ctx.committer.commit(queue_record, events)  # blocks until executed; raises its RedisError (→ 503)
    return len(events)


def _server_subscription(ctx: IngestContext, subscription: str, notification: Notification) -> str | None:
    """The server Subscription this notification names, when it differs from the recorded one (a
    mismatch), else None. The first one ever named is recorded (``server_subscription``, HSETNX) and
    kept per process; with ``server_ids`` configured the policy already refused any other."""
    named = notification.subscription
    if not named:
        return None
    if subscription not in ctx.server_subscriptions:
        key = ctx.keys.subscription(subscription)
        ctx.conn.hsetnx(key, "server_subscription", named)
        raw = ctx.conn.hget(key, "server_subscription")
        ctx.server_subscriptions[subscription] = raw.decode() if raw else named
    recorded = ctx.server_subscriptions[subscription]
    rules = ctx.policy.rules(subscription)
    if named == recorded or (rules is not None and rules.server_ids):
        return None
    if subscription not in ctx.mismatch_logged:
        ctx.mismatch_logged.add(subscription)
        log.warning(
            "subscription %s: a notification names %s, not the recorded %s: recorded as a mismatch, not adopted "
            "(list the server's Subscription ids in server_ids to refuse or accept them explicitly)",
            subscription,
            named[:200],
            recorded[:200],
        )
    return named


def subscription_record(conn: redis.Redis, keys: Keys, subscription: str) -> dict[str, str]:
    """What the webhook (and the gap tracker) recorded for a subscription."""
    return {k.decode(): v.decode() for k, v in conn.hgetall(keys.subscription(subscription)).items()}


__all__ = [
    "INSECURE_DEV_SUBSCRIPTION",
    "IngestContext",
    "create_ingest_blueprint",
    "deliver",
    "subscription_record",
]
