"""Group commit on the real Redis: concurrent deliveries share one transaction and one ``process_events``
job; the batch job, its retries, its dead letter and its replay; the whole path over real HTTP.

Groups are made to form deterministically: ``CLIENT PAUSE <ms> WRITE`` (from another connection) holds
the first leader's EXEC in Redis while the other deliveries arrive and wait behind it.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import rq

from fhir_smartflow.app import create_app
from fhir_smartflow.batch_queueing import (
    backlog_events,
    backlog_events_key,
    enqueue_batch,
    unfinished_events,
)
from fhir_smartflow.config import RedisConfig, Settings, load_settings
from fhir_smartflow.events import ResourceEvent
from fhir_smartflow.ingest.group_commit import GroupCommitter
from fhir_smartflow.metrics import Metrics
from fhir_smartflow.queueing import PROCESS_BACKLOG_BATCH, PROCESS_EVENT, PROCESS_EVENTS, make_queue
from fhir_smartflow.worker import runtime
from fhir_smartflow.worker.embedded import replay_failed
from fhir_smartflow.worker.seams import RecordingDispatcher
from tests.support.events import patient_event
from tests.support.net import wait_for
from tests.support.toml import write_config

pytestmark = pytest.mark.integration

PREFIX = "gc:"
PAUSE_MS = 20_000  # only a bound: every test unpauses as soon as its group has formed


def event(rid: str, number: int | None = None) -> ResourceEvent:
    return patient_event(number, rid=rid)


@contextlib.contextmanager
def writes_paused(redis_url: str) -> Iterator[redis.Redis]:
    """Redis holds every write (an EXEC with writes too) until the block ends."""
    admin = redis.Redis.from_url(redis_url)
    admin.execute_command("CLIENT", "PAUSE", PAUSE_MS, "WRITE")
    try:
        yield admin
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
        admin.close()


class Deliveries:
    """Submits deliveries to a committer from real threads; each thread's result or error is kept."""

    def __init__(self, committer: GroupCommitter, conn: redis.Redis) -> None:
        self.committer = committer
        self.conn = conn
        self.threads: list[threading.Thread] = []
        self.errors: dict[str, BaseException] = {}
        self.ok: list[str] = []
        self._lock = threading.Lock()

    def submit(self, name: str, events: list[ResourceEvent]) -> None:
        def record(pipe: Any) -> None:
            pipe.hset(f"{PREFIX}delivered", name, len(events))

        def run() -> None:
            try:
                self.committer.commit(record, events)
            except BaseException as exc:
                with self._lock:
                    self.errors[name] = exc
            else:
                with self._lock:
                    self.ok.append(name)

        thread = threading.Thread(target=run, name=f"delivery-{name}")
        self.threads.append(thread)
        thread.start()

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=30)
            assert not thread.is_alive(), f"{thread.name} still waiting"


@pytest.fixture
def queue(redis_conn: redis.Redis) -> rq.Queue:
    return make_queue(redis_conn, "gc", PREFIX)


def committer_for(conn: redis.Redis, queue: rq.Queue, max_events: int = 50) -> GroupCommitter:
    return GroupCommitter(conn, RedisConfig(key_prefix=PREFIX), queue, Metrics(conn, PREFIX), max_events)


def held_group(redis_url: str, deliveries: Deliveries, followers: dict[str, list[ResourceEvent]]) -> None:
    """The first delivery's transaction held in Redis while ``followers`` arrive and wait behind it."""
    committer = deliveries.committer
    deliveries.submit("first", [event("p0")])
    wait_for(lambda: committer.committing == 1, "the first delivery leading")
    for name, events in followers.items():
        deliveries.submit(name, events)
    wait_for(lambda: committer.waiting == len(followers), "the followers waiting behind the first")


