"""Waiting until the service has settled, instead of sleeping to see that nothing more happens.

Every event job is counted when it is queued (``events_received``, in the same transaction as the
enqueue) and once when it ends (``events{processed|deduplicated|failed}``, see
fhir_smartflow/worker/jobs.py). So the service has settled when every received event has finished and
no job is queued, being dequeued, running or waiting for a retry; a test that also knows how many
notifications were sent waits until that many were received.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import redis
from prometheus_client.parser import text_string_to_metric_families
from rq import Queue

from fhir_smartflow.metrics import Metrics
from tests.support.net import wait_for

FINISHED = ("processed", "deduplicated", "failed")


@dataclass(frozen=True)
class EventState:
    received: dict[str, int]  # events_received by source (webhook, poll, recovery, replay)
    finished: int  # events processed + deduplicated + failed
    in_flight: int  # jobs queued, being dequeued, started or scheduled for a retry

    @property
    def settled(self) -> bool:
        return self.in_flight == 0 and self.finished == sum(self.received.values())


def _count(fields: dict[bytes, bytes], label: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for field, value in fields.items():
        labels = dict(part.split("=", 1) for part in field.decode().split("|") if "=" in part)
        counts[labels.get(label, "")] = counts.get(labels.get(label, ""), 0) + int(value)
    return counts


def event_state(conn: redis.Redis, queue_name: str, key_prefix: str) -> EventState:
    """One consistent snapshot (MULTI/EXEC) of the queue and the event counters in Redis."""
    queue, metrics = Queue(queue_name, connection=conn), Metrics(conn, key_prefix)
    with conn.pipeline(transaction=True) as pipe:
        pipe.llen(queue.key)
        pipe.llen(queue.intermediate_queue_key)  # taken by a worker, not started yet
        pipe.zcard(queue.started_job_registry.key)
        pipe.zcard(queue.scheduled_job_registry.key)
        pipe.hgetall(metrics.key("events_received"))
        pipe.hgetall(metrics.key("events"))
        queued, dequeued, started, scheduled, received, outcomes = pipe.execute()
    results = _count(outcomes, "result")
    return EventState(_count(received, "source"), sum(results.get(r, 0) for r in FINISHED),
                      queued + dequeued + started + scheduled)  # fmt: skip


def event_state_from_metrics(text: str) -> EventState:
    """The same from a ``/metrics`` exposition (a service whose Redis the test cannot reach, e.g.
    ``serve --embedded``). The queue gauges have no dequeued state, but a dequeued event job is also
    received and not finished, so it still counts as not settled."""
    received: dict[str, int] = {}
    finished = in_flight = 0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "smartflow_events_received_total":
                received[sample.labels["source"]] = received.get(sample.labels["source"], 0) + int(sample.value)
            elif sample.name == "smartflow_events_total" and sample.labels["result"] in FINISHED:
                finished += int(sample.value)
            elif sample.name == "smartflow_queue_jobs" and sample.labels["state"] in ("queued", "started", "scheduled"):
                in_flight += int(sample.value)
    return EventState(received, finished, in_flight)


def scheduler_rounds(
    conn: redis.Redis, lock_key: str, rounds: int = 2, log: Callable[[], str] | None = None, timeout: float = 30.0
) -> None:
    """Until the active scheduler has gone round its loop ``rounds`` times from now. Each round renews
    the scheduler lock (its TTL jumps back up) and then ticks, so once the second renewal is seen a whole
    tick has run on the clock as it is now: what was due was fired, and a follow-up fired too early
    would have been."""
    seen = {"renewals": 0, "ttl": conn.pttl(lock_key)}

    def renewed() -> bool:
        ttl = conn.pttl(lock_key)
        seen["renewals"] += ttl > seen["ttl"]
        seen["ttl"] = ttl
        return seen["renewals"] >= rounds

    wait_for(renewed, f"{rounds} scheduler rounds", log, timeout=timeout, interval=0.01)


def wait_settled(
    state: Callable[[], EventState],
    *,
    webhook_deliveries: Callable[[], int] | int = 0,
    timeout: float = 30.0,
    log: Callable[[], str] | None = None,
) -> EventState:
    """Until the service has settled and has received ``webhook_deliveries`` notifications (a number,
    or a function asking the sender how many it sent)."""
    expected = webhook_deliveries if callable(webhook_deliveries) else (lambda: webhook_deliveries)
    last: list[EventState] = []

    def settled() -> EventState | None:
        now = state()
        last[:] = [now]
        return now if now.settled and now.received.get("webhook", 0) >= expected() else None

    def describe() -> str:
        state_line = f"{last[-1] if last else 'no state read'}; expected {expected()} webhook deliveries"
        return f"{log() if log else ''}\n{state_line}"

    return wait_for(settled, "the service to settle", timeout=timeout, log=describe)
