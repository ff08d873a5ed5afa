"""An event job's prior state, run history and metrics land in the transaction of its done mark.

On the real Redis, through `handle_event` and rq, with the real `RedisPriorState` and `RunHistory`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
import rq

from fhir_smartflow.config import RedisConfig, Settings
from fhir_smartflow.connections import Keys
from fhir_smartflow.events import ResourceEvent
from fhir_smartflow.queueing import enqueue_events
from fhir_smartflow.worker import jobwrites, runtime
from fhir_smartflow.worker.history import RunHistory
from fhir_smartflow.worker.jobs import dedupe_key, handle_event
from fhir_smartflow.worker.prior import RedisPriorState

pytestmark = pytest.mark.integration

PREFIX = "t:"
KEYS = Keys(PREFIX)


class PriorAndHistoryDispatcher:
    """A Dispatcher (protocol) that does what the engine pipeline does with Redis: reads and writes the
    prior state and records a run; ``fail`` raises after both; ``seen`` is what was in Redis meanwhile."""

    def __init__(self, conn: redis.Redis) -> None:
        self.conn = conn
        self.prior = RedisPriorState(conn, KEYS, ttl=600)
        self.history = RunHistory(conn, KEYS, max_runs=100, ttl=600)
        self.fail = False
        self.seen: list[tuple[bytes | None, int]] = []

    def dispatch(self, event: ResourceEvent) -> None:
        assert event.resource is not None and event.resource_id is not None
        self.prior.put(event.resource_type, event.resource_id, event.resource)
        self.history.add(lambda run_id, at: {"id": run_id, "focus": event.reference}, "Patient/p1", ["intake"])
        self.seen.append((self.conn.get(KEYS.prior("Patient", event.resource_id)), len(self.history.query())))
        if self.fail:
            raise RuntimeError("engine down")


@pytest.fixture
def rt(redis_url: str, redis_conn: redis.Redis) -> Iterator[runtime.Runtime]:
    settings = Settings(redis=RedisConfig(url=redis_url, key_prefix=PREFIX))
    built = runtime.build_runtime(settings, redis_conn, dispatcher=PriorAndHistoryDispatcher(redis_conn))
    runtime.install(built)
    yield built
    runtime.install(None)


def event(version: str, status: str = "active") -> ResourceEvent:
    return ResourceEvent(
        subscription="sub-a",
        resource_type="Patient",
        resource_id="p1",
        received_at="2026-11-25T10:00:00+00:00",
        version_id=version,
        resource={"resourceType": "Patient", "id": "p1", "meta": {"versionId": version}, "active": status == "active"},
    )


def dispatcher(rt: runtime.Runtime) -> PriorAndHistoryDispatcher:
    assert isinstance(rt.dispatcher, PriorAndHistoryDispatcher)
    return rt.dispatcher


def test_prior_state_and_history_are_written_with_the_done_mark_not_before(rt: runtime.Runtime) -> None:
    assert handle_event(rt, event("1")) == "processed"
    assert dispatcher(rt).seen == [(None, 0)]  # nothing of it in Redis while the event ran
    assert RedisPriorState(rt.redis, KEYS).get("Patient", "p1") == {
        "resourceType": "Patient",
        "id": "p1",
        "active": True,
        "meta": {"versionId": "1"},
    }
    assert [r["focus"] for r in RunHistory(rt.redis, KEYS, 100, 600).query()] == ["Patient/p1"]
    assert rt.redis.get(rt.keys.dedupe(dedupe_key(event("1")))) == b"done"
    assert rt.metrics.counter_value("events", result="processed") == 1


def test_a_failed_dispatch_records_its_run_but_leaves_the_prior_state_for_the_retry(rt: runtime.Runtime) -> None:
    dispatcher(rt).fail = True
    with pytest.raises(RuntimeError):
        handle_event(rt, event("1"))
    assert rt.redis.get(KEYS.prior("Patient", "p1")) is None  # the transition fires again on the retry
    assert len(RunHistory(rt.redis, KEYS, 100, 600).query()) == 1  # what ran is on record
    assert rt.redis.get(rt.keys.dedupe(dedupe_key(event("1")))) is None  # claim released
    assert jobwrites.current() is None
    dispatcher(rt).fail = False
    assert handle_event(rt, event("1")) == "processed"
    assert rt.redis.get(KEYS.prior("Patient", "p1")) is not None


def test_a_newer_prior_state_stored_meanwhile_is_kept(rt: runtime.Runtime) -> None:
    RedisPriorState(rt.redis, KEYS).put("Patient", "p1", event("3", status="inactive").resource or {})
    assert handle_event(rt, event("2")) == "processed"  # a late v2
    assert RedisPriorState(rt.redis, KEYS).get("Patient", "p1") == {
        "resourceType": "Patient",
        "id": "p1",
        "active": False,
        "meta": {"versionId": "3"},
    }


def test_through_rq_every_counter_lands_once_and_outside_a_job_writes_go_at_once(rt: runtime.Runtime) -> None:
    enqueue_events(rt.queue, [event("1"), event("1"), event("2")], metrics=rt.metrics)
    rq.SimpleWorker([rt.queue], connection=rt.redis).work(burst=True, logging_level="WARNING")
    m = rt.metrics
    assert (m.counter_value("events", result="processed"), m.counter_value("events", result="deduplicated")) == (2, 1)
    assert m.read("event_latency_seconds")["#count"] == "2"
    assert RedisPriorState(rt.redis, KEYS).get("Patient", "p1") == {
        "resourceType": "Patient",
        "id": "p1",
        "active": True,
        "meta": {"versionId": "2"},
    }
    RedisPriorState(rt.redis, KEYS).put("Patient", "p2", {"resourceType": "Patient", "id": "p2"})
    assert rt.redis.get(KEYS.prior("Patient", "p2")) is not None  # no job: written at once


def test_collections_do_not_nest(redis_conn: redis.Redis) -> None:
    prior = RedisPriorState(redis_conn, KEYS)
    with jobwrites.collecting() as writes:
        with pytest.raises(RuntimeError), jobwrites.collecting():
            pass
        prior.put("Patient", "n2", {"resourceType": "Patient", "id": "n2"})
    assert redis_conn.get(KEYS.prior("Patient", "n2")) is None  # collected, never sent here
    assert writes.watched() == [KEYS.prior("Patient", "n2")]
    assert jobwrites.current() is None


class ReadingDispatcher(PriorAndHistoryDispatcher):
    """Reads the prior state as the engine pipeline does, counting the GETs it sends itself."""

    def __init__(self, conn: redis.Redis) -> None:
        super().__init__(conn)
        self.previous: list[dict | None] = []
        self.own_gets = 0
        get = conn.get

        def counting_get(*args: object) -> object:
            self.own_gets += 1
            return get(*args)

        self.prior.conn = redis.Redis(connection_pool=conn.connection_pool)
        self.prior.conn.get = counting_get  # type: ignore[method-assign]

    def dispatch(self, event: ResourceEvent) -> None:
        assert event.resource_id is not None
        self.previous.append(self.prior.get(event.resource_type, event.resource_id))
        super().dispatch(event)


def test_the_prior_state_is_read_with_the_claim(redis_url: str, redis_conn: redis.Redis) -> None:
    settings = Settings(redis=RedisConfig(url=redis_url, key_prefix=PREFIX))
    reading = ReadingDispatcher(redis_conn)
    built = runtime.build_runtime(settings, redis_conn, dispatcher=reading)
    try:
        assert handle_event(built, event("1")) == "processed"
        assert handle_event(built, event("2", status="inactive")) == "processed"
        assert handle_event(built, event("2", status="inactive")) == "deduplicated"
    finally:
        runtime.install(None)
    assert reading.previous == [
        None,
        {"resourceType": "Patient", "id": "p1", "active": True, "meta": {"versionId": "1"}},
    ]
    assert reading.own_gets == 0  # both reads came with the claims
    outside = RedisPriorState(redis_conn, KEYS).get("Patient", "p1")  # no open job: reads Redis itself
    assert outside is not None and outside["active"] is False
