"""The real `fhir-smartflow scheduler` command: two processes, one active (Redis lock), a standby that
takes over, both reading a shared test clock from Redis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from rq import Queue

from fhir_smartflow.connections import Keys
from fhir_smartflow.engine.plan import Schedule
from fhir_smartflow.scheduling.clock import RedisClock
from fhir_smartflow.scheduling.scheduler import RqScheduler
from tests.support.net import wait_for
from tests.support.procs import smartflow_cmd
from tests.support.settle import scheduler_rounds

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)


def test_two_scheduler_processes_one_active_standby_takes_over(redis_url, redis_conn, processes):
    keys = Keys("t:")
    clock = RedisClock(redis_conn, keys)
    clock.set(T0)
    queue = Queue("smartflow", connection=redis_conn)
    scheduler = RqScheduler(redis_conn, keys, queue, clock)
    for n in (1, 3):
        payload = {"task_identifier": f"f/a/task/{n}", "group": "f/g", "patient": "Patient/1"}
        scheduler.schedule(Schedule(T0 + timedelta(days=n), "reminder", f"f/a/reminder/{n}", payload))
    env = {
        "SMARTFLOW_REDIS_URL": redis_url,
        "SMARTFLOW_REDIS_KEY_PREFIX": "t:",
        "SMARTFLOW_TEST_CLOCK": "1",
        "SMARTFLOW_SCHEDULER_INTERVAL_SECONDS": "0.1",
        "SMARTFLOW_SCHEDULER_LOCK_TTL_SECONDS": "1",
    }
    first = processes(smartflow_cmd("scheduler"), env=env, name="scheduler-a")
    first.wait_output("is active")
    second = processes(smartflow_cmd("scheduler"), env=env, name="scheduler-b")
    second.wait_output("stands by")
    assert "TEST CLOCK ENABLED" in first.output()

    scheduler_rounds(redis_conn, scheduler.skeys.lock, log=first.output)  # it has ticked on the clock as it is
    assert queue.count == 0  # nothing due yet by the shared clock
    clock.set(T0 + timedelta(days=2))  # the first reminder is a day overdue: catch-up
    wait_for(lambda: queue.count == 1, "first reminder enqueued", first.output, timeout=15)
    # The warning is logged just after the enqueue: wait for it rather than race it.
    first.wait_output("fired 86400 s late")

    assert first.stop() == 0  # SIGTERM: the loop stops cleanly and releases the lock
    clock.set(T0 + timedelta(days=3, minutes=1))
    wait_for(lambda: queue.count == 2, "standby took over", second.output, timeout=15)
    assert "is active" in second.output()
    assert scheduler.pending_count() == 0


def test_scheduler_once_and_status_json(redis_url, redis_conn):
    import json

    from click.testing import CliRunner

    from fhir_smartflow.cli import main

    keys = Keys("t:")
    clock = RedisClock(redis_conn, keys)
    clock.set(T0)
    scheduler = RqScheduler(redis_conn, keys, Queue("smartflow", connection=redis_conn), clock)
    scheduler.schedule(Schedule(T0 + timedelta(hours=1), "overdue", "f/a/overdue/1", {"group": "f/g"}))
    env = {"SMARTFLOW_REDIS_URL": redis_url, "SMARTFLOW_REDIS_KEY_PREFIX": "t:", "SMARTFLOW_TEST_CLOCK": "1"}
    runner = CliRunner()
    status = runner.invoke(main, ["scheduler", "--status", "--json"], env=env)
    assert status.exit_code == 0, status.output
    info = json.loads(status.output[status.output.index("{") :])
    assert info["pending"] == 1 and info["soonest"][0]["identifier"] == "f/a/overdue/1"
    assert json.loads(
        runner.invoke(main, ["scheduler", "--once", "--json"], env=env).output.strip().splitlines()[-1]
    ) == {"enqueued": 0}
    clock.set(T0 + timedelta(hours=2))
    once = runner.invoke(main, ["scheduler", "--once", "--json"], env=env)
    assert json.loads(once.output.strip().splitlines()[-1]) == {"enqueued": 1}
    assert runner.invoke(main, ["scheduler", "--once"], env={"SMARTFLOW_REDIS_URL": ""}).exit_code == 2
