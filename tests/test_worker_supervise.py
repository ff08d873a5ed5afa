"""The worker supervisor: a worker lost to a Redis outage is replaced; a stop signal ends the loop.

Unit tests of `fhir_smartflow.worker.supervise` on the real Redis (own DB). The full proof with real
processes (kill -9 of Redis, SIGKILLed workers) is tests/chaos/test_exactly_once.py.
"""

from __future__ import annotations

import threading
import time

import pytest
import redis
import rq
from rq.exceptions import StopRequested

from fhir_smartflow.connections import Keys
from fhir_smartflow.worker import supervise
from fhir_smartflow.worker.supervise import Liveness, SupervisedSimpleWorker, is_dead_worker, run_supervised
from tests.support.net import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def queue(redis_conn: redis.Redis) -> rq.Queue:
    return rq.Queue("supervise-test", connection=redis_conn)


def liveness_for(redis_conn: redis.Redis, queue: rq.Queue) -> Liveness:
    return Liveness(redis_conn, Keys("t:"), queue, threading.Event())


def test_a_worker_that_quits_on_a_redis_error_is_replaced_until_a_stop_signal(
    redis_conn: redis.Redis, queue: rq.Queue
) -> None:
    made: list[str] = []
    runs = iter(["redis-error", "quits", "stop"])
    sleeps: list[float] = []

    def make_worker(name: str) -> rq.Worker:
        made.append(name)
        return SupervisedSimpleWorker([queue], connection=redis_conn, name=name)

    def work(w: rq.Worker) -> None:
        what = next(runs)
        if what == "redis-error":
            raise redis.ConnectionError("Connection refused")
        if what == "stop":
            w.stop_signalled = True  # what SIGTERM does through rq's request_stop

    run_supervised(make_worker, liveness_for(redis_conn, queue), burst=False, work=work, sleep=sleeps.append)
    assert len(made) == 3 and len(set(made)) == 3, "each restart is a fresh worker with a new name"
    assert all(name.startswith(supervise.WORKER_NAME_PREFIX) for name in made)
    assert sleeps[:2] == [supervise.BACKOFF_START_SECONDS, supervise.BACKOFF_START_SECONDS * 2], "backoff doubles"


def test_stop_requested_while_idle_ends_the_loop(redis_conn: redis.Redis, queue: rq.Queue) -> None:
    def work(_w: rq.Worker) -> None:
        raise StopRequested()

    made: list[str] = []
    run_supervised(
        lambda name: made.append(name) or SupervisedSimpleWorker([queue], connection=redis_conn, name=name),
        liveness_for(redis_conn, queue),
        burst=False,
        work=work,
    )
    assert len(made) == 1


def test_liveness_marks_our_worker_alive_and_its_expiry_dead(redis_conn: redis.Redis, queue: rq.Queue) -> None:
    keys = Keys("t:")
    live = Liveness(redis_conn, keys, queue, threading.Event())
    live.name = supervise.new_worker_name()
    live.beat()
    assert not is_dead_worker(redis_conn, keys, live.name)
    redis_conn.delete(supervise.worker_alive_key(keys, live.name))
    assert is_dead_worker(redis_conn, keys, live.name)
    assert not is_dead_worker(redis_conn, keys, "someone-elses-rq-worker"), "only our workers are judged"


def test_a_job_stranded_between_dequeue_and_start_goes_back_to_the_queue(
    redis_conn: redis.Redis, queue: rq.Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervise, "STRANDED_SECONDS", 0.2)
    job = queue.enqueue("operator.truth", 1)
    # What a worker's dequeue does before it is SIGKILLed: the id moves to rq's intermediate list.
    redis_conn.lmove(queue.key, queue.intermediate_queue.key, "LEFT", "RIGHT")
    assert queue.job_ids == [] and queue.intermediate_queue.get_job_ids() == [job.id]
    seen: dict[str, float] = {}
    keys = Keys("t:")
    assert supervise.requeue_orphans(redis_conn, keys, queue, seen) == 0, "first sighting: maybe just slow"
    time.sleep(0.3)
    assert supervise.requeue_orphans(redis_conn, keys, queue, seen) == 1
    assert queue.job_ids == [job.id] and queue.intermediate_queue.get_job_ids() == []
    assert seen == {}


