"""RqScheduler + follow-up jobs on real Redis and real rq SimpleWorkers, with a Redis-stored clock.

The planner, executor and write-back target are in-memory fakes here (tests/support/fakes.py; the jobs
are under test, not them), handed to a real ServiceRuntime that the jobs find through ``runtime.install``;
tests/test_lifecycle_e2e.py runs the real ones.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from rq import Queue, SimpleWorker
from rq.job import Job

from fhir_smartflow.config import Settings
from fhir_smartflow.connections import Keys
from fhir_smartflow.engine.model import Action, Engine, Flow
from fhir_smartflow.engine.plan import Schedule, WriteResource
from fhir_smartflow.metrics import Metrics
from fhir_smartflow.scheduling.clock import RedisClock, make_clock
from fhir_smartflow.scheduling.scheduler import RqScheduler, SchedulerLock, job_id_for, run_scheduler_loop
from fhir_smartflow.worker.pipeline import EnginePipeline
from fhir_smartflow.worker.prior import RedisPriorState
from fhir_smartflow.worker.runtime import ServiceRuntime, install
from fhir_smartflow.worker.seams import LoggingGapRecovery, PassThroughFetcher
from tests.support.fakes import FakeExecutor, FakePlanner, MemoryTarget
from tests.support.net import wait_for
from tests.support.plans import SYSTEM, task

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)  # a Monday, 09:00 in New York


@dataclass(kw_only=True)
class FollowupRuntime(ServiceRuntime):
    """The runtime the jobs see, plus the fake planner whose calls the tests read."""

    planner: FakePlanner


@pytest.fixture
def rt(redis_conn) -> Iterator[FollowupRuntime]:
    keys = Keys("t:")
    clock = RedisClock(redis_conn, keys)
    clock.set(T0)
    queue = Queue("smartflow", connection=redis_conn)
    metrics = Metrics(redis_conn, "t:")
    scheduler = RqScheduler(redis_conn, keys, queue, clock, metrics)
    settings = Settings()
    target = MemoryTarget()
    planner = FakePlanner()
    executor = FakeExecutor(target, scheduler)
    engine = Engine(mappings=(), flows={}, templates={})
    pipeline = EnginePipeline(
        engine, settings, RedisPriorState(redis_conn, keys), lambda _event: target, executor, redis_conn, keys
    )
    runtime = FollowupRuntime(
        settings=settings,
        redis=redis_conn,
        keys=keys,
        metrics=metrics,
        queue=queue,
        dispatcher=pipeline,
        fetcher=PassThroughFetcher(),
        gap_recovery=LoggingGapRecovery(),
        clock=clock,
        target=target,
        executor=executor,
        scheduler=scheduler,
        context=lambda: target,
        plan_followup=planner.plan_followup,
        planner=planner,
    )
    install(runtime)
    yield runtime
    install(None)


def work(rt) -> None:
    SimpleWorker([rt.queue], connection=rt.redis).work(burst=True)


def reminder(ident: str = "intake/send/reminder/abc", at: datetime = T0 + timedelta(days=2), **extra) -> Schedule:
    payload = {
        "flow_id": "intake",
        "flow_version": "1",
        "action": "send",
        "task_identifier": "intake/send/task/abc",
        "group": "intake/g1",
        "patient": "Patient/1",
        **extra,
    }
    return Schedule(at=at, kind="reminder", identifier=ident, payload=payload)


def test_same_identifier_twice_keeps_one_job(rt):
    rt.scheduler.schedule(reminder())
    rt.scheduler.schedule(reminder())
    assert rt.scheduler.pending_count() == 1
    assert rt.metrics.counter_value("scheduled_jobs", kind="reminder", result="duplicate") == 1
    assert rt.scheduler.tick(T0 + timedelta(days=3)) == 1
    assert rt.queue.count == 1
    # Replaying the event that planned it after it fired schedules nothing new.
    rt.scheduler.schedule(reminder())
    assert rt.scheduler.pending_count() == 0


def test_fires_only_when_due_and_once_with_racing_ticks_and_two_workers(rt):
    rt.target.put(task("intake/send/task/abc"))
    rt.scheduler.schedule(reminder())
    assert rt.scheduler.tick(T0 + timedelta(days=2) - timedelta(seconds=1)) == 0
    assert rt.queue.count == 0

    due = T0 + timedelta(days=2, seconds=1)
    results: list[int] = []
    barrier = threading.Barrier(4)

    def racing_tick() -> None:
        barrier.wait()
        results.append(rt.scheduler.tick(due))

    threads = [threading.Thread(target=racing_tick) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [0, 0, 0, 1]
    # Even if the job id ended up on the queue twice, two workers run it once.
    rt.queue.push_job_id(job_id_for("intake/send/reminder/abc"))
    assert rt.queue.count == 2
    work(rt)
    work(rt)
    assert [type(a).__name__ for a in rt.executor.actions()] == ["WriteResource"]
    assert rt.metrics.counter_value("scheduled_jobs", kind="reminder", result="executed") == 1
    assert rt.metrics.counter_value("scheduled_jobs", kind="reminder", result="duplicate") == 1


def test_pending_followups_survive_a_scheduler_restart(rt):
    rt.scheduler.schedule(reminder())
    fresh = RqScheduler(rt.redis, rt.keys, Queue("smartflow", connection=rt.redis), rt.clock)
    assert fresh.pending_count() == 1
    assert fresh.get("intake/send/reminder/abc").payload["group"] == "intake/g1"
    assert fresh.tick(T0 + timedelta(days=5)) == 1


def test_cancel_by_group_and_by_patient_and_flow(rt):
    s = rt.scheduler
    s.schedule(reminder("a/1", group="g-a", patient="Patient/1", flow_id="intake"))
    s.schedule(reminder("a/2", group="g-a", patient="Patient/1", flow_id="intake"))
    s.schedule(reminder("b/1", group="g-b", patient="Patient/1", flow_id="checkin"))
    s.schedule(reminder("c/1", group="g-c", patient="Patient/2", flow_id="checkin"))
    assert s.cancel(group="g-a") == 2
    assert s.pending_count() == 2
    assert s.cancel(patient="Patient/1", flows=("intake",)) == 0
    assert s.cancel(patient="Patient/1", flows=("checkin",)) == 1
    assert s.get("c/1") is not None and s.pending_count() == 1
    assert rt.metrics.counter_value("scheduled_jobs", kind="reminder", result="cancelled") == 3
    assert s.tick(T0 + timedelta(days=30)) == 1  # only Patient/2's is left to fire
    assert s.cancel(group="g-c") == 0  # already fired: nothing pending to cancel


def test_late_fire_after_downtime_runs_and_logs_lateness(rt, caplog):
    rt.target.put(task("intake/send/task/abc"))
    rt.scheduler.schedule(reminder())
    rt.clock.set(T0 + timedelta(days=2, hours=3))  # the scheduler was down for three hours
    with caplog.at_level(logging.WARNING, logger="fhir_smartflow.scheduling.scheduler"):
        assert rt.scheduler.tick() == 1
    assert "fired 10800 s late" in caplog.text
    assert rt.metrics.counter_value("scheduled_jobs", kind="reminder", result="late") == 1
    job = Job.fetch(job_id_for("intake/send/reminder/abc"), connection=rt.redis)
    assert job.kwargs["late_seconds"] == 10800
    work(rt)
    assert len(rt.executor.plans) == 1


@pytest.mark.parametrize("status", ["completed", "cancelled", "failed", "entered-in-error", "rejected"])
def test_reminder_skips_a_closed_task(rt, status):
    rt.target.put(task("intake/send/task/abc", status=status))
    rt.scheduler.schedule(reminder())
    rt.scheduler.tick(T0 + timedelta(days=3))
    work(rt)
    assert rt.executor.plans == []
    assert rt.planner.calls == []
    assert rt.metrics.counter_value("scheduled_jobs", kind="reminder", result="skipped-closed") == 1


def test_reminder_for_open_task_plans_with_the_reread_task(rt):
    rt.target.put(task("intake/send/task/abc", status="in-progress"))
    rt.scheduler.schedule(reminder())
    rt.scheduler.tick(T0 + timedelta(days=3))
    work(rt)
    ((kind, payload, seen),) = rt.planner.calls
    assert (kind, seen["status"], payload["task_identifier"]) == ("reminder", "in-progress", "intake/send/task/abc")
    assert isinstance(rt.executor.actions()[0], WriteResource)


def test_overdue_skips_completed_and_plans_for_open(rt):
    rt.target.put(task("intake/send/task/abc", status="completed"))
    rt.scheduler.schedule(Schedule(T0, "overdue", "o/1", {"task_identifier": "intake/send/task/abc"}))
    rt.target.put(task("intake/send/task/def", status="requested"))
    rt.scheduler.schedule(Schedule(T0, "overdue", "o/2", {"task_identifier": "intake/send/task/def"}))
    rt.scheduler.tick(T0 + timedelta(minutes=1))
    work(rt)
    assert [c[0] for c in rt.planner.calls] == ["overdue"]
    assert rt.planner.calls[0][2]["identifier"][0]["value"] == "intake/send/task/def"


def _series(rt, recurring: dict, patient: str = "Patient/1") -> None:
    rt.target.put({"resourceType": "Patient", "id": patient.split("/")[1], "active": True})
    rt.scheduler.schedule(
        Schedule(
            at=T0 + timedelta(weeks=1),
            kind="recurrence",
            identifier="checkin/weekly/recurrence/1",
            payload={
                "flow_id": "checkin",
                "group": "checkin/g1",
                "patient": patient,
                "occurrence": 1,  # 0-based: occurrence 0 was the trigger itself
                "occurrence_at": (T0 + timedelta(weeks=1)).isoformat(),
                "start": T0.isoformat(),
                "recurring": recurring,
                "not_after": "patient.discharged",
            },
        )
    )


def _run_weeks(rt, weeks: int) -> None:
    for _ in range(weeks):
        rt.clock.advance(timedelta(weeks=1))
        rt.scheduler.tick()
        work(rt)


def _created_tasks(rt) -> list[str]:
    return sorted(
        a.identifier for a in rt.executor.actions() if isinstance(a, WriteResource) and a.resource_type == "Task"
    )


def test_recurrence_series_stops_at_count(rt):
    _series(rt, {"every": "weekly", "count": 4})
    _run_weeks(rt, 8)
    assert _created_tasks(rt) == ["checkin/weekly/task/1", "checkin/weekly/task/2", "checkin/weekly/task/3"]
    assert rt.scheduler.pending_count() == 0


def test_recurrence_series_stops_at_until(rt):
    _series(rt, {"every": "weekly", "until": "2026-03-23"})  # occurrences Mar 2, 9, 16, 23
    _run_weeks(rt, 6)
    assert _created_tasks(rt) == ["checkin/weekly/task/1", "checkin/weekly/task/2", "checkin/weekly/task/3"]


def test_recurrence_series_stops_at_discharge(rt):
    _series(rt, {"every": "weekly", "count": 12})
    _run_weeks(rt, 2)
    rt.target.put({"resourceType": "Patient", "id": "1", "active": False})  # discharged
    _run_weeks(rt, 3)
    assert _created_tasks(rt) == ["checkin/weekly/task/1", "checkin/weekly/task/2"]
    assert rt.metrics.counter_value("scheduled_jobs", kind="recurrence", result="ended-discharged") == 1


def test_recurrence_series_stops_when_previous_occurrence_cancelled(rt):
    _series(rt, {"every": "weekly", "count": 12})
    _run_weeks(rt, 1)
    cancelled = rt.target.find_by_identifier("Task", "checkin/weekly/task/1")
    rt.target.put({**cancelled, "status": "cancelled"})
    _run_weeks(rt, 2)
    assert _created_tasks(rt) == ["checkin/weekly/task/1"]
    assert rt.metrics.counter_value("scheduled_jobs", kind="recurrence", result="ended-task-cancelled") == 1


def test_recurrence_cancel_by_patient_and_flow_removes_the_pending_next(rt):
    _series(rt, {"every": "weekly", "count": 12})
    _run_weeks(rt, 1)
    assert rt.scheduler.cancel(patient="Patient/1", flows=("checkin",)) == 1
    _run_weeks(rt, 2)
    assert _created_tasks(rt) == ["checkin/weekly/task/1"]


def test_failed_followup_is_retried_later_then_runs(rt):
    rt.target.put(task("intake/send/task/abc"))
    rt.executor.fail_times = 1
    rt.scheduler.schedule(reminder())
    rt.scheduler.tick(T0 + timedelta(days=2))
    work(rt)
    assert rt.metrics.counter_value("scheduled_jobs", kind="reminder", result="retry") == 1
    retry = rt.scheduler.get("intake/send/reminder/abc")
    assert retry is not None and retry.payload["_attempt"] == 2
    rt.scheduler.tick(T0 + timedelta(days=2, hours=2))
    work(rt)
    assert len(rt.executor.plans) == 1


def test_deferred_delivery_is_rerun_through_the_executor(rt):
    deliver = {
        "channel": "sms",
        "recipient": "Patient/1",
        "body": "hi",
        "identifier": "intake/send/delivery/abc",
        "communication": "intake/send/communication/abc",
    }
    for n in (1, 2):  # a delivery identifier may be deferred (scheduled) again after it fired
        at = T0 + timedelta(hours=n)
        rt.scheduler.schedule(Schedule(at, "delivery", "intake/send/delivery/abc", {"deliver": deliver}))
        assert rt.scheduler.tick(at) == 1
        work(rt)
    # The executor's own payload shape: the Deliver fields flat, plus patient and trigger id.
    flat = {**deliver, "subject": "Forms", "patient": "Patient/1", "trigger_id": "patient.registered|Patient/1|v1"}
    at = T0 + timedelta(hours=3)
    rt.scheduler.schedule(Schedule(at, "delivery", "intake/send/delivery/abc@20260302T170000Z", flat))
    rt.scheduler.tick(at)
    work(rt)
    delivered = [a for a in rt.executor.actions() if type(a).__name__ == "Deliver"]
    assert [d.identifier for d in delivered] == ["intake/send/delivery/abc"] * 3
    assert delivered[2].subject == "Forms"
    last = rt.executor.plans[-1].trigger
    assert (last.patient, last.id) == ("Patient/1", "patient.registered|Patient/1|v1")


def test_single_scheduler_lock_and_standby(rt):
    first = SchedulerLock(rt.redis, rt.scheduler.skeys.lock, ttl_seconds=5, token="one")
    second = SchedulerLock(rt.redis, rt.scheduler.skeys.lock, ttl_seconds=5, token="two")
    assert first.acquire() and first.acquire()  # renewal
    assert not second.acquire()
    assert second.holder() == "one"
    first.release()
    assert second.acquire()
    rt.redis.pexpire(rt.scheduler.skeys.lock, 1)  # holder died: its TTL runs out
    rt.redis.delete(rt.scheduler.skeys.lock)
    assert first.acquire()


class CountingStop(threading.Event):
    """The loop's stop event: it waits on it once per round, so the rounds can be counted."""

    rounds = 0

    def wait(self, timeout: float | None = None) -> bool:
        self.rounds += 1
        return super().wait(timeout)


