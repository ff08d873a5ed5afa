"""Metrics.batch(): one round trip for a job's counters, still written when the job raises."""

from __future__ import annotations

import threading

import pytest

from fhir_smartflow.metrics import Metrics

pytestmark = pytest.mark.integration


def test_batched_counters_land_together_at_the_end(redis_conn) -> None:
    metrics = Metrics(redis_conn, "t:")
    with metrics.batch():
        metrics.inc("events", result="processed")
        metrics.inc("writes", 2, type="Task", result="created")
        metrics.observe("event_latency_seconds", 0.02)
        with metrics.batch():  # nested: joins the outer batch
            metrics.inc("events", result="processed")
        assert metrics.counter_value("events", result="processed") == 0  # not sent yet
        other = threading.Thread(target=lambda: metrics.inc("events", result="deduplicated"))
        other.start()
        other.join()
        assert metrics.counter_value("events", result="deduplicated") == 1  # other threads are not batched
    assert metrics.counter_value("events", result="processed") == 2
    assert metrics.counter_value("writes", type="Task", result="created") == 2
    assert metrics.read("event_latency_seconds")["#count"] == "1"


def test_batched_counters_are_written_when_the_block_raises(redis_conn) -> None:
    metrics = Metrics(redis_conn, "t:")
    with pytest.raises(RuntimeError), metrics.batch():
        metrics.inc("events", result="failed")
        raise RuntimeError("job failed")
    assert metrics.counter_value("events", result="failed") == 1
    metrics.inc("events", result="failed")  # after the block: immediate again
    assert metrics.counter_value("events", result="failed") == 2


def test_a_transaction_of_the_block_carries_the_batch_and_nothing_is_sent_twice(redis_conn) -> None:
    metrics = Metrics(redis_conn, "t:")
    with metrics.batch():
        metrics.inc("writes", type="Task", result="created")
        pipe = redis_conn.pipeline()
        metrics.queue_batched(pipe)
        pipe.set("t:done", "1")
        pipe.execute()
        metrics.forget_batched()
        assert metrics.counter_value("writes", type="Task", result="created") == 1  # with the transaction
        metrics.inc("events", result="processed")  # after it: sent at the end of the block
    assert metrics.counter_value("writes", type="Task", result="created") == 1
    assert metrics.counter_value("events", result="processed") == 1


def test_increments_of_one_field_go_as_one_command(redis_conn) -> None:
    metrics = Metrics(redis_conn, "t:")
    sent: list[tuple[object, ...]] = []

    class Recording:
        def hincrby(self, *args: object) -> None:
            sent.append(("HINCRBY", *args))

        def hincrbyfloat(self, *args: object) -> None:
            sent.append(("HINCRBYFLOAT", *args))

    with metrics.batch():
        metrics.inc("fhir_requests", method="POST", status="200")
        metrics.inc("fhir_requests", method="POST", status="200")
        metrics.inc("fhir_requests", method="GET", status="200")
        metrics.queue_batched(Recording())
        metrics.forget_batched()
    assert sent == [
        ("HINCRBY", "t:metric:fhir_requests", "method=POST|status=200", 2),
        ("HINCRBY", "t:metric:fhir_requests", "method=GET|status=200", 1),
    ]
    assert metrics.counter_value("fhir_requests", method="POST", status="200") == 0  # forgotten: not sent twice