def test_deliveries_arriving_during_a_commit_share_the_next_one_and_one_batch_job(
    redis_conn: redis.Redis, redis_url: str, queue: rq.Queue
) -> None:
    deliveries = Deliveries(committer_for(redis_conn, queue), redis_conn)
    followers = {f"d{i}": [event(f"p{i}a"), event(f"p{i}b")] for i in range(1, 5)}
    followers["heartbeat"] = []
    with writes_paused(redis_url):
        held_group(redis_url, deliveries, followers)
    deliveries.join()

    assert deliveries.errors == {} and sorted(deliveries.ok) == sorted(["first", *followers])
    jobs = queue.jobs
    assert [job.func_name for job in jobs] == [PROCESS_EVENT, PROCESS_EVENTS]
    assert jobs[0].args[0]["resource_id"] == "p0"
    batched = sorted(e["resource_id"] for e in jobs[1].args[0])
    assert batched == sorted(e.resource_id for events in followers.values() for e in events)
    assert jobs[1].description.startswith("process_events 8 event(s): sub-a Patient/")
    assert jobs[1].retries_left == jobs[0].retries_left and jobs[1].timeout == jobs[0].timeout
    assert len(redis_conn.hgetall(f"{PREFIX}delivered")) == 6  # every delivery's record, nothing lost
    assert Metrics(redis_conn, PREFIX).counter_value("events_received", source="webhook") == 9


def test_a_group_over_the_cap_is_split_and_a_big_delivery_goes_alone(
    redis_conn: redis.Redis, redis_url: str, queue: rq.Queue
) -> None:
    deliveries = Deliveries(committer_for(redis_conn, queue, max_events=3), redis_conn)
    followers = {"a": [event("a1"), event("a2")], "b": [event("b1")], "big": [event(f"c{i}") for i in range(5)]}
    with writes_paused(redis_url):
        held_group(redis_url, deliveries, followers)
    deliveries.join()

    assert deliveries.errors == {}
    shapes = sorted((job.func_name, len(job.args[0]) if job.func_name == PROCESS_EVENTS else 1) for job in queue.jobs)
    # first alone; a + b (3 events) as one batch; big (5 > 3) alone: one process_event job per event
    assert shapes == sorted([(PROCESS_EVENT, 1), (PROCESS_EVENTS, 3), *[(PROCESS_EVENT, 1)] * 5])


def test_a_redis_failure_fails_every_delivery_of_the_group_and_queues_nothing(
    redis_conn: redis.Redis, redis_url: str, queue: rq.Queue
) -> None:
    deliveries = Deliveries(committer_for(redis_conn, queue), redis_conn)
    followers = {f"d{i}": [event(f"p{i}")] for i in range(1, 4)}
    policy = redis_conn.config_get("maxmemory-policy")["maxmemory-policy"]
    try:
        with writes_paused(redis_url) as admin:
            held_group(redis_url, deliveries, followers)
            # Redis full: the held EXEC and the next group's commands are refused (OOM).
            admin.config_set("maxmemory-policy", "noeviction")
            admin.config_set("maxmemory", 1)
        deliveries.join()
    finally:  # the suite's Redis server is shared by the session
        redis_conn.config_set("maxmemory", 0)
        redis_conn.config_set("maxmemory-policy", policy)

    assert deliveries.ok == []
    assert sorted(deliveries.errors) == ["d1", "d2", "d3", "first"]
    assert all(isinstance(exc, redis.ResponseError) for exc in deliveries.errors.values())
    assert queue.count == 0 and redis_conn.hgetall(f"{PREFIX}delivered") == {}
    assert Metrics(redis_conn, PREFIX).read("events_received") == {}


def test_grouping_off_commits_every_delivery_alone(redis_conn: redis.Redis, queue: rq.Queue) -> None:
    committer = committer_for(redis_conn, queue, max_events=1)
    assert not committer.grouping
    committer.commit(lambda pipe: pipe.hset(f"{PREFIX}delivered", "x", 1), [event("p1"), event("p2")])
    assert [job.func_name for job in queue.jobs] == [PROCESS_EVENT, PROCESS_EVENT]


# ------------------------------------------------------------------------------------------------ the batch job


class FailingFor(RecordingDispatcher):
    """Fails for the resource ids in ``failing`` (a dispatcher whose engine crashes on those events)."""

    failing: set[str] = set()

    def dispatch(self, event: ResourceEvent) -> None:
        if event.resource_id in self.failing:
            raise RuntimeError("engine down")
        super().dispatch(event)


class CountingFetcher:
    """The server's copy of each event it is asked to verify (a Protocol fake), counting the reads."""

    def __init__(self) -> None:
        self.reads: dict[str, int] = {}

    def fetch(self, event: ResourceEvent) -> ResourceEvent:
        assert event.resource_id is not None
        self.reads[event.resource_id] = self.reads.get(event.resource_id, 0) + 1
        return ResourceEvent.from_dict(
            {**event.to_dict(), "resource": {"resourceType": "Patient", "id": event.resource_id}}
        )

    def read_ahead(self, questions: Sequence[ResourceEvent]) -> CountingFetcher:
        return self  # reads nothing ahead: every verification is its own read


