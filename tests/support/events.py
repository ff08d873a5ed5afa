"""Resource events as the webhook would queue them, for tests of the queue and the worker."""

from __future__ import annotations

from typing import Any

import rq

from fhir_smartflow.batch_queueing import enqueue_batch
from fhir_smartflow.events import ResourceEvent
from fhir_smartflow.queueing import enqueue_events
from fhir_smartflow.worker import runtime


def patient_event(number: int | None = None, version: str | None = "1", rid: str = "p1", **kw: Any) -> ResourceEvent:
    """A full-resource Patient event of subscription ``sub-a``; numbered ones carry a matching timestamp."""
    return ResourceEvent(
        subscription="sub-a",
        resource_type="Patient",
        resource_id=rid,
        received_at="2026-11-25T10:00:00+00:00",
        event_number=number,
        version_id=version,
        timestamp=f"2026-11-25T10:00:{number or 0:02d}Z" if number else None,
        resource={"resourceType": "Patient", "id": rid},
        **kw,
    )


def drain(rt: runtime.Runtime, events: list[ResourceEvent], *, batch: bool) -> list[str]:
    """Queue the events as one batch job (or one job each), drain them with a real rq worker running
    ``rt``; the ids of the jobs that failed."""
    if batch:
        pipe = rt.redis.pipeline()
        pipe.multi()
        enqueue_batch(rt.queue, events, pipe, metrics=rt.metrics)
        pipe.execute()
    else:
        enqueue_events(rt.queue, events, metrics=rt.metrics)
    runtime.install(rt)
    try:
        rq.SimpleWorker([rt.queue], connection=rt.redis).work(burst=True, logging_level="WARNING")
    finally:
        runtime.install(None)
    return rq.registry.FailedJobRegistry(queue=rt.queue).get_job_ids()