def test_a_job_whose_worker_died_while_registering_its_start_goes_back_to_the_queue(
    redis_conn: redis.Redis, queue: rq.Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rq.executions import prepare_execution

    monkeypatch.setattr(supervise, "STRANDED_SECONDS", 0.2)
    job = queue.enqueue("operator.truth", 1)
    # A worker of ours dequeues the job and registers its execution, then is SIGKILLed before rq marks
    # the job started: the job is on the intermediate list and in the StartedJobRegistry, and its
    # own record names no worker.
    dead = SupervisedSimpleWorker([queue], connection=redis_conn, name=supervise.new_worker_name())
    redis_conn.lmove(queue.key, queue.intermediate_queue.key, "LEFT", "RIGHT")
    prepare_execution(dead, job)
    assert job.id in queue.started_job_registry and queue.intermediate_queue.get_job_ids() == [job.id]
    assert job.get_status() == "queued" and not job.worker_name

    seen: dict[str, float] = {}
    keys = Keys("t:")
    supervise.requeue_orphans(redis_conn, keys, queue, seen)
    assert job.id not in queue.started_job_registry, "its worker is dead: the start it registered is void"
    time.sleep(0.3)
    supervise.requeue_orphans(redis_conn, keys, queue, seen)
    assert queue.job_ids == [job.id] and queue.intermediate_queue.get_job_ids() == []
    rq.SimpleWorker([queue], connection=redis_conn).work(burst=True)
    assert job.get_status(refresh=True) == "finished"


def test_rq_heartbeats_go_in_one_pipeline_at_most_once_a_second(redis_conn: redis.Redis, queue: rq.Queue) -> None:
    worker = SupervisedSimpleWorker([queue], connection=redis_conn, name="beat-test")
    worker.register_birth()
    try:
        worker.heartbeat()
        first = redis_conn.hget(worker.key, "last_heartbeat")
        assert first is not None and 0 < redis_conn.ttl(worker.key) <= worker.worker_ttl + 60
        worker.heartbeat()  # within the second: nothing sent
        assert redis_conn.hget(worker.key, "last_heartbeat") == first
        worker.heartbeat(5)  # an explicit timeout always goes
        assert redis_conn.hget(worker.key, "last_heartbeat") != first
        assert redis_conn.ttl(worker.key) <= 5
    finally:
        worker.register_death()


def test_the_worker_state_is_written_when_it_changes_and_not_again(redis_conn: redis.Redis, queue: rq.Queue) -> None:
    worker = SupervisedSimpleWorker([queue], connection=redis_conn, name="state-test")
    worker.register_birth()
    try:
        worker.set_state("idle")
        assert redis_conn.hget(worker.key, "state") == b"idle"
        redis_conn.hset(worker.key, "state", "changed-elsewhere")
        worker.set_state("idle")  # already idle: nothing sent
        assert redis_conn.hget(worker.key, "state") == b"changed-elsewhere"
        with redis_conn.pipeline() as pipe:  # rq's job start, pipelined: always goes
            worker.set_state("idle", pipeline=pipe)
            pipe.execute()
        assert redis_conn.hget(worker.key, "state") == b"idle"
        worker.set_state("busy")
        assert redis_conn.hget(worker.key, "state") == b"busy" and worker.get_state() == "busy"
    finally:
        worker.register_death()


def test_a_suspension_is_asked_at_most_once_a_second_and_stops_the_worker(
    redis_conn: redis.Redis, queue: rq.Queue
) -> None:
    worker = SupervisedSimpleWorker([queue], connection=redis_conn, name="suspend-test")
    worker.check_for_suspension(burst=True)  # not suspended: asked, goes on
    rq.suspension.suspend(redis_conn)
    try:
        worker.check_for_suspension(burst=True)  # within the second: not asked again, goes on

        def stops() -> bool:
            try:
                worker.check_for_suspension(burst=True)
            except StopRequested:
                return True
            return False

        wait_for(stops, "the burst worker to stop for the suspension", timeout=3.0)  # asked again after the second
    finally:
        rq.suspension.resume(redis_conn)


def test_a_job_sees_its_worker_busy_and_the_worker_is_idle_after_it(redis_conn: redis.Redis, queue: rq.Queue) -> None:
    worker = SupervisedSimpleWorker([queue], connection=redis_conn, name="busy-test")
    jobs = [queue.enqueue("tests.support.jobs.worker_state", worker.key) for _ in range(2)]
    worker.work(burst=True)
    assert [job.return_value() for job in jobs] == ["busy", "busy"]


def test_a_worker_that_cannot_start_while_redis_is_down_is_retried(redis_conn: redis.Redis, queue: rq.Queue) -> None:
    attempts: list[str] = []
    sleeps: list[float] = []

    def make_worker(name: str) -> SupervisedSimpleWorker:
        attempts.append(name)
        if len(attempts) == 1:  # what CLIENT SETNAME raises while Redis restarts
            raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        return SupervisedSimpleWorker([queue], connection=redis_conn, name=name)

    def work(w: SupervisedSimpleWorker) -> None:
        w.stop_signalled = True

    run_supervised(make_worker, liveness_for(redis_conn, queue), burst=False, work=work, sleep=sleeps.append)
    assert len(attempts) == 2, "the supervisor started a second worker after the failed start"
    assert sleeps[:1] == [supervise.BACKOFF_START_SECONDS]