@pytest.fixture
def rt(redis_url: str, redis_conn: redis.Redis) -> Iterator[runtime.Runtime]:
    settings = Settings(redis=RedisConfig(url=redis_url, key_prefix=PREFIX, queue="gc"))
    built = runtime.build_runtime(
        settings, redis_conn, dispatcher=FailingFor(redis_conn, PREFIX), fetcher=CountingFetcher()
    )
    runtime.install(built)
    yield built
    runtime.install(None)


def drain(rt: runtime.Runtime) -> None:
    rq.SimpleWorker([rt.queue], connection=rt.redis).work(burst=True, logging_level="WARNING")


def dispatched(rt: runtime.Runtime) -> list[str]:
    return sorted(e.resource_id or "" for e in rt.dispatcher.dispatched())  # type: ignore[attr-defined]


def queue_batch(rt: runtime.Runtime, events: list[ResourceEvent]) -> str:
    pipe = rt.redis.pipeline()
    pipe.multi()
    job_id = enqueue_batch(rt.queue, events, pipe, metrics=rt.metrics)
    pipe.execute()
    return job_id


def test_a_batch_job_processes_every_event_once(rt: runtime.Runtime) -> None:
    queue_batch(rt, [event("p1", 1), event("p2", 2), event("p1", 1)])  # the third: a duplicate of the first
    drain(rt)
    assert dispatched(rt) == ["p1", "p2"]
    m = rt.metrics
    assert (m.counter_value("events", result="processed"), m.counter_value("events", result="deduplicated")) == (2, 1)
    assert m.counter_value("events_received", source="webhook") == 3
    assert rt.queue.finished_job_registry.count == 1 and rt.queue.failed_job_registry.count == 0


def test_a_failing_event_retries_the_batch_which_skips_the_finished_ones_then_dead_letters_and_replays(
    rt: runtime.Runtime,
) -> None:
    rt.dispatcher.failing = {"bad"}  # type: ignore[attr-defined]
    verified = [dict(e.to_dict(), verify=True) for e in (event("p1"), event("bad"), event("p2"))]
    job_id = queue_batch(rt, [ResourceEvent.from_dict(d) for d in verified])
    # Two attempts in all, the retry at once (the policy's intervals are minutes).
    rt.redis.hset(f"rq:job:{job_id}", mapping={"retries_left": 1, "retry_intervals": "[0]"})
    drain(rt)

    assert rt.queue.failed_job_registry.get_job_ids() == [job_id]
    job = rq.job.Job.fetch(job_id, connection=rt.redis)
    reason = job.latest_result().exc_string  # type: ignore[union-attr]
    assert "BatchFailed: 1 of 3 event(s) failed (first: RuntimeError)" in reason and "engine down" not in reason
    assert dispatched(rt) == ["p1", "p2"]
    assert rt.fetcher.reads == {"p1": 1, "bad": 2, "p2": 1}  # type: ignore[attr-defined] - the retry skipped p1, p2
    m = rt.metrics
    assert (m.counter_value("events", result="processed"), m.counter_value("events", result="failed")) == (2, 1)
    assert m.counter_value("events", result="deduplicated") == 0

    rt.dispatcher.failing = set()  # type: ignore[attr-defined]
    (replayed,) = replay_failed(rt)
    assert replayed["job_id"] == job_id and "BatchFailed" in replayed["reason"]
    (new,) = rt.queue.jobs  # only the unfinished event, as one process_event job
    assert new.func_name == PROCESS_EVENT and new.args[0]["resource_id"] == "bad" and new.id == replayed["new_job_id"]
    assert rt.queue.failed_job_registry.count == 0
    drain(rt)
    assert dispatched(rt) == ["bad", "p1", "p2"]
    assert m.read("events_received") == {"source=webhook": "3", "source=replay": "1"}
    assert m.counter_value("events", result="processed") == 3


class SlowFor(RecordingDispatcher):
    """Takes longer than any job timeout for the resource ids in ``slow`` (an engine that hangs)."""

    slow: set[str] = set()

    def dispatch(self, event: ResourceEvent) -> None:
        if event.resource_id in self.slow:
            threading.Event().wait(30)  # interrupted by rq's job timeout (SIGALRM in this thread)
        super().dispatch(event)


