"""The one way events enter the queue: the webhook, the poller, gap recovery and replay all call this.

The queue carries the configured job timeout (``[redis] job_timeout_seconds``) as its default, so every
job enqueued on it — events from any source, gap sweeps, follow-ups — gets it without each caller
passing it.

Event jobs are written here, not through ``Queue.enqueue``: the same job hash rq writes for
``enqueue(process_event, event_dict, retry=..., failure_ttl=..., description=..., pipeline=...)``,
field for field (tests/test_queueing_jobs.py compares the two and runs ours on a real rq worker), the
queue registration and the push, without building rq's ``Job`` object per event. On the webhook that
object was most of the cost of an enqueue. Jobs other than events (gap sweeps, follow-ups) still go
through rq.
"""

from __future__ import annotations

import json
import uuid
import zlib
from datetime import UTC, datetime
from typing import Any

import rq
from rq.job import JobStatus
from rq.utils import parse_timeout

from fhir_smartflow import defaults
from fhir_smartflow.config import RedisConfig
from fhir_smartflow.events import ResourceEvent
from fhir_smartflow.metrics import Metrics

PROCESS_EVENT = "fhir_smartflow.worker.jobs.process_event"
# Several events in one job (group commit under load: `fhir_smartflow.batch_queueing`).
PROCESS_EVENTS = "fhir_smartflow.worker.batches.process_events"
# A batch queued while the queue has a backlog; later deliveries join it while it waits (`batch_queueing`).
PROCESS_BACKLOG_BATCH = "fhir_smartflow.worker.batches.process_backlog_batch"
# rq's timestamp format (rq.utils.utcformat).
_RQ_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"


class EventQueue(rq.Queue):
    """rq's Queue, plus the key prefix our metrics use and the timeout every job on it gets.

    rq itself may build another instance of the class (name, connection, job_class, serializer);
    the defaults keep that working."""

    def __init__(
        self,
        name: str = "default",
        connection: Any = None,
        *,
        key_prefix: str = defaults.KEY_PREFIX,
        job_timeout: int = defaults.JOB_TIMEOUT_SECONDS,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, connection=connection, default_timeout=job_timeout, **kwargs)
        self.key_prefix = key_prefix
        self.job_timeout = job_timeout
        # What every event job's hash holds besides its data, description and timestamps (Job.to_dict
        # of a fresh job with our retry policy, failure TTL and this queue's timeout).
        self.event_job_fields: dict[str, str | int] = {
            "success_callback_name": "",
            "failure_callback_name": "",
            "stopped_callback_name": "",
            "started_at": "",
            "ended_at": "",
            "last_heartbeat": "",
            "worker_name": "",
            "group_id": "",
            "retries_left": defaults.JOB_RETRIES,
            "retry_intervals": json.dumps(list(defaults.JOB_RETRY_INTERVALS)),
            "origin": name,
            "timeout": parse_timeout(job_timeout) or self.DEFAULT_TIMEOUT,  # as rq resolves default_timeout
            "failure_ttl": defaults.FAILED_JOB_TTL_SECONDS,
            "status": JobStatus.QUEUED.value,
        }


def job_description(event: ResourceEvent) -> str:
    """What rq shows and logs for a job: references only, never the payload (PHI)."""
    focus = event.reference or event.resource_type or "criteria"
    number = f" #{event.event_number}" if event.event_number is not None else ""
    return f"process_event {event.subscription} {focus}{number}"


def enqueue_events(
    queue: EventQueue,
    events: list[ResourceEvent],
    pipeline: Any = None,
    *,
    metrics: Metrics | None = None,
) -> list[str]:
    """Enqueue one ``process_event`` job per event; returns the job ids.

    With ``pipeline`` (a transactional redis pipeline: fresh, or with ``multi()`` called before the
    caller queued its own commands) the jobs land when the caller executes it,
    together with whatever else the caller recorded; without one they land atomically here.
    ``events_received`` is counted in the same transaction, so it never disagrees with the queue.
    """
    if not events:
        return []
    own = pipeline is None
    pipe = queue.connection.pipeline() if own else pipeline
    if not pipe.explicit_transaction:
        # rq needs the pipeline in MULTI mode before anything is queued on it.
        pipe.multi()
    metrics = metrics or Metrics(queue.connection, queue.key_prefix)
    ids: list[str] = []
    pipe.sadd(queue.redis_queues_keys, queue.key)  # rq registers the queue with every job: once is the same
    enqueued_at = rq_now()
    for event in events:
        ids.append(push_event_job(queue, pipe, PROCESS_EVENT, event.to_dict(), job_description(event), enqueued_at))
        metrics.inc("events_received", pipe=pipe, source=event.source)
    if own:
        pipe.execute()
    return ids


def rq_now() -> str:
    """Now, as rq stamps its jobs."""
    return datetime.now(UTC).strftime(_RQ_TIME)


def push_event_job(
    queue: EventQueue,
    pipe: Any,
    func: str,
    payload: Any,
    description: str,
    enqueued_at: str,
    job_id: str | None = None,
) -> str:
    """Queue on ``pipe`` (in MULTI, with the queue registered) the job ``func(payload)`` and its push; its id
    (``job_id``, or a new one).

    The hash is what ``Job.to_dict`` gives after ``Queue.enqueue`` with our retry policy and failure TTL
    (``data`` is rq's: the zlib-compressed serialized call ``(func, None, args, kwargs)``). rq stamps
    creation and enqueueing separately, microseconds apart; one instant serves both here."""
    job_id = job_id or new_job_id()
    call = (func, None, (payload,), {})
    job = {
        **queue.event_job_fields,
        "created_at": enqueued_at,
        "enqueued_at": enqueued_at,
        "data": zlib.compress(queue.serializer.dumps(call)),
        "description": description,
    }
    pipe.hset(queue.job_class.key_for(job_id), mapping=job)
    pipe.rpush(queue.key, job_id)
    return job_id


def new_job_id() -> str:
    """An id as rq makes them."""
    return str(uuid.uuid4())


def make_queue(conn: Any, name: str, key_prefix: str, job_timeout: int = defaults.JOB_TIMEOUT_SECONDS) -> EventQueue:
    """The events queue, tagged with the key prefix our metrics use; ``job_timeout`` is the timeout of
    every job enqueued on it."""
    return EventQueue(name, conn, key_prefix=key_prefix, job_timeout=job_timeout)


def queue_for(conn: Any, config: RedisConfig) -> EventQueue:
    """The events queue as configured: ``[redis] queue``, ``key_prefix`` and ``job_timeout_seconds``."""
    return make_queue(conn, config.queue, config.key_prefix, config.job_timeout_seconds)