def test_scheduler_loop_ticks_while_holding_the_lock(rt):
    rt.target.put(task("intake/send/task/abc"))
    rt.scheduler.schedule(reminder(at=T0))
    standby = SchedulerLock(rt.redis, rt.scheduler.skeys.lock, token="other")
    assert standby.acquire()
    stop = CountingStop()
    loop = threading.Thread(target=run_scheduler_loop, args=(rt.scheduler, stop), kwargs={"interval_seconds": 0.02})
    loop.start()
    try:
        wait_for(lambda: stop.rounds >= 3, "three rounds of the loop", timeout=10)
        assert rt.queue.count == 0  # standing by: another scheduler holds the lock
        standby.release()
        wait_for(lambda: rt.queue.count, "the reminder enqueued once the lock is free", timeout=5)
        assert rt.queue.count == 1
    finally:
        stop.set()
        loop.join(timeout=5)
    assert rt.redis.get(rt.scheduler.skeys.lock) is None  # released on stop


def test_test_clock_only_when_explicitly_enabled(redis_conn, caplog):
    keys = Keys("t:")
    assert type(make_clock(redis_conn, keys, env={})).__name__ == "SystemClock"
    with caplog.at_level(logging.WARNING):
        clock = make_clock(redis_conn, keys, env={"SMARTFLOW_TEST_CLOCK": "1"})
    assert isinstance(clock, RedisClock) and "TEST CLOCK ENABLED" in caplog.text
    clock.set(T0)
    assert RedisClock(redis_conn, keys).now() == T0  # shared across clients / processes