def test_a_batch_that_runs_out_of_time_on_its_last_attempt_counts_the_events_it_did_not_reach_failed(
    redis_url: str, redis_conn: redis.Redis
) -> None:
    settings = Settings(redis=RedisConfig(url=redis_url, key_prefix=PREFIX, queue="gc"))
    dispatcher = SlowFor(redis_conn, PREFIX)
    dispatcher.slow = {"hangs"}
    rt = runtime.build_runtime(settings, redis_conn, dispatcher=dispatcher, fetcher=CountingFetcher())
    runtime.install(rt)
    try:
        job_id = queue_batch(rt, [event("p1", 1), event("hangs", 2), event("p2", 3), event("p3", 4)])
        rt.redis.hset(f"rq:job:{job_id}", mapping={"timeout": 1, "retries_left": 0})  # one attempt, 1 s
        drain(rt)
    finally:
        runtime.install(None)

    assert rt.queue.failed_job_registry.get_job_ids() == [job_id]
    assert dispatched(rt) == ["p1"]
    m = rt.metrics
    assert (m.counter_value("events", result="processed"), m.counter_value("events", result="failed")) == (1, 3)
    job = rq.job.Job.fetch(job_id, connection=rt.redis)
    unfinished = unfinished_events(rt.queue, job)
    assert sorted(e.resource_id or "" for e in unfinished) == ["hangs", "p2", "p3"]  # replay puts back all three


# ------------------------------------------------------------------------------------------------ over real HTTP

BASE = "https://ehr.example.org/fhir"
SUB = {"id": "sub-a", "header": "X-Smartflow-Secret", "secret_env": "GC_SECRET", "criteria": "Patient?"}


def notification(pid: str, number: int) -> bytes:
    focus = f"{BASE}/Patient/{pid}"
    params = [
        {"name": "subscription", "valueReference": {"reference": f"{BASE}/Subscription/srv-a"}},
        {"name": "status", "valueCode": "active"},
        {"name": "type", "valueCode": "event-notification"},
        {"name": "events-since-subscription-start", "valueString": str(number)},
        {
            "name": "notification-event",
            "part": [
                {"name": "event-number", "valueString": str(number)},
                {"name": "timestamp", "valueInstant": "2026-11-25T10:00:00Z"},
                {"name": "focus", "valueReference": {"reference": focus}},
            ],
        },
    ]
    resource = {"resourceType": "Patient", "id": pid, "meta": {"versionId": "1"}, "active": True}
    status = {"resourceType": "Parameters", "parameter": params}
    entries = [
        {"fullUrl": "urn:uuid:4f1c2a10-0000-4000-8000-000000000001", "resource": status},
        {"fullUrl": focus, "request": {"method": "PUT", "url": focus}, "resource": resource},
    ]
    return json.dumps({"resourceType": "Bundle", "type": "history", "entry": entries}).encode()


