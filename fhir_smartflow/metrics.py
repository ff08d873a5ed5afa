"""Counters and histograms shared by every process (serve, workers, scheduler, poller).

They live in Redis, not in process memory, so `/metrics` on `serve` shows what the workers did and
the totals add up across processes (received = processed + deduplicated). Every metric is declared
here, once; `inc` / `observe` on an undeclared name is a programming error.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import redis

# Histogram buckets (seconds) for latencies.
LATENCY_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# A histogram's sum field: whole microseconds. Data written before kept its sum in seconds, as a float,
# under ``#sum``; `histogram_sum` adds both.
SUM_MICROSECONDS = "sum_us"


def histogram_sum(parts: dict[str, float]) -> float:
    """A histogram series' sum in seconds from its fields (``sum_us``, and a ``sum`` written earlier)."""
    return parts.get(SUM_MICROSECONDS, 0.0) / 1_000_000 + parts.get("sum", 0.0)


@dataclass(frozen=True)
class MetricSpec:
    kind: str  # counter | histogram | gauge
    help: str
    labels: tuple[str, ...] = ()


METRICS: dict[str, MetricSpec] = {
    "notifications": MetricSpec(
        "counter", "Webhook notifications received, by notification type and result", ("type", "result")
    ),
    "auth_failures": MetricSpec("counter", "Webhook deliveries refused for failed authentication", ("reason",)),
    "subscription_mismatches": MetricSpec(
        "counter",
        "Notifications naming a server Subscription other than the one recorded for their subscription",
        ("subscription",),
    ),
    "events": MetricSpec(
        "counter", "Resource events by outcome at the worker: processed | deduplicated | failed", ("result",)
    ),
    "events_received": MetricSpec("counter", "Resource events durably queued (webhook, poll, recovery)", ("source",)),
    "gaps": MetricSpec("counter", "Event-number gaps detected (missed notifications)", ("subscription",)),
    "server_restarts": MetricSpec("counter", "Event numbers fell back: server restarted", ("subscription",)),
    "event_latency_seconds": MetricSpec("histogram", "Notification received to plan executed", ()),
    "fhir_requests": MetricSpec("counter", "Requests to the FHIR server by method and status", ("method", "status")),
    "openemr_requests": MetricSpec(
        "counter", "Requests to OpenEMR's Standard API by method and status", ("method", "status")
    ),
    "deliveries": MetricSpec("counter", "Channel deliveries by channel and status", ("channel", "status")),
    "stuck_deliveries": MetricSpec(
        "counter",
        "Sends interrupted mid-way (worker died) resolved as not-done / unknown after [delivery] stuck_after_seconds",
        ("channel",),
    ),
    "failure_notices": MetricSpec(
        "counter",
        "In-EHR messages telling an action's owner that a delivery failed (notify_on_failure): created | existing",
        ("channel", "result"),
    ),
    "unroutable_messages": MetricSpec(
        "counter",
        "Staff messages for a role no active PractitionerRole holds (sent to [roles] fallback)",
        ("flow", "role"),
    ),
    "flow_runs": MetricSpec("counter", "Flows considered for a trigger event, by result", ("result",)),
    "writes": MetricSpec("counter", "Resources written back: created | existing", ("type", "result")),
    "scheduled_jobs": MetricSpec("counter", "Follow-up jobs scheduled / fired / cancelled", ("kind", "result")),
    "poll_lag_seconds": MetricSpec("gauge", "Now minus the poller's watermark, per resource type", ("resource_type",)),
    "poll_passes": MetricSpec("counter", "Poller passes by resource type and result", ("resource_type", "result")),
    "openemr_mirrors": MetricSpec(
        "counter", "Writes mirrored into OpenEMR: created | existing | failed | unknown", ("kind", "result")
    ),
    "openemr_auth_failures": MetricSpec("counter", "OpenEMR token refreshes that failed", ("reason",)),
}


def _field(name: str, labels: dict[str, str]) -> str:
    spec = METRICS[name]
    unknown = set(labels) - set(spec.labels)
    if unknown:
        raise ValueError(f"metric {name!r} has no labels {sorted(unknown)}")
    return "|".join(f"{k}={labels.get(k, '')}" for k in spec.labels)


