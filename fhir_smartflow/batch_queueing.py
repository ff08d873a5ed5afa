"""Several events in one rq job, and replay of any failed event job (one event or a batch).

Under load the webhook commits concurrent deliveries together (`fhir_smartflow.ingest.group_commit`)
and queues their events as ONE ``process_events`` job: rq's per-job cost (a worker spends ~2.7 ms of
CPU on even a no-op job) is paid once for the group. The worker processes each event of it as
``process_event`` would, with a per-event outcome marker (`outcome_key`), so a retried batch skips the
events an earlier attempt finished and counts every outcome once.

A backlog batch does the same for deliveries that arrive one at a time while the workers are behind
(an EHR sending sequentially): when the queue already holds a job, the webhook queues a
``process_backlog_batch`` job whose events are a Redis list (`backlog_events_key`), and the next
deliveries append to that list for as long as the job is still the last one waiting in the queue
(`join_backlog`, under WATCH on the queue). A worker popping the job ends that: from then on no
delivery can join it, so the list the job reads is final, and its events waited no longer than they
would have as jobs of their own.
"""

from __future__ import annotations

from typing import Any

from rq.job import Job
from rq.registry import FailedJobRegistry

from fhir_smartflow import defaults
from fhir_smartflow.events import ResourceEvent
from fhir_smartflow.metrics import Metrics
from fhir_smartflow.queueing import (
    PROCESS_BACKLOG_BATCH,
    PROCESS_EVENT,
    PROCESS_EVENTS,
    EventQueue,
    enqueue_events,
    job_description,
    new_job_id,
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
    more = f" and {len(events) - 1} more" if len(events) > 1 else ""
    return f"process_events {len(events)} event(s): {_focus(events[0])}{more}"


def _focus(event: ResourceEvent) -> str:
    """What `job_description` says of one event, without its job's name."""
    return job_description(event).removeprefix("process_event ")


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


# A backlog batch's events outlive any attempt of its job and its time in the failed registry (replay reads them).
BACKLOG_EVENTS_TTL_SECONDS = defaults.FAILED_JOB_TTL_SECONDS + 86_400
# The pointer to the batch deliveries may join; only a bound (it is replaced or ignored once its job left the tail).
BACKLOG_POINTER_TTL_SECONDS = 86_400


def backlog_pointer_key(queue: EventQueue) -> str:
    """``<job id> <events so far>`` of the backlog batch last opened on ``queue``."""
    return f"{queue.key_prefix}backlog:open:{queue.name}"


def backlog_events_key(prefix: str, job_id: str) -> str:
    """The events of backlog batch ``job_id``, serialized as the queue serializes a job's call."""
    return f"{prefix}backlog:{job_id}"


def backlog_watch(queue: EventQueue) -> tuple[list[str], list[tuple[str, ...]]]:
    """What `join_backlog` decides from: the keys to WATCH and the reads (pointer, queue length, last job)."""
    pointer = backlog_pointer_key(queue)
    return [pointer, queue.key], [("GET", pointer), ("LLEN", queue.key), ("LINDEX", queue.key, "-1")]


def join_backlog(
    queue: EventQueue,
    pipe: Any,
    events: list[ResourceEvent],
    values: list[Any],
    *,
    max_events: int,
    metrics: Metrics,
) -> bool:
    """Queue ``events`` on ``pipe`` into the backlog batch: the open one when its job is still the last in
    the queue and has room, else a new one when the queue holds any job; ``values`` are the reads of
    `backlog_watch`, taken under its WATCH. False, with nothing queued, when there is no backlog or
    ``events`` alone exceed ``max_events``: the caller queues them as usual."""
    if not events or len(events) > max_events:
        return False
    pointer, waiting, last = values
    job_id, count = _parse_pointer(pointer)
    if job_id is None or _text(last) != job_id or count + len(events) > max_events:
        if not waiting:
            return False
        job_id, count = new_job_id(), 0
        pipe.sadd(queue.redis_queues_keys, queue.key)
        description = f"process_backlog_batch: {_focus(events[0])} and later"
        push_event_job(queue, pipe, PROCESS_BACKLOG_BATCH, job_id, description, rq_now(), job_id=job_id)
    key = backlog_events_key(queue.key_prefix, job_id)
    pipe.rpush(key, *(queue.serializer.dumps(event.to_dict()) for event in events))
    pipe.expire(key, BACKLOG_EVENTS_TTL_SECONDS)
    pipe.set(backlog_pointer_key(queue), f"{job_id} {count + len(events)}", ex=BACKLOG_POINTER_TTL_SECONDS)
    for event in events:
        metrics.inc("events_received", pipe=pipe, source=event.source)
    return True


def backlog_events(queue: EventQueue, job_id: str) -> list[dict[str, Any]]:
    """The events of backlog batch ``job_id``, in the order they were accepted."""
    raw = queue.connection.lrange(backlog_events_key(queue.key_prefix, job_id), 0, -1)
    return [queue.serializer.loads(item) for item in raw]


def _parse_pointer(value: Any) -> tuple[str | None, int]:
    if not value:
        return None, 0
    job_id, _, count = _text(value).partition(" ")
    return job_id, int(count or 0)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


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
    if job.func_name == PROCESS_BACKLOG_BATCH and job.args:
        dicts = backlog_events(queue, job.args[0])
    elif job.func_name == PROCESS_EVENTS and job.args:
        dicts = list(job.args[0])
    else:
        return []
    prefix = queue.key_prefix
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
    if job.func_name not in {PROCESS_EVENT, PROCESS_EVENTS, PROCESS_BACKLOG_BATCH} or not job.args:
        registry.requeue(job.id)
        return [job.id]
    ids = enqueue_events(queue, unfinished_events(queue, job), metrics=metrics)
    registry.remove(job, delete_job=True)
    if job.func_name == PROCESS_BACKLOG_BATCH:
        queue.connection.delete(backlog_events_key(queue.key_prefix, job.args[0]))
    return ids