def test_memory_per_pending_reminder_is_within_one_kib(redis_conn):
    from benchmarks.scheduled_memory import measure

    per_reminder = measure(redis_conn, 400)  # > 128 entries: the big-structure encodings production uses
    assert 100 < per_reminder <= 1024, per_reminder


def test_recurrence_series_stops_when_the_workflow_was_completed(rt):
    rt.engine.flows["checkin"] = Flow(
        "checkin",
        "Check-in",
        "appointment.first_kept",
        actions=(
            Action(0, "Weekly check-in", "weekly-check-in", "send-form", "urn:q"),
            Action(1, "Final review", "final-review", "staff-task", "review", completes_workflow=True),
        ),
    )
    _series(rt, {"every": "weekly", "count": 12})
    _run_weeks(rt, 1)
    done = {**task("checkin/final-review/task/x", status="completed", group="checkin/g1"), "id": "final"}
    done["instantiatesUri"] = "urn:fhir-smartflow:flow:checkin:1#final-review"
    rt.target.put(done)
    _run_weeks(rt, 2)
    assert _created_tasks(rt) == ["checkin/weekly/task/1"]
    assert rt.metrics.counter_value("scheduled_jobs", kind="recurrence", result="ended-workflow-completed") == 1


def test_recurrence_job_itself_refuses_occurrences_past_the_end(rt):
    payload = {
        "flow_id": "checkin",
        "group": "checkin/g1",
        "occurrence": 4,
        "recurring": {"every": "weekly", "count": 4},
    }
    rt.scheduler.schedule(Schedule(T0, "recurrence", "checkin/weekly/recurrence/4", payload))
    until = {**payload, "occurrence": 2, "recurring": {"every": "weekly", "until": "2026-03-01"}}
    rt.scheduler.schedule(Schedule(T0, "recurrence", "checkin/weekly/recurrence/2", until))
    rt.scheduler.tick(T0)
    work(rt)
    assert rt.planner.calls == []
    assert rt.metrics.counter_value("scheduled_jobs", kind="recurrence", result="ended-end-reached") == 2


