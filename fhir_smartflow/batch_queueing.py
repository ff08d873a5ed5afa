"""Several events in one rq job, and replay of any failed event job (one event or a batch).

Under load the webhook commits concurrent deliveries together (`fhir_smartflow.ingest.group_commit`)
and queues their events as ONE ``process_events`` job: rq's per-job cost (a worker spends ~2.7 ms of
CPU on even a no-op job) is paid once for the group. The worker processes each event of it as
``process_event`` would, with a per-event outcome marker (`outcome_key`), so a retried batch skips the
events an earlier attempt finished and counts every outcome once.
"""

from __future__ import annotations

from typing import Any

from rq.job import Job
from rq.registry import FailedJobRegistry

from fhir_smartflow.events import ResourceEvent
from fhir_smartflow.metrics import Metrics
from fhir_smartflow.queueing import (
    PROCESS_EVENT,
    PROCESS_EVENTS,
    EventQueue,
    enqueue_events,
    job_description,
    push_event_job,
    rq_now,
)

# What a failed batch's events had as their outcome on its last attempt: these need no replay.
_FINISHED = {b"processed", b"deduplicated"}


def outcome_key(prefix: str, job_id: str, index: int | None = None) -> str:
    """The marker saying a job's outcome was counted: per job, or per event ``index`` of a batch."""
    return f"{prefix}outcome:{job_id}" + (f":{index}" if index is not None else "")


def batch_description(events: list[ResourceEvent]) -> str:
    """References only, never the payload (PHI): the count and the first event."""
    first = job_description(events[0]).removeprefix("process_event ")
    more = f" and {len(events) - 1} more" if len(events) > 1 else ""
    return f"process_events {len(events)} event(s): {first}{more}"


def enqueue_batch(queue: EventQueue, events: list[ResourceEvent], pipeline: Any, *, metrics: Metrics) -> str:
    """ONE ``process_events`` job carrying ``events``, queued on the caller's transactional ``pipeline``
    (MULTI mode) with ``events_received`` counted per event in the same transaction; returns its id.

    Written as `enqueue_events` writes a ``process_event`` job: same retry policy, failure TTL and
    (queue default) timeout, so a batch that times out is retried and resumes after the events already
    finished."""
    if not pipeline.explicit_transaction:
        pipeline.multi()
    pipeline.sadd(queue.redis_queues_keys, queue.key)
    payload = [event.to_dict() for event in events]
    job_id = push_event_job(queue, pipeline, PROCESS_EVENTS, payload, batch_description(events), rq_now())
    for event in events:
        metrics.inc("events_received", pipe=pipeline, source=event.source)
    return job_id


def unfinished_events(queue: EventQueue, job: Job) -> list[ResourceEvent]:
    """The events of a failed event job that still need processing, as ``replay`` events.

    A single event's job: its event. A batch: only the events whose outcome marker is not processed /
    deduplicated (those failed on the last attempt, or never reached). Replaying the finished ones
    would mostly be deduplicated, but not always: their dedupe mark and their outcome marker expire
    together (``dedupe_ttl_seconds``) while a failed job is kept longer (30 days), and a replay after
    that would dispatch them a second time; it would also count them received again.
    """
    if job.func_name == PROCESS_EVENT and job.args:
        return [ResourceEvent.from_dict({**job.args[0], "source": "replay"})]
    if job.func_name != PROCESS_EVENTS or not job.args:
        return []
    prefix = queue.key_prefix
    dicts: list[dict[str, Any]] = list(job.args[0])
    outcomes = queue.connection.mget([outcome_key(prefix, job.id, i) for i in range(len(dicts))]) if dicts else []
    return [
        ResourceEvent.from_dict({**event, "source": "replay"})
        for event, outcome in zip(dicts, outcomes, strict=True)
        if outcome not in _FINISHED
    ]


def replay_failed_job(queue: EventQueue, job: Job, metrics: Metrics | None = None) -> list[str]:
    """A failed job back on the queue, the one way `replay` and the console do it; the new job ids.

    An event job (one event or a batch) goes back through `enqueue_events` with source ``replay``, one
    ``process_event`` job per unfinished event, and leaves the failed registry; any other job is
    requeued as it is (its own id)."""
    registry = FailedJobRegistry(queue=queue)
    if job.func_name not in {PROCESS_EVENT, PROCESS_EVENTS} or not job.args:
        registry.requeue(job.id)
        return [job.id]
    ids = enqueue_events(queue, unfinished_events(queue, job), metrics=metrics)
    registry.remove(job, delete_job=True)
    return ids
