"""The event job on the real Redis: dedupe claims, gap bookkeeping, fetching, replay of failed jobs."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis
import rq
from click.testing import CliRunner

from fhir_smartflow.config import RedisConfig, Settings
from fhir_smartflow.events import ResourceEvent
from fhir_smartflow.queueing import enqueue_events
from fhir_smartflow.worker import runtime
from fhir_smartflow.worker.gaps import GapTracker, record_status
from fhir_smartflow.worker.jobs import EventInProgress, dedupe_key, handle_event
from fhir_smartflow.worker.seams import RecordingDispatcher
from tests.support.events import patient_event as event
from tests.support.fakes import RecordingRecovery
from tests.support.net import wait_for

pytestmark = pytest.mark.integration

PREFIX = "t:"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class FlakyDispatcher(RecordingDispatcher):
    """Fails while ``fail`` is set: a dispatcher that crashes mid-event."""

    fail = False

    def dispatch(self, event: ResourceEvent) -> None:
        if self.fail:
            raise RuntimeError("engine down")
        super().dispatch(event)


class ListFetcher:
    """Re-queries 'criteria': returns two resources (a Protocol fake, not one of our components)."""

    def fetch(self, event: ResourceEvent) -> list[ResourceEvent]:
        return [
            dataclasses.replace(event, resource_type="Patient", resource_id=pid, version_id="1", resource={"id": pid})
            for pid in ("a", "b")
        ]


@pytest.fixture
def rt(redis_url: str, redis_conn: redis.Redis) -> Iterator[runtime.Runtime]:
    settings = Settings(redis=RedisConfig(url=redis_url, key_prefix=PREFIX, gap_grace_seconds=30))
    built = runtime.build_runtime(
        settings,
        redis_conn,
        dispatcher=FlakyDispatcher(redis_conn, PREFIX),
        gap_recovery=RecordingRecovery(),
        clock=Clock(),
    )
    runtime.install(built)
    yield built
    runtime.install(None)


def dispatched(rt: runtime.Runtime) -> list[ResourceEvent]:
    return rt.dispatcher.dispatched()  # type: ignore[attr-defined]


def drain(rt: runtime.Runtime) -> None:
    rq.SimpleWorker([rt.queue], connection=rt.redis).work(burst=True, logging_level="WARNING")


def test_duplicates_through_the_queue_reach_the_dispatcher_once(rt: runtime.Runtime) -> None:
    enqueue_events(rt.queue, [event(5)] * 3, metrics=rt.metrics)
    drain(rt)
    assert [e.reference for e in dispatched(rt)] == ["Patient/p1"]
    m = rt.metrics
    assert m.counter_value("events_received", source="webhook") == 3
    assert (m.counter_value("events", result="processed"), m.counter_value("events", result="deduplicated")) == (1, 2)


def test_new_version_is_not_a_duplicate(rt: runtime.Runtime) -> None:
    assert handle_event(rt, event(5, version="1")) == "processed"
    assert handle_event(rt, event(6, version="2")) == "processed"
    assert [e.version_id for e in dispatched(rt)] == ["1", "2"]


def test_failed_dispatch_releases_the_claim_so_a_retry_processes_it(rt: runtime.Runtime) -> None:
    rt.dispatcher.fail = True  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError):
        handle_event(rt, event(5))
    assert rt.redis.get(rt.keys.dedupe(dedupe_key(event(5)))) is None
    rt.dispatcher.fail = False  # type: ignore[attr-defined]
    assert handle_event(rt, event(5)) == "processed"
    assert handle_event(rt, event(5)) == "deduplicated"
    assert len(dispatched(rt)) == 1


def test_claim_held_by_a_crashed_worker_is_retried_not_dropped(rt: runtime.Runtime) -> None:
    key = rt.keys.dedupe(dedupe_key(event(5)))
    rt.redis.set(key, "processing:other-worker", ex=60)
    with pytest.raises(EventInProgress):
        handle_event(rt, event(5))
    assert 0 < rt.redis.ttl(key) <= 60  # short TTL: the claim frees itself
    assert rt.metrics.counter_value("events", result="failed") == 1  # outside rq every attempt is the last
    rt.redis.delete(key)  # ... as if it expired
    assert handle_event(rt, event(5)) == "processed"


def test_number_alone_never_dedupes(rt: runtime.Runtime) -> None:
    first = dataclasses.replace(event(3, version=None), timestamp=None, body_hash="aaa")
    second = dataclasses.replace(first, body_hash="bbb")  # a restarted server reusing #3
    assert handle_event(rt, first) == "processed"
    assert handle_event(rt, second) == "processed"


def tracker(rt: runtime.Runtime) -> GapTracker:
    return GapTracker(rt.redis, rt.keys, rt.metrics, 30, rt.gap_recovery, rt.clock)


def test_out_of_order_within_grace_is_not_a_gap(rt: runtime.Runtime) -> None:
    for n in (1, 2, 4):
        handle_event(rt, event(n, version=str(n)))
    assert tracker(rt).pending("sub-a") == [3]
    rt.clock.advance(10)  # type: ignore[attr-defined]
    handle_event(rt, event(3, version="3"))
    rt.clock.advance(60)  # type: ignore[attr-defined]
    assert tracker(rt).sweep("sub-a") == []
    assert tracker(rt).gaps("sub-a") == [] and tracker(rt).pending("sub-a") == []
    assert len(dispatched(rt)) == 4


def test_jump_becomes_a_gap_after_the_grace_period(rt: runtime.Runtime) -> None:
    handle_event(rt, event(1))
    handle_event(rt, event(5, version="5"))
    handle_event(rt, event(3, version="3"))  # late, fills 3
    rt.clock.advance(29)  # type: ignore[attr-defined]
    assert tracker(rt).sweep("sub-a") == []
    rt.clock.advance(2)  # type: ignore[attr-defined]
    handle_event(rt, event(6, version="6"))  # any later event sweeps
    gaps = tracker(rt).gaps("sub-a")
    assert [(g.first, g.last) for g in gaps] == [(2, 2), (4, 4)]
    assert gaps[0].after_timestamp == "2026-11-25T10:00:01Z"
    assert [(g.first, g.last) for g in rt.gap_recovery.gaps] == [(2, 2), (4, 4)]  # type: ignore[attr-defined]
    assert rt.metrics.counter_value("gaps", subscription="sub-a") == 2
    assert len(dispatched(rt)) == 4


def test_restart_after_heartbeat_reuses_numbers_and_is_not_a_gap(rt: runtime.Runtime) -> None:
    for n in (1, 2, 3):
        handle_event(rt, event(n, version=str(n)))
    rt.clock.advance(5)  # type: ignore[attr-defined]
    pipe = rt.redis.pipeline()
    record_status(pipe, rt.keys, "sub-a", "heartbeat", 0, rt.clock())
    pipe.execute()
    rt.clock.advance(1)  # type: ignore[attr-defined]
    # The restarted server numbers from 1 again: different changes, same numbers.
    assert handle_event(rt, event(1, version="7", rid="p2")) == "processed"
    assert handle_event(rt, event(2, version="8", rid="p2")) == "processed"
    assert rt.metrics.counter_value("server_restarts", subscription="sub-a") == 1
    assert rt.redis.hget(rt.keys.subscription("sub-a"), "restarts") == b"1"
    rt.clock.advance(60)  # type: ignore[attr-defined]
    handle_event(rt, event(3, version="9", rid="p2"))
    assert tracker(rt).gaps("sub-a") == []
    assert len(dispatched(rt)) == 6


def test_empty_payload_expands_through_the_fetcher_and_dedupes_each_resource(rt: runtime.Runtime) -> None:
    rt.fetcher = ListFetcher()
    empty = ResourceEvent("sub-a", "", None, "2026-11-25T10:00:00+00:00", payload_content="empty", body_hash="x1")
    assert handle_event(rt, empty) == "processed"
    again = dataclasses.replace(empty, body_hash="x2")  # a second empty notification, nothing new
    assert handle_event(rt, again) == "processed"
    assert [e.reference for e in dispatched(rt)] == ["Patient/a", "Patient/b"]


def test_deletes_are_not_fetched(rt: runtime.Runtime) -> None:
    class Exploding:
        def fetch(self, event: ResourceEvent) -> ResourceEvent:
            raise AssertionError("a deleted resource must not be fetched")

    rt.fetcher = Exploding()
    deleted = dataclasses.replace(event(None, version=None), resource=None, interaction="delete", body_hash="d")
    assert handle_event(rt, deleted) == "processed"


def test_replay_requeues_failed_jobs_with_their_payload(rt: runtime.Runtime, redis_url: str, tmp_path) -> None:
    rt.dispatcher.fail = True  # type: ignore[attr-defined]
    (job_id,) = enqueue_events(rt.queue, [event(5)], metrics=rt.metrics)
    rt.redis.hset(f"rq:job:{job_id}", "retries_left", 0)  # as if every retry was used up
    drain(rt)
    assert rq.registry.FailedJobRegistry(queue=rt.queue).get_job_ids() == [job_id]
    assert rt.metrics.counter_value("events", result="failed") == 1

    config = tmp_path / "smartflow.toml"
    config.write_text(f'[redis]\nurl = "{redis_url}"\nkey_prefix = "{PREFIX}"\n')
    from fhir_smartflow.cli import main

    rt.dispatcher.fail = False  # type: ignore[attr-defined]
    result = CliRunner().invoke(main, ["--config", str(config), "replay", "--json"])
    assert result.exit_code == 0, result.output
    assert f'"job_id": "{job_id}"' in result.output
    assert rq.registry.FailedJobRegistry(queue=rt.queue).get_job_ids() == []
    drain(rt)
    assert [e.reference for e in dispatched(rt)] == ["Patient/p1"]
    received = rt.metrics.read("events_received")
    assert received == {"source=webhook": "1", "source=replay": "1"}


def test_jump_schedules_a_sweep_that_records_the_gap_without_later_events(rt: runtime.Runtime) -> None:
    from fhir_smartflow.worker.jobs import sweep_gaps

    handle_event(rt, event(1))
    handle_event(rt, event(4, version="4"))
    scheduled = rq.registry.ScheduledJobRegistry(queue=rt.queue).get_job_ids()
    assert len(scheduled) == 1
    assert rq.job.Job.fetch(scheduled[0], connection=rt.redis).args == ("sub-a",)
    assert sweep_gaps("sub-a") == 0  # still within the grace period
    rt.clock.advance(31)  # type: ignore[attr-defined]
    assert sweep_gaps("sub-a") == 1
    assert [(g.first, g.last) for g in tracker(rt).gaps("sub-a")] == [(2, 3)]


def test_embedded_worker_thread_runs_jobs_and_due_scheduled_jobs() -> None:
    import threading

    import fakeredis

    from fhir_smartflow.worker.embedded import run_embedded_worker

    conn = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    built = runtime.build_runtime(Settings(redis=RedisConfig(key_prefix=PREFIX)), conn)
    runtime.install(built)
    stop = threading.Event()
    thread = threading.Thread(target=run_embedded_worker, args=(built, stop, 0.02), daemon=True)
    thread.start()
    try:
        enqueue_events(built.queue, [event(1)], metrics=built.metrics)
        sweep = built.queue.enqueue_in(timedelta(seconds=0), "fhir_smartflow.worker.jobs.sweep_gaps", "sub-a")
        wait_for(
            lambda: dispatched(built) and sweep.get_status(refresh=True) == "finished",
            "the event dispatched and the sweep finished",
            lambda: str((dispatched(built), sweep.get_status())),
            timeout=10,
        )
    finally:
        stop.set()
        thread.join(timeout=5)
        runtime.install(None)
    assert [e.reference for e in dispatched(built)] == ["Patient/p1"]


def test_a_duplicate_still_counts_its_event_number(rt: runtime.Runtime) -> None:
    """#1, then #3 re-notifying #1's version: #3 is a duplicate, but its number shows #2 never came."""
    assert handle_event(rt, event(1, version="7")) == "processed"
    assert handle_event(rt, dataclasses.replace(event(3, version="7"), timestamp=None)) == "deduplicated"
    assert tracker(rt).pending("sub-a") == [2]
    rt.clock.advance(31)  # type: ignore[attr-defined]
    assert [(g.first, g.last) for g in tracker(rt).sweep("sub-a")] == [(2, 2)]
