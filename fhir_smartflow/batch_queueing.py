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
(`commit_joining_backlog`: one Lua script reads the queue's tail and writes, atomically). A worker
popping the job ends that: from then on no delivery can join it, so the list the job reads is final,
and its events waited no longer than they would have as jobs of their own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
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
from fhir_smartflow.redis_watch import AfterExec, ServerScript, run_script

Record = Callable[[Any], None]  # queues commands on a (MULTI) pipeline

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


# The backlog decision and its writes in one atomic step (a script: nothing can run between its reads and
# its writes). KEYS: the pointer to the open batch, the queue. ARGV: max events, a new batch's job id, the
# events key prefix, the events' TTL, the pointer's TTL, the event count, the events, then three sections
# of commands (count, then each command as argc and args): always; a new batch's job; either batch.
# It writes nothing when the queue holds no job (the caller queues its usual jobs instead), and nothing
# when a new batch is needed but no job id was given (``must-open``: the caller sends the new batch's job).
_JOIN_BACKLOG = ServerScript(
    """
local pointer = redis.call('GET', KEYS[1])
local waiting = redis.call('LLEN', KEYS[2])
local last = redis.call('LINDEX', KEYS[2], -1)
local max_events, count = tonumber(ARGV[1]), tonumber(ARGV[6])
local job_id, so_far = false, 0
if pointer then
  local space = string.find(pointer, ' ', 1, true)
  job_id = space and string.sub(pointer, 1, space - 1) or pointer
  so_far = space and tonumber(string.sub(pointer, space + 1)) or 0
end
local path = 'none'
if count > 0 and count <= max_events then
  if job_id and last == job_id and so_far + count <= max_events then
    path = 'joined'
  elseif waiting > 0 then
    if ARGV[2] == '' then return {'must-open', waiting} end
    path, job_id, so_far = 'opened', ARGV[2], 0
  end
end
if path == 'none' then return {path, waiting} end
local at = 7 + count
local function section(run)
  local commands = tonumber(ARGV[at])
  at = at + 1
  for _ = 1, commands do
    local argc = tonumber(ARGV[at])
    if run then redis.call(unpack(ARGV, at + 1, at + argc)) end
    at = at + argc + 1
  end
end
section(true)
section(path == 'opened')
section(true)
local key = ARGV[3] .. job_id
for first = 7, 6 + count, 500 do
  redis.call('RPUSH', key, unpack(ARGV, first, math.min(first + 499, 6 + count)))
end
redis.call('EXPIRE', key, ARGV[4])
redis.call('SET', KEYS[1], job_id .. ' ' .. (so_far + count), 'EX', ARGV[5])
return {path, waiting}
"""
)


@dataclasses.dataclass(frozen=True)
class BacklogCommit:
    """What `commit_joining_backlog` did: ``joined`` a backlog batch (an open one or a new one; else it wrote
    nothing), and whether the queue held any job before."""

    joined: bool
    queue_had_jobs: bool


def commit_joining_backlog(
    queue: EventQueue,
    events: list[ResourceEvent],
    always: Record,
    *,
    max_events: int,
    metrics: Metrics,
    then: AfterExec | None = None,
) -> BacklogCommit:
    """One atomic step: ``always`` (the deliveries' own records) and ``events`` into the backlog batch, the
    open one when its job is still the last in the queue and has room, else a new one when the queue holds
    any job. When it holds none (or ``events`` alone exceed ``max_events``) nothing is written: the caller
    queues its usual jobs. ``always`` queues its commands on a pipeline in MULTI mode, as for a transaction;
    ``then(connection)`` follows a write on the same connection (WAIT)."""
    keys = [backlog_pointer_key(queue), queue.key]
    head: list[Any] = [max_events, "", backlog_events_key(queue.key_prefix, ""), BACKLOG_EVENTS_TTL_SECONDS]
    head += [BACKLOG_POINTER_TTL_SECONDS, len(events), *(queue.serializer.dumps(event.to_dict()) for event in events)]
    mine = _section(_recorded(queue.connection, always))
    counted = _section(_recorded(queue.connection, lambda pipe: _count_received(metrics, pipe, events)))
    # Most commits join the open batch: a new batch's job is built only when the script asks for one.
    path, waiting = run_script(queue.connection, _JOIN_BACKLOG, keys, [*head, *mine, 0, *counted], then=then)
    if _text(path) == "must-open":
        head[1] = job_id = new_job_id()
        opening = _section(_recorded(queue.connection, lambda pipe: _open(queue, pipe, events, job_id)))
        path, waiting = run_script(queue.connection, _JOIN_BACKLOG, keys, [*head, *mine, *opening, *counted], then=then)
    return BacklogCommit(joined=_text(path) != "none", queue_had_jobs=int(waiting) > 0)


def _section(commands: list[tuple[Any, ...]]) -> list[Any]:
    """Commands as the script reads them: their count, then each one's argument count and arguments."""
    flat: list[Any] = [len(commands)]
    for command in commands:
        flat += [len(command), *command]
    return flat


def _recorded(conn: Any, record: Record) -> list[tuple[Any, ...]]:
    """The commands ``record`` queues on a transaction pipeline (never executed)."""
    pipe = conn.pipeline(transaction=True)
    pipe.multi()
    record(pipe)
    return [args for args, _options in pipe.command_stack]


def _open(queue: EventQueue, pipe: Any, events: list[ResourceEvent], job_id: str) -> None:
    """A new backlog batch's job, pushed on the queue (the script adds its events)."""
    pipe.sadd(queue.redis_queues_keys, queue.key)
    description = f"process_backlog_batch: {_focus(events[0])} and later" if events else "process_backlog_batch"
    push_event_job(queue, pipe, PROCESS_BACKLOG_BATCH, job_id, description, rq_now(), job_id=job_id)


def _count_received(metrics: Metrics, pipe: Any, events: list[ResourceEvent]) -> None:
    for event in events:
        metrics.inc("events_received", pipe=pipe, source=event.source)


def backlog_events(queue: EventQueue, job_id: str) -> list[dict[str, Any]]:
    """The events of backlog batch ``job_id``, in the order they were accepted."""
    raw = queue.connection.lrange(backlog_events_key(queue.key_prefix, job_id), 0, -1)
    return [queue.serializer.loads(item) for item in raw]


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
