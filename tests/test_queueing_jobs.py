"""Event jobs written by `enqueue_events` are the jobs rq's own ``Queue.enqueue`` writes.

`enqueue_events` writes the job hash, the queue registration and the push itself (no rq ``Job`` object
per event); these tests pin it to rq: same fields and values (ids and timestamps aside), loaded by
``Job.fetch``, run by a real ``rq.SimpleWorker``.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import rq
from rq import Retry
from rq.job import Job, JobStatus

from fhir_smartflow import defaults
from fhir_smartflow.config import RedisConfig, Settings
from fhir_smartflow.events import ResourceEvent
from fhir_smartflow.queueing import PROCESS_EVENT, EventQueue, enqueue_events, job_description, make_queue
from fhir_smartflow.worker import runtime
from fhir_smartflow.worker.seams import RecordingDispatcher

pytestmark = pytest.mark.integration

PREFIX = "t:"
_TIMESTAMPS = {b"created_at", b"enqueued_at"}


def event(number: int, **changes: Any) -> ResourceEvent:
    fields: dict[str, Any] = {
        "subscription": "sub-1",
        "resource_type": "Patient",
        "resource_id": f"p{number}",
        "received_at": "2026-12-02T04:00:00+00:00",
        "topic": "http://example.org/topic",
        "event_number": number,
        "version_id": "3",
        "interaction": "update",
        "resource": {"resourceType": "Patient", "id": f"p{number}", "name": [{"family": "Ng"}]},
        "timestamp": "2026-12-02T03:59:59Z",
        "body_hash": "abc",
    }
    fields.update(changes)
    return ResourceEvent(**fields)


def enqueued_by_rq(queue: rq.Queue, ev: ResourceEvent) -> str:
    """What `enqueue_events` wrote before: rq's ``enqueue`` with our options, inside a transaction."""
    pipe = queue.connection.pipeline()
    pipe.multi()
    job = queue.enqueue(
        PROCESS_EVENT,
        ev.to_dict(),
        retry=Retry(max=defaults.JOB_RETRIES, interval=list(defaults.JOB_RETRY_INTERVALS)),
        failure_ttl=defaults.FAILED_JOB_TTL_SECONDS,
        description=job_description(ev),
        pipeline=pipe,
    )
    pipe.execute()
    return job.id


def job_hash(conn: redis.Redis, job_id: str) -> dict[bytes, bytes]:
    return conn.hgetall(Job.key_for(job_id))


@pytest.mark.parametrize(
    "ev",
    [
        event(1),
        event(2, resource=None, payload_content="id-only", version_id=None),
        event(3, interaction="delete", resource=None, trusted_content=False, verify=True, source="poll"),
    ],
    ids=["full-resource", "id-only", "delete"],
)
def test_our_job_hash_is_rqs_field_for_field(redis_conn: redis.Redis, ev: ResourceEvent) -> None:
    queue = make_queue(redis_conn, "events", PREFIX, job_timeout=420)
    theirs_id = enqueued_by_rq(queue, ev)
    (ours_id,) = enqueue_events(queue, [ev])
    assert ours_id != theirs_id
    theirs, ours = job_hash(redis_conn, theirs_id), job_hash(redis_conn, ours_id)
    assert {k: v for k, v in ours.items() if k not in _TIMESTAMPS} == {
        k: v for k, v in theirs.items() if k not in _TIMESTAMPS
    }
    assert set(ours) == set(theirs)
    assert ours[b"created_at"] == ours[b"enqueued_at"]
    rq.utils.utcparse(ours[b"enqueued_at"].decode())  # rq's own timestamp format
    # Neither expires; both are on the queue, in order, and the queue is registered.
    assert redis_conn.ttl(Job.key_for(ours_id)) == redis_conn.ttl(Job.key_for(theirs_id)) == -1
    assert queue.get_job_ids() == [theirs_id, ours_id]
    assert redis_conn.smembers(rq.Queue.redis_queues_keys) == {queue.key.encode()}


def test_rq_loads_our_job(redis_conn: redis.Redis) -> None:
    queue = make_queue(redis_conn, "events", PREFIX, job_timeout=420)
    ev = event(7)
    (job_id,) = enqueue_events(queue, [ev])
    job = Job.fetch(job_id, connection=redis_conn)
    assert job.func_name == PROCESS_EVENT
    assert job.args == (ev.to_dict(),)
    assert job.kwargs == {}
    assert job.get_status() == JobStatus.QUEUED
    assert job.origin == "events"
    assert job.description == job_description(ev)
    assert job.timeout == 420
    assert job.failure_ttl == defaults.FAILED_JOB_TTL_SECONDS
    assert job.result_ttl is None
    assert job.retries_left == defaults.JOB_RETRIES
    assert job.retry_intervals == list(defaults.JOB_RETRY_INTERVALS)
    assert job.enqueued_at is not None and job.created_at == job.enqueued_at
    assert ResourceEvent.from_dict(job.args[0]) == ev
    assert zlib.decompress(job_hash(redis_conn, job_id)[b"data"]) == job.data


def test_several_events_are_one_job_each_in_order(redis_conn: redis.Redis) -> None:
    queue = make_queue(redis_conn, "events", PREFIX)
    events = [event(1), event(2), event(3, source="recovery")]
    ids = enqueue_events(queue, events)
    assert queue.get_job_ids() == ids
    assert [Job.fetch(i, connection=redis_conn).args[0] for i in ids] == [e.to_dict() for e in events]
    received = redis_conn.hgetall(f"{PREFIX}metric:events_received")
    assert received == {b"source=webhook": b"2", b"source=recovery": b"1"}


def test_rq_can_build_another_queue_of_our_class(redis_conn: redis.Redis) -> None:
    """rq makes queues of the class it is handed (``self.__class__(name=..., connection=..., ...)``)."""
    queue = make_queue(redis_conn, "events", PREFIX, job_timeout=99)
    other = type(queue)(name="other", connection=redis_conn, job_class=queue.job_class, serializer=queue.serializer)
    assert isinstance(other, EventQueue)
    assert other.key == "rq:queue:other"
    assert other.key_prefix == defaults.KEY_PREFIX


@pytest.fixture
def rt(redis_url: str, redis_conn: redis.Redis) -> Iterator[runtime.Runtime]:
    settings = Settings(redis=RedisConfig(url=redis_url, key_prefix=PREFIX))
    built = runtime.build_runtime(settings, redis_conn, dispatcher=RecordingDispatcher(redis_conn, PREFIX))
    runtime.install(built)
    yield built
    runtime.install(None)


def test_a_real_rq_worker_runs_our_jobs(rt: runtime.Runtime) -> None:
    events = [event(1), event(2)]
    ids = enqueue_events(rt.queue, events[:1], metrics=rt.metrics)
    ids.append(enqueued_by_rq(rt.queue, events[1]))
    rq.SimpleWorker([rt.queue], connection=rt.redis).work(burst=True, logging_level="WARNING")
    for job_id in ids:
        assert Job.fetch(job_id, connection=rt.redis).get_status() == JobStatus.FINISHED
    assert [e.reference for e in rt.dispatcher.dispatched()] == ["Patient/p1", "Patient/p2"]  # type: ignore[attr-defined]
    assert rt.metrics.counter_value("events", result="processed") == 2
