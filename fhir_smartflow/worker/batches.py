"""rq jobs: several queued events in one job, from one group-committed webhook transaction
(``process_events``) or from deliveries that joined a backlog batch (``process_backlog_batch``).

Each event is processed exactly as ``process_event`` processes it (`handle_event`: verification, its
own dedupe claim, dispatch, DONE), with its own log context; only rq's per-job cost is shared, and the
event-number bookkeeping: the numbers of every unfinished event, in their order, in one transaction per
subscription (`track_numbers`) before the first event. Outcomes are counted per event
(``outcome:<job id>:<index>``), so:

- a retry of the batch skips every event an earlier attempt finished (its marker exists): no second
  verification read, no claim, no count;
- when some events raise, the others are still processed, then the job raises (naming how many failed)
  and rq retries it under its Retry policy; on the last attempt the failing events count as
  ``events{result=failed}`` as a single job's would, and the batch is kept in rq's failed registry,
  from which `replay` puts back only its unfinished events;
- when the job's time runs out, it stops at once; after the last attempt the events it did not reach
  count as failed too.

Read-ahead: before the first event, the fetcher may read the focus of every event that needs one in one
FHIR ``batch`` Bundle (`ResourceFetcher.read_ahead`); each event's own fetch then takes its answer from
there (once), and anything not answered exactly is fetched on its own, as without it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

from rq.timeouts import JobTimeoutException

from fhir_smartflow.batch_queueing import backlog_events, backlog_events_key
from fhir_smartflow.events import ResourceEvent
from fhir_smartflow.worker.jobs import (
    EventInProgress,
    count_failed_on_final_attempt,
    event_log_context,
    first_fetch,
    handle_event,
    outcome_marker,
    track_numbers,
)
from fhir_smartflow.worker.runtime import Runtime, ServiceRuntime, current
from fhir_smartflow.worker.write_groups import WriteGroups

log = logging.getLogger(__name__)


class BatchFailed(Exception):
    """Some events of a batch raised; the others are done. rq retries the batch."""


def process_events(event_dicts: list[dict[str, Any]]) -> str:
    """The rq job (``fhir_smartflow.worker.batches.process_events``); returns a short summary."""
    return _process(current(), event_dicts)


def process_backlog_batch(job_id: str) -> str:
    """The rq job (``fhir_smartflow.worker.batches.process_backlog_batch``) of a backlog batch: its events
    are final once the job left the queue (`batch_queueing.commit_joining_backlog`). Processed as
    ``process_events``; the list goes once every event is done (a failed batch keeps it, for the retry and
    for replay)."""
    rt = current()
    summary = _process(rt, backlog_events(rt.queue, job_id))
    rt.redis.delete(backlog_events_key(rt.queue.key_prefix, job_id))
    return summary


def _process(rt: Runtime, event_dicts: list[dict[str, Any]]) -> str:
    """Every event not finished by an earlier attempt, in order; a short summary."""
    finished = _finished(rt, len(event_dicts))
    results: dict[str, int] = {}
    failures: list[Exception] = []
    events = {index: ResourceEvent.from_dict(d) for index, d in enumerate(event_dicts) if index not in finished}
    ended: set[int] = set()  # done or counted failed
    try:
        with rt.metrics.batch():  # every counter of every event in one round trip at the end
            track_numbers(rt, list(events.values()))  # every unfinished event's number, in one transaction
            reading = _reading_ahead(rt, list(events.values()))
            for index, outcome in _outcomes(reading, events):
                ended.add(index)
                if isinstance(outcome, Exception):  # the others still run; this one is retried with the batch
                    failures.append(outcome)
                else:
                    results[outcome] = results.get(outcome, 0) + 1
    except JobTimeoutException:
        # The job's time is up: it stopped at once. After the last attempt, the events it did not end
        # count as failed too; a retry resumes after the finished ones.
        count_failed_on_final_attempt(rt, [i for i in events if i not in ended])
        raise
    if finished:
        results["skipped"] = len(finished)
    if failures:
        raise _failure(failures, len(event_dicts)) from None  # not chained: its text may quote a resource
    return ", ".join(f"{count} {result}" for result, count in sorted(results.items())) or "0 events"


def _outcomes(rt: Runtime, events: dict[int, ResourceEvent]) -> Iterator[tuple[int, str | Exception]]:
    """Each event's result, or what it raised, in order: in write groups when the service writes to a
    server with transactions (worker/write_groups.py), else one by one."""
    group_size = rt.settings.fhir.events_per_transaction
    if isinstance(rt, ServiceRuntime) and group_size > 1 and len(events) > 1 and rt.target.supports_transactions():
        yield from WriteGroups(rt, group_size).process(events)
        return
    for index, event in events.items():
        try:
            yield index, _handle(rt, event, index)
        except JobTimeoutException:
            raise
        except Exception as exc:
            yield index, exc


def _handle(rt: Runtime, event: ResourceEvent, index: int) -> str:
    """One event of the batch, with its own log context."""
    with event_log_context(event):
        return handle_event(rt, event, index=index, tracked=True)


def _reading_ahead(rt: Runtime, events: list[ResourceEvent]) -> Runtime:
    """``rt`` with the fetcher that read these events' focus ahead (or ``rt`` itself when it read nothing)."""
    fetcher = rt.fetcher.read_ahead([first_fetch(event) for event in events])
    return rt if fetcher is rt.fetcher else dataclasses.replace(rt, fetcher=fetcher)


def _finished(rt: Runtime, count: int) -> set[int]:
    """The events an earlier attempt of this job finished (their outcome marker exists): one round trip."""
    markers = [marker for index in range(count) if (marker := outcome_marker(rt, index)) is not None]
    if not markers:  # outside rq: nothing was attempted before
        return set()
    pipe = rt.redis.pipeline(transaction=False)
    for marker in markers:
        pipe.exists(marker)
    return {index for index, exists in enumerate(pipe.execute()) if exists}


def _failure(failures: list[Exception], total: int) -> Exception:
    """One exception for rq: how many failed and the first one's type (never its text: it may be PHI).
    Only claims held elsewhere: `EventInProgress`, as a single job would raise."""
    first = failures[0]
    message = f"{len(failures)} of {total} event(s) failed (first: {type(first).__name__}); the others are done"
    if all(isinstance(exc, EventInProgress) for exc in failures):
        return EventInProgress(message)
    log.warning("batch: %s", message)
    return BatchFailed(message)