def test_concurrent_deliveries_over_http_make_fewer_jobs_and_every_event_is_processed_once(
    serve_app: Callable[..., Any], redis_url: str, redis_conn: redis.Redis, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("GC_SECRET", "s3cret")
    sections = {"redis": {"url": redis_url, "key_prefix": PREFIX, "queue": "gc"}, "fhir": {"base_url": BASE}}
    settings = load_settings(write_config(tmp_path / "gc.toml", sections, [SUB]), env={})
    app = create_app(settings, redis_conn)
    url = f"{serve_app(app).url}/fhir/notify"
    committer: GroupCommitter = app.extensions["smartflow"].committer
    headers = {"Content-Type": "application/fhir+json", "X-Smartflow-Secret": "s3cret"}

    def post(number: int) -> requests.Response:
        return requests.post(url, data=notification(f"p{number}", number), headers=headers, timeout=30)

    assert post(1).status_code == 200  # records the server Subscription (a write outside the transaction)
    answers: dict[int, int] = {}

    def deliver(number: int) -> None:
        answers[number] = post(number).status_code

    threads = [threading.Thread(target=deliver, args=(n,)) for n in range(2, 8)]
    with writes_paused(redis_url):
        threads[0].start()
        wait_for(lambda: committer.committing == 1, "the first delivery leading")
        for thread in threads[1:]:
            thread.start()
        wait_for(lambda: committer.waiting == 5, "five deliveries waiting behind it")
    for thread in threads:
        thread.join(timeout=30)

    assert answers == dict.fromkeys(range(2, 8), 200)
    queue = make_queue(redis_conn, "gc", PREFIX)
    # 7 deliveries: 2's job found 1's still waiting, so the five that waited behind 2 joined a backlog batch
    assert [job.func_name for job in queue.jobs] == [PROCESS_EVENT, PROCESS_EVENT, PROCESS_BACKLOG_BATCH]
    rt = runtime.build_runtime(settings, redis_conn, dispatcher=RecordingDispatcher(redis_conn, PREFIX))
    runtime.install(rt)
    try:
        drain(rt)
    finally:
        runtime.install(None)
    assert sorted(e.resource_id or "" for e in rt.dispatcher.dispatched()) == [f"p{n}" for n in range(1, 8)]  # type: ignore[attr-defined]
    m = rt.metrics
    assert (
        m.counter_value("events", result="processed") == 7 and m.counter_value("events_received", source="webhook") == 7
    )
    assert m.counter_value("notifications", type="event-notification", result="accepted") == 7


# ------------------------------------------------------------------------------------------------ backlog batches


def commit_alone(committer: GroupCommitter, name: str, events: list[ResourceEvent]) -> None:
    committer.commit(lambda pipe: pipe.hset(f"{PREFIX}delivered", name, len(events)), events)


def shapes(queue: rq.Queue) -> list[tuple[str, list[str]]]:
    """Each queued job's function and the resource ids of its events, in queue order."""
    out = []
    for job in queue.jobs:
        if job.func_name == PROCESS_BACKLOG_BATCH:
            dicts = backlog_events(queue, job.args[0])  # type: ignore[arg-type]
        elif job.func_name == PROCESS_EVENTS:
            dicts = job.args[0]
        else:
            dicts = [job.args[0]]
        out.append((job.func_name, [d["resource_id"] for d in dicts]))
    return out


def test_deliveries_one_at_a_time_join_a_backlog_batch_while_it_waits_at_the_tail(
    redis_conn: redis.Redis, queue: rq.Queue
) -> None:
    committer = committer_for(redis_conn, queue, max_events=3)
    for name in ("a", "b"):  # no worker: a's job still waits when b's is pushed, so the queue has a backlog
        commit_alone(committer, name, [event(name)])
    for name in ("c", "d", "e", "f"):
        commit_alone(committer, name, [event(name)])
    assert shapes(queue) == [
        (PROCESS_EVENT, ["a"]),
        (PROCESS_EVENT, ["b"]),
        (PROCESS_BACKLOG_BATCH, ["c", "d", "e"]),  # full at 3: f opens the next one
        (PROCESS_BACKLOG_BATCH, ["f"]),
    ]
    assert len(redis_conn.hgetall(f"{PREFIX}delivered")) == 6
    assert Metrics(redis_conn, PREFIX).counter_value("events_received", source="webhook") == 6
    first_batch = queue.jobs[2]
    assert first_batch.retries_left == queue.jobs[0].retries_left and first_batch.timeout == queue.jobs[0].timeout
    assert first_batch.description == "process_backlog_batch: sub-a Patient/c and later"


def test_a_backlog_batch_a_worker_took_is_never_joined(redis_conn: redis.Redis, queue: rq.Queue) -> None:
    committer = committer_for(redis_conn, queue)
    for name in ("a", "b", "c"):
        commit_alone(committer, name, [event(name)])
    assert [func for func, _ in shapes(queue)] == [PROCESS_EVENT, PROCESS_EVENT, PROCESS_BACKLOG_BATCH]
    batch_id = queue.jobs[2].id
    for _ in range(3):  # the workers take everything, the batch last
        redis_conn.lpop(queue.key)
    for name in ("d", "e", "f"):  # the queue is empty: jobs of their own, until e's finds d's waiting
        commit_alone(committer, name, [event(name)])
    assert shapes(queue) == [(PROCESS_EVENT, ["d"]), (PROCESS_EVENT, ["e"]), (PROCESS_BACKLOG_BATCH, ["f"])]
    assert queue.jobs[2].id != batch_id
    assert [d["resource_id"] for d in backlog_events(queue, batch_id)] == ["c"]  # what the worker read is final


def test_a_redis_that_forgot_the_backlog_script_is_sent_it_again(redis_conn: redis.Redis, queue: rq.Queue) -> None:
    """EVALSHA answers NOSCRIPT after a restart or SCRIPT FLUSH: nothing ran, the body goes and the batch is joined."""
    committer = committer_for(redis_conn, queue)
    for name in ("a", "b", "c"):
        commit_alone(committer, name, [event(name)])
    redis_conn.script_flush()
    commit_alone(committer, "d", [event("d")])
    assert shapes(queue)[-1] == (PROCESS_BACKLOG_BATCH, ["c", "d"])
    assert len(redis_conn.hgetall(f"{PREFIX}delivered")) == 4


def test_a_backlog_commit_redis_refuses_writes_nothing(redis_conn: redis.Redis, queue: rq.Queue) -> None:
    """The script is all or nothing: over maxmemory (noeviction) the commit fails whole, and the sender's
    retry (after our 503) is the only copy that lands."""
    committer = committer_for(redis_conn, queue)
    for name in ("a", "b", "c"):
        commit_alone(committer, name, [event(name)])
    batch_id = queue.jobs[2].id
    before = {key: redis_conn.dump(key) for key in redis_conn.keys("*")}
    policy = redis_conn.config_get("maxmemory-policy")["maxmemory-policy"]
    redis_conn.config_set("maxmemory-policy", "noeviction")
    redis_conn.config_set("maxmemory", 1)  # below what it already holds
    try:
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            commit_alone(committer, "d", [event("d")])
    finally:  # the suite's Redis server is shared by the session
        redis_conn.config_set("maxmemory", 0)
        redis_conn.config_set("maxmemory-policy", policy)
    assert {key: redis_conn.dump(key) for key in redis_conn.keys("*")} == before
    commit_alone(committer, "d", [event("d")])
    assert [d["resource_id"] for d in backlog_events(queue, batch_id)] == ["c", "d"]


def test_a_backlog_batch_is_processed_once_each_and_its_list_goes(rt: runtime.Runtime) -> None:
    committer = committer_for(rt.redis, rt.queue)
    for number, name in enumerate(("a", "b", "c", "d", "c"), start=1):  # the second c: a duplicate
        commit_alone(committer, f"{name}{number}", [event(name, 3 if name == "c" else number)])
    batch = rt.queue.jobs[2]
    assert batch.func_name == PROCESS_BACKLOG_BATCH
    drain(rt)

    assert dispatched(rt) == ["a", "b", "c", "d"]
    m = rt.metrics
    assert (m.counter_value("events", result="processed"), m.counter_value("events", result="deduplicated")) == (4, 1)
    assert m.counter_value("events_received", source="webhook") == 5
    assert rt.queue.failed_job_registry.count == 0
    assert not rt.redis.exists(backlog_events_key(PREFIX, batch.id))  # no payload (PHI) left behind


def test_a_failed_backlog_batch_retries_then_replays_only_its_unfinished_events(rt: runtime.Runtime) -> None:
    rt.dispatcher.failing = {"bad"}  # type: ignore[attr-defined]
    committer = committer_for(rt.redis, rt.queue)
    for name in ("a", "b", "c", "bad", "d"):
        commit_alone(committer, name, [ResourceEvent.from_dict(dict(event(name).to_dict(), verify=True))])
    batch_id = rt.queue.jobs[2].id
    rt.redis.hset(f"rq:job:{batch_id}", mapping={"retries_left": 1, "retry_intervals": "[0]"})
    drain(rt)

    assert rt.queue.failed_job_registry.get_job_ids() == [batch_id]
    assert dispatched(rt) == ["a", "b", "c", "d"]
    assert rt.fetcher.reads == {"a": 1, "b": 1, "c": 1, "bad": 2, "d": 1}  # type: ignore[attr-defined]
    assert rt.redis.exists(backlog_events_key(PREFIX, batch_id))  # kept for replay

    rt.dispatcher.failing = set()  # type: ignore[attr-defined]
    (replayed,) = replay_failed(rt)
    assert replayed["job_id"] == batch_id
    (new,) = rt.queue.jobs
    assert new.func_name == PROCESS_EVENT and new.args[0]["resource_id"] == "bad"
    assert not rt.redis.exists(backlog_events_key(PREFIX, batch_id))
    drain(rt)
    assert dispatched(rt) == ["a", "b", "bad", "c", "d"]
    assert rt.metrics.counter_value("events", result="processed") == 5