def test_discharge_marker_ends_a_not_after_series(rt):
    _series(rt, {"every": "weekly", "count": 12})
    rt.redis.set("t:discharged:Patient/1", "1")  # Keys.discharged(patient), set by the pipeline on discharge
    _run_weeks(rt, 2)
    assert _created_tasks(rt) == []
    assert rt.metrics.counter_value("scheduled_jobs", kind="recurrence", result="ended-discharged") == 1


def test_scheduler_and_jobs_accept_a_plain_callable_clock(rt):
    """The runtime's clock may be a ``Callable[[], datetime]`` rather than a clock object."""
    rt.target.put(task("intake/send/task/abc"))
    callable_clock = rt.clock.now  # a bound method: callable, no .now attribute
    scheduler = RqScheduler(rt.redis, rt.keys, rt.queue, callable_clock)
    scheduler.schedule(reminder(at=T0))
    rt.clock = callable_clock
    assert scheduler.tick() == 1
    work(rt)
    assert len(rt.executor.plans) == 1


def test_deferred_delivery_about_a_closed_task_is_not_sent(rt):
    rt.target.put(task("intake/send/task/abc", status="completed"))
    rt.target.put(
        {
            "resourceType": "Communication",
            "id": "c1",
            "status": "in-progress",
            "identifier": [{"system": SYSTEM, "value": "intake/send/communication/abc"}],
            "basedOn": [{"type": "Task", "identifier": {"system": SYSTEM, "value": "intake/send/task/abc"}}],
        }
    )
    deliver = {
        "channel": "sms",
        "recipient": "Patient/1",
        "body": "please complete your forms",
        "identifier": "intake/send/delivery/abc",
        "communication": "intake/send/communication/abc",
    }
    rt.scheduler.schedule(Schedule(T0, "delivery", "intake/send/delivery/abc@x", deliver))
    rt.scheduler.tick(T0)
    work(rt)
    assert [a for a in rt.executor.actions() if type(a).__name__ == "Deliver"] == []
    # An open task's message goes out.
    rt.target.put(task("intake/send/task/abc", status="requested"))
    rt.scheduler.schedule(Schedule(T0, "delivery", "intake/send/delivery/abc@y", deliver))
    rt.scheduler.tick(T0)
    work(rt)
    assert [a.identifier for a in rt.executor.actions()] == ["intake/send/delivery/abc"]


def test_a_crashed_tick_is_recovered_once_and_a_live_job_is_never_queued_twice(rt):
    s = rt.scheduler
    due = T0 + timedelta(days=2)
    s.schedule(reminder("r/crash", at=due))
    s.schedule(reminder("r/live", at=due))
    assert len(s._claim(due)) == 2  # both claimed into inflight, then the "scheduler" dies before enqueueing
    # One of them was queued before the crash (the enqueue landed, the bookkeeping did not).
    rt.queue.enqueue_call("operator.truth", args=(1,), job_id=job_id_for("r/live"))
    assert s.tick(due + timedelta(seconds=10)) == 0  # still inside the inflight timeout: left alone
    later = due + timedelta(seconds=s.inflight_timeout_seconds + 5)
    assert s.tick(later) == 1  # r/crash re-fired; r/live already queued, not again
    assert sorted(rt.queue.job_ids) == sorted([job_id_for("r/live"), job_id_for("r/crash")])
    assert s.pending_count() == 0 and s.tick(later + timedelta(minutes=5)) == 0
    assert rt.metrics.counter_value("scheduled_jobs", kind="reminder", result="enqueued") == 2
