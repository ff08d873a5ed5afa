"""rq job: one queued `ResourceEvent` → deduplicated, gap-checked, completed, dispatched.

Dedupe claims the event in Redis before dispatch (``SET NX``):
- ``processing:<token>`` with a short TTL (job timeout + margin) while this job works on it;
- ``done`` with the long dedupe TTL once dispatch returned.
If dispatch raises, the claim is released and the exception re-raised, so rq's retry processes it again.
If the worker dies mid-dispatch, the ``processing`` claim (it names the worker) is taken over by the
next attempt as soon as that worker is known dead (`supervise.is_dead_worker`), else it expires by
itself; until then a second delivery of the same event raises `EventInProgress`, which rq retries
later: never a silent drop.

Counting: ``events_received`` counts every job enqueued (each accepted delivery, poll, gap recovery,
replay). Each job's terminal outcome is counted once under ``events{result}``: processed,
deduplicated, or failed (last attempt raised; `replay` enqueues a new job, received again). A per-job
marker makes the count exactly-once when a worker is killed after counting but before rq recorded
the job as finished (the re-run finds the marker). So, once the queue is drained:
``events_received`` = processed + deduplicated + failed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from rq import get_current_job

from fhir_smartflow import logs
from fhir_smartflow.batch_queueing import outcome_key
from fhir_smartflow.events import ResourceEvent
from fhir_smartflow.fhir.errors import FhirError
from fhir_smartflow.fhir.scrub import scrub_in_place
from fhir_smartflow.instants import parse_instant
from fhir_smartflow.redis_watch import watch_read_write
from fhir_smartflow.worker import jobwrites
from fhir_smartflow.worker.gaps import GapTracker
from fhir_smartflow.worker.runtime import Runtime, current
from fhir_smartflow.worker.supervise import is_dead_worker

log = logging.getLogger(__name__)

PROCESSING_MARGIN_SECONDS = 60
DONE = b"done"


class EventInProgress(Exception):
    """Another worker holds the claim on this event (or crashed holding it); retried later."""


def dedupe_key(event: ResourceEvent) -> str:
    """`ResourceEvent.dedupe_key`, never keyed on an event number alone.

    When an event has neither versionId nor timestamp, its dedupe key would rest on the event number
    only, which a restarted server reuses; the notification's body hash is added then.
    """
    key = event.dedupe_key()
    if not event.version_id and event.event_number is not None and not event.timestamp:
        key += f"|h{event.body_hash}"
    return key


def process_event(event_dict: dict[str, Any]) -> str:
    """The rq job (``fhir_smartflow.worker.jobs.process_event``); returns processed | deduplicated."""
    rt = current()
    event = ResourceEvent.from_dict(event_dict)
    with event_log_context(event), rt.metrics.batch():  # every counter of this event in one round trip at the end
        return handle_event(rt, event)


@contextlib.contextmanager
def event_log_context(event: ResourceEvent) -> Iterator[None]:
    """Log lines in the block name this event (``evt=``: subscription, reference, event number)."""
    token = logs.event_id.set(f"{event.subscription}:{event.reference or 'criteria'}:{event.event_number}")
    try:
        yield
    finally:
        logs.event_id.reset(token)


@dataclasses.dataclass
class StartedEvent:
    """An event claimed and completed, up to its dispatch (`start_event`); ``writes`` collect what its
    final transaction carries with the done mark. ``events``: what it dispatches, the event with its
    resource, or (``expanded``) those re-querying criteria found, each dispatched and marked done on its own."""

    event: ResourceEvent  # as the server has it (verified)
    events: list[ResourceEvent]
    expanded: bool
    index: int | None
    key: str
    claim: bytes
    writes: jobwrites.JobWrites = dataclasses.field(default_factory=jobwrites.JobWrites)


def handle_event(rt: Runtime, event: ResourceEvent, index: int | None = None, tracked: bool = False) -> str:
    """One event, start to end; ``index`` is its place in a ``process_events`` batch (its outcome marker);
    ``tracked``: its event number was already accounted for (`track_numbers`, for the whole batch)."""
    started = start_event(rt, event, index, tracked)
    if isinstance(started, str):
        return started
    try:
        dispatch_started(rt, started)
    except Exception as exc:
        fail_event(rt, started, exc)
        raise
    return end_event(rt, started)


def start_event(
    rt: Runtime, event: ResourceEvent, index: int | None = None, tracked: bool = False
) -> StartedEvent | str:
    """Verify, claim and complete ``event``: what to dispatch, or its outcome when it ended here (not on
    the server, or a duplicate). Raises as `handle_event` does, the claim released."""
    if not tracked:
        # Every delivery's number counts, a duplicate's too: one dropped untracked could hide a gap.
        track_numbers(rt, [event])
    confirmed = _confirm(rt, event)
    if confirmed is None:
        _count_outcome(rt, "processed", index=index)
        log.warning("%s is not on the FHIR server: nothing done", event.reference)
        return "processed"
    event = confirmed
    key = rt.keys.dedupe(dedupe_key(event))
    # The focus resource's prior state is read with the claim (one round trip); the dispatch below
    # finds it in the job's collection. Unguarded, as the dispatcher's own read was: the final
    # transaction compares prior state under WATCH.
    prior_key = rt.keys.prior(event.resource_type, event.resource_id) if event.resource_id else None
    try:
        claim, read_ahead = _claim_reading(rt, key, prior_key)
    except EventInProgress:
        if _final_attempt():  # the job ends failed: say so, as for any other failure
            _count_outcome(rt, "failed", index=index)
        raise
    if claim is None:
        _count_outcome(rt, "deduplicated", index=index)
        log.info("duplicate of an event already processed: %s", event.reference or "criteria event")
        return "deduplicated"
    started = StartedEvent(event, [event], False, index, key, claim)
    started.writes.read_ahead.update(read_ahead)
    try:
        started.events, started.expanded = _complete(rt, event)
    except Exception as exc:
        fail_event(rt, started, exc)
        raise
    return started


def dispatch_started(rt: Runtime, started: StartedEvent) -> None:
    """Dispatch a started event: its prior state and run history go in its final transaction."""
    if started.expanded:
        for item in started.events:
            _dispatch_once(rt, item, nested=True)
        return
    with jobwrites.collecting(started.writes):
        rt.dispatcher.dispatch(started.events[0])


def fail_event(rt: Runtime, started: StartedEvent, exc: Exception) -> None:
    """A started event raised ``exc`` (the caller re-raises it): release the claim for the retry, keep
    the runs it executed, count it failed on the last attempt."""
    _release(rt.redis, started.key, started.claim)
    _record_history(rt, started.writes)
    if _final_attempt():
        _count_outcome(rt, "failed", index=started.index)
    log.warning("event %s failed; claim released for the retry", started.event.reference or "criteria event")
    if isinstance(exc, FhirError):  # rq logs and keeps the text: a server's may quote the resource
        scrub_in_place(exc)


def end_event(rt: Runtime, started: StartedEvent) -> str:
    """A dispatched event: done mark, outcome, prior state, history and metrics in one transaction."""
    end_events(rt, [started])
    return "processed"


def end_events(rt: Runtime, started: list[StartedEvent]) -> None:
    """`end_event` for several dispatched events of one job, in one transaction. On a Redis error none
    is marked done (or the answer was lost: then they are DONE and stay), and their claims are freed for
    the retry."""
    for event in started:
        _observe_latency(rt, event.event)  # before the final transaction, which carries the job's metrics
    outcomes = [
        _Outcome("processed", event.key, None if event.expanded else event.writes, event.index) for event in started
    ]
    try:
        _commit_outcomes(rt, outcomes)
    except redis.RedisError:
        for event in started:
            _release(rt.redis, event.key, event.claim)
        raise


def count_failed_on_final_attempt(rt: Runtime, indices: Iterable[int]) -> None:
    """A batch's last attempt ends (its time ran out): the events at ``indices`` that have no outcome yet
    count as failed. Each once: `_count_outcome` skips an event whose outcome marker exists."""
    if not _final_attempt():
        return
    for index in indices:
        _count_outcome(rt, "failed", index=index)


def outcome_marker(rt: Runtime, index: int | None = None) -> str | None:
    """The key that says this job's outcome (a batch's: its event ``index``) was counted; None outside rq."""
    job = get_current_job()
    if job is None:
        return None
    return outcome_key(rt.keys.prefix, job.id, index)


@dataclasses.dataclass(frozen=True)
class _Outcome:
    result: str
    done: str | None = None  # the dedupe key to mark done
    writes: jobwrites.JobWrites | None = None
    index: int | None = None


def _count_outcome(
    rt: Runtime,
    result: str,
    done: str | None = None,
    writes: jobwrites.JobWrites | None = None,
    index: int | None = None,
) -> None:
    """Count this job's outcome once (per rq job id, and event ``index`` in a batch), in ONE transaction
    with the dedupe ``done`` mark, the collected prior-state and history writes and the job's buffered
    metrics."""
    _commit_outcomes(rt, [_Outcome(result, done, writes, index)])


def _commit_outcomes(rt: Runtime, outcomes: list[_Outcome]) -> None:
    """`_count_outcome` for several events of one job in one transaction.

    Round trips: WATCH with one MGET of the watched keys (redis_watch), then MULTI…EXEC.
    """
    markers = [outcome_marker(rt, outcome.index) for outcome in outcomes]
    watched = [marker for marker in markers if marker is not None]
    for outcome in outcomes:
        watched += outcome.writes.watched() if outcome.writes is not None else []
    ttl = rt.settings.redis.dedupe_ttl_seconds

    def commit(values: list[Any], pipe: redis.client.Pipeline, read: Callable[..., Any]) -> None:
        stored = dict(zip(watched, values[0], strict=True)) if watched else {}
        for outcome, marker in zip(outcomes, markers, strict=True):
            if outcome.done is not None:
                pipe.set(outcome.done, DONE, ex=ttl)
            if outcome.writes is not None:
                outcome.writes.queue_on(pipe, stored)
            if marker is None or stored.get(marker) is None:  # not counted before
                rt.metrics.inc("events", pipe=pipe, result=outcome.result)
                if marker is not None:
                    pipe.set(marker, outcome.result, ex=ttl)
        rt.metrics.queue_batched(pipe)  # queued again if a WATCH conflict runs this once more

    watch_read_write(rt.redis, watched, [("MGET", *watched)] if watched else [], commit)
    rt.metrics.forget_batched()


def _record_history(rt: Runtime, writes: jobwrites.JobWrites) -> None:
    """A failed dispatch still records the runs it executed (its prior state stays unwritten)."""
    pipe = rt.redis.pipeline(transaction=False)
    for queue in writes.queued:
        queue(pipe)
    try:
        pipe.execute()
    except redis.RedisError:  # best effort: the job's failure is what matters
        log.exception("could not record the run history of a failed event")


def _observe_latency(rt: Runtime, event: ResourceEvent) -> None:
    """Received (webhook / poller) to processed, on the wall clock (not the test clock)."""
    received = parse_instant(event.received_at)
    if received is None:
        return
    rt.metrics.observe("event_latency_seconds", max(0.0, (datetime.now(UTC) - received).total_seconds()))


def tracker(rt: Runtime) -> GapTracker:
    return GapTracker(rt.redis, rt.keys, rt.metrics, rt.settings.redis.gap_grace_seconds, rt.gap_recovery, rt.clock)


def track_numbers(rt: Runtime, events: list[ResourceEvent]) -> None:
    """Account for the event numbers of ``events`` (in their order): one transaction per subscription."""
    by_subscription: dict[str, list[tuple[int, str | None]]] = {}
    for event in events:
        if event.event_number is not None:
            by_subscription.setdefault(event.subscription, []).append((event.event_number, event.timestamp))
    for subscription, numbers in by_subscription.items():
        if "jump" in tracker(rt).observe_all(subscription, numbers):
            # Record the gap even if no later event comes to sweep it (needs a worker with the scheduler).
            delay = timedelta(seconds=rt.settings.redis.gap_grace_seconds + 1)
            rt.queue.enqueue_in(delay, SWEEP_GAPS, subscription, description=f"sweep_gaps {subscription}")


SWEEP_GAPS = "fhir_smartflow.worker.jobs.sweep_gaps"


def sweep_gaps(subscription: str) -> int:
    """rq job, scheduled after a jump: record what is still missing once the grace period is over."""
    return len(tracker(current()).sweep(subscription))


def _claim_token() -> bytes:
    job = get_current_job()
    worker = (job.worker_name if job is not None else None) or "-"
    return f"processing:{worker}:{uuid.uuid4().hex}".encode()


def _claim_reading(rt: Runtime, key: str, read: str | None) -> tuple[bytes | None, dict[str, bytes | None]]:
    """`_claim`, with the value of key ``read`` fetched in the same round trip as the ``SET NX``:
    ``{read: value}``, empty when the claim was not ours at once (then nothing was read)."""
    token = _claim_token()
    ttl = rt.settings.redis.job_timeout_seconds + PROCESSING_MARGIN_SECONDS
    pipe = rt.redis.pipeline(transaction=False)
    pipe.set(key, token, nx=True, ex=ttl)
    if read is not None:
        pipe.get(read)
    claimed, *value = pipe.execute()
    if claimed:
        return token, ({read: value[0]} if read is not None else {})
    return _contended(rt, key, token, ttl), {}


def _claim(rt: Runtime, key: str) -> bytes | None:
    """Our claim token, or None when the event is already done; raises `EventInProgress`."""
    return _claim_reading(rt, key, None)[0]


def _contended(rt: Runtime, key: str, token: bytes, ttl: int) -> bytes | None:
    """The ``SET NX`` of ``token`` failed: None when the event is done, ``token`` once the claim is
    free again or taken over from a dead worker; raises `EventInProgress`."""
    held = rt.redis.get(key)
    if held == DONE:
        return None
    if held is None:  # expired between the two calls: try once more
        return token if rt.redis.set(key, token, nx=True, ex=ttl) else _claim(rt, key)
    holder = held.split(b":")[1].decode() if held.count(b":") >= 2 else None
    if holder and is_dead_worker(rt.redis, rt.keys, holder) and _take_over(rt.redis, key, held, token, ttl):
        log.warning("took over the claim of dead worker %s on %s", holder, key)
        return token
    raise EventInProgress(f"event {key} is being processed by another worker; retrying later")


def _take_over(conn: redis.Redis, key: str, held: bytes, token: bytes, ttl: int) -> bool:
    """Replace ``held`` by ``token`` only if nobody changed the claim meanwhile."""

    def swap(pipe: redis.client.Pipeline) -> bool:
        if pipe.get(key) != held:
            return False
        pipe.multi()
        pipe.set(key, token, ex=ttl)
        return True

    try:
        return bool(conn.transaction(swap, key, value_from_callable=True))
    except redis.WatchError:
        return False


def _release(conn: redis.Redis, key: str, token: bytes) -> None:
    """Delete the claim only if it is still ours."""

    def release(pipe: redis.client.Pipeline) -> None:
        held = pipe.get(key)
        pipe.multi()
        if held == token:
            pipe.delete(key)

    try:
        conn.transaction(release, key)
    except redis.RedisError:  # the processing TTL frees it anyway
        log.exception("could not release the claim on %s", key)


def _final_attempt() -> bool:
    job = get_current_job()
    return job is None or not job.retries_left


def _unversioned(event: ResourceEvent) -> bool:
    """Nothing in the notification tells this change from an earlier one of the same resource (a
    delete needs no version: it is the resource's last change)."""
    if event.resource is not None or event.interaction == "delete":
        return False
    return not event.version_id and event.event_number is None and not event.timestamp


def _confirm(rt: Runtime, event: ResourceEvent) -> ResourceEvent | None:
    """The event as the FHIR server has it, when it must be verified (``must_verify``: a claim made by
    the request path, or the subscription's ``verify``) or when nothing identifies its version: read
    before the dedupe key is made, so the key rests on the server's version (versionId, else the
    content with its meta.lastUpdated), never on a notification that looks like an earlier one.

    None when the notification claims a change of a resource the server does not have (act on
    nothing). Without a FHIR client (the fetcher hands back no resource) the event stays as sent.
    """
    if not event.resource_id or not (event.must_verify or _unversioned(event)):
        return event
    answer = rt.fetcher.fetch(_question(event))
    if isinstance(answer, list):  # pragma: no cover - a focus is never expanded to a list
        return event
    if answer.interaction == "delete":
        return answer if event.interaction == "delete" else None
    if answer.resource is None:
        return event
    return answer


def _question(event: ResourceEvent) -> ResourceEvent:
    """What `_confirm` asks the fetcher: the focus without the notification's content. A version named
    only by the path or a header is a claim too; a delete is checked by reading."""
    version = event.version_id if event.trusted_content and event.interaction != "delete" else None
    return dataclasses.replace(event, resource=None, interaction=None, version_id=version, body_hash=None)


def first_fetch(event: ResourceEvent) -> ResourceEvent:
    """What `handle_event` first asks the fetcher about ``event`` (a batch reads these ahead): the
    verification question when it must be verified, else the event itself (`_confirm` of an unversioned
    event, or `_complete` of one without its resource, fetch it as it is)."""
    return _question(event) if event.resource_id and event.must_verify else event


def _complete(rt: Runtime, event: ResourceEvent) -> tuple[list[ResourceEvent], bool]:
    """The event with its resource (fetched when not sent); True when the fetcher expanded it to a list."""
    if event.resource is not None or event.interaction == "delete":
        return [event], False
    fetched = rt.fetcher.fetch(event)
    return (fetched, True) if isinstance(fetched, list) else ([fetched], False)


def _dispatch_once(rt: Runtime, event: ResourceEvent, nested: bool) -> None:
    """Dispatch; events found by re-querying criteria are deduplicated on their own (most are unchanged)."""
    if not nested:
        rt.dispatcher.dispatch(event)
        return
    key = rt.keys.dedupe(dedupe_key(event))  # marked done on its own: its writes go at once
    claim = _claim(rt, key)
    if claim is None:
        return
    try:
        rt.dispatcher.dispatch(event)
    except Exception:
        _release(rt.redis, key, claim)
        raise
    rt.redis.set(key, DONE, ex=rt.settings.redis.dedupe_ttl_seconds)
