"""The one way events enter the queue: the webhook, the poller, gap recovery and replay all call this.

The queue carries the configured job timeout (``[redis] job_timeout_seconds``) as its default, so every
job enqueued on it — events from any source, gap sweeps, follow-ups — gets it without each caller
passing it.
"""

from __future__ import annotations

from typing import Any

import rq
from rq import Retry

from fhir_smartflow import defaults
from fhir_smartflow.config import RedisConfig
from fhir_smartflow.events import ResourceEvent
from fhir_smartflow.metrics import Metrics

PROCESS_EVENT = "fhir_smartflow.worker.jobs.process_event"
# Several events in one job (group commit under load: `fhir_smartflow.batch_queueing`).
PROCESS_EVENTS = "fhir_smartflow.worker.batches.process_events"


def job_description(event: ResourceEvent) -> str:
    """What rq shows and logs for a job: references only, never the payload (PHI)."""
    focus = event.reference or event.resource_type or "criteria"
    number = f" #{event.event_number}" if event.event_number is not None else ""
    return f"process_event {event.subscription} {focus}{number}"


def enqueue_events(
    queue: rq.Queue,
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
    metrics = metrics or Metrics(queue.connection, _metrics_prefix(queue))
    ids: list[str] = []
    for event in events:
        job = queue.enqueue(
            PROCESS_EVENT,
            event.to_dict(),
            retry=Retry(max=defaults.JOB_RETRIES, interval=list(defaults.JOB_RETRY_INTERVALS)),
            failure_ttl=defaults.FAILED_JOB_TTL_SECONDS,
            description=job_description(event),
            pipeline=pipe,
        )
        ids.append(job.id)
        metrics.inc("events_received", pipe=pipe, source=event.source)
    if own:
        pipe.execute()
    return ids


# The key prefix metrics use is the service's, which the queue does not know; it is attached to the
# queue by `make_queue` (so every caller that builds its queue there counts under the right prefix).
def _metrics_prefix(queue: rq.Queue) -> str:
    return getattr(queue, "smartflow_prefix", defaults.KEY_PREFIX)


def make_queue(conn: Any, name: str, key_prefix: str, job_timeout: int = defaults.JOB_TIMEOUT_SECONDS) -> rq.Queue:
    """The events queue, tagged with the key prefix our metrics use; ``job_timeout`` is the timeout of
    every job enqueued on it."""
    queue = rq.Queue(name, connection=conn, default_timeout=job_timeout)
    queue.smartflow_prefix = key_prefix  # type: ignore[attr-defined]
    return queue


def queue_for(conn: Any, config: RedisConfig) -> rq.Queue:
    """The events queue as configured: ``[redis] queue``, ``key_prefix`` and ``job_timeout_seconds``."""
    return make_queue(conn, config.queue, config.key_prefix, config.job_timeout_seconds)