class _Buffer:
    """A batch's metric writes, kept to replay on a pipeline (the batch's own, or a transaction).

    Increments of the same field are summed (an event's two POSTs, its two Provenance writes): one
    HINCRBY each, fewer commands in the job's final transaction. Counters and gauges never share a
    field, so the order of the replayed writes does not matter."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        self.ops: list[Callable[[Any], object]] = []

    def __bool__(self) -> bool:
        return True  # an empty buffer is still the target of the open batch

    def hincrby(self, key: str, field: str, amount: int) -> None:
        self.counts[key, field] = self.counts.get((key, field), 0) + amount

    def hincrbyfloat(self, key: str, field: str, amount: float) -> None:
        self.ops.append(lambda t: t.hincrbyfloat(key, field, amount))

    def hset(self, key: str, field: str, value: float) -> None:
        self.ops.append(lambda t: t.hset(key, field, value))

    def replay(self, pipe: Any) -> None:
        for (key, field), amount in self.counts.items():
            pipe.hincrby(key, field, amount)
        for op in self.ops:
            op(pipe)

    def clear(self) -> None:
        self.counts.clear()
        self.ops.clear()

    def send(self, conn: redis.Redis) -> None:
        if not self.ops and not self.counts:
            return  # everything went with the caller's transaction: no round trip
        pipe = conn.pipeline(transaction=False)
        self.replay(pipe)
        self.clear()
        pipe.execute()


class _Batch(threading.local):
    buffer: _Buffer | None = None  # this thread's open `Metrics.batch()`, if any


class Metrics:
    """Writes metrics to Redis hashes ``<prefix>metric:<name>`` (field = label values)."""

    def __init__(self, conn: redis.Redis, prefix: str) -> None:
        self.conn = conn
        self.prefix = prefix
        self._local = _Batch()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Buffer this thread's metric writes and send them in one round trip at the end (a worker job
        did ~10 separate HINCRBYs per event). Written even when the block raises (failure counters);
        nested blocks join the outer one. `queue_batched` lets a transaction of the block's own carry
        them instead (then nothing is left to send at the end)."""
        if self._local.buffer is not None:
            yield
            return
        buffer = self._local.buffer = _Buffer()
        try:
            yield
        except BaseException:
            self._local.buffer = None
            with contextlib.suppress(redis.RedisError):  # never mask the real error
                buffer.send(self.conn)
            raise
        self._local.buffer = None
        buffer.send(self.conn)

    def queue_batched(self, pipe: Any) -> None:
        """Queue the open batch's writes so far on ``pipe`` (the caller's transaction); they stay buffered
        until `forget_batched`, so a transaction retried after a WATCH conflict queues them again."""
        buffer = self._local.buffer
        if buffer is not None:
            buffer.replay(pipe)

    def forget_batched(self) -> None:
        """The caller's transaction carrying `queue_batched`'s writes succeeded: do not send them again."""
        buffer = self._local.buffer
        if buffer is not None:
            buffer.clear()

    def _target(self, pipe: Any) -> Any:
        return pipe or self._local.buffer or self.conn

    def key(self, name: str) -> str:
        return f"{self.prefix}metric:{name}"

    def inc(self, name: str, amount: int = 1, pipe: Any = None, **labels: str) -> None:
        if METRICS[name].kind != "counter":
            raise ValueError(f"{name} is not a counter")
        self._target(pipe).hincrby(self.key(name), _field(name, labels), amount)

    def set(self, name: str, value: float, pipe: Any = None, **labels: str) -> None:
        if METRICS[name].kind != "gauge":
            raise ValueError(f"{name} is not a gauge")
        self._target(pipe).hset(self.key(name), _field(name, labels), value)

    def observe(self, name: str, seconds: float, pipe: Any = None, **labels: str) -> None:
        if METRICS[name].kind != "histogram":
            raise ValueError(f"{name} is not a histogram")
        base = _field(name, labels)
        batched = pipe or self._local.buffer
        target = batched or self.conn.pipeline(transaction=False)
        bucket = next((b for b in LATENCY_BUCKETS if seconds <= b), "+Inf")
        target.hincrby(self.key(name), f"{base}#le={bucket}", 1)
        # The sum in whole microseconds: HINCRBY, not HINCRBYFLOAT (several times Redis's cost of an
        # integer increment, and a batch sums increments of one field into one command).
        target.hincrby(self.key(name), f"{base}#{SUM_MICROSECONDS}", round(seconds * 1_000_000))
        target.hincrby(self.key(name), f"{base}#count", 1)
        if batched is None:
            target.execute()

    def counter_value(self, name: str, **labels: str) -> int:
        raw = self.conn.hget(self.key(name), _field(name, labels))
        return int(raw or 0)

    def read(self, name: str) -> dict[str, str]:
        """All fields of one metric (for the exposition endpoint and tests)."""
        return {k.decode(): v.decode() for k, v in self.conn.hgetall(self.key(name)).items()}
