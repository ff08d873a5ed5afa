"""Scheduled work at scale: how long the scheduler takes to pick up 10,000 follow-ups that are due.

N reminders are scheduled with ``RqScheduler`` (due in the past, via an injected clock), then
``tick()`` runs until nothing is pending: every follow-up claimed and turned into an rq job. Baseline
in the same run: enqueueing N no-op rq jobs directly in pipelined batches of the same size, rq's own
floor for creating that many jobs. Memory per pending reminder: ``benchmarks/scheduled_memory.py``.

    .venv/bin/python -m benchmarks.scheduler_pickup              # 10,000 due follow-ups
    .venv/bin/python -m benchmarks.scheduler_pickup -n 50000 --batch-size 1000
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta

import redis
from rq import Queue

from benchmarks import _procs


def schedules(n: int, due: datetime) -> list:
    from fhir_smartflow.engine.plan import Schedule

    out = []
    for i in range(n):
        task = f"intake-forms/send-intake-packet/task/{i:020x}"
        payload = {
            "flow_id": "intake-forms",
            "flow_version": "1",
            "action": "send-intake-packet",
            "action_index": 0,
            "trigger_id": f"patient.registered|Patient/p{i}|v1",
            "task_identifier": task,
            "group": f"intake-forms/{i:020x}",
            "patient": f"Patient/p{i}",
            "due": (due + timedelta(days=1)).isoformat(),
        }
        out.append(Schedule(at=due, kind="reminder", identifier=f"{task}/reminder", payload=payload))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Scheduler pick-up time for N due follow-ups vs. raw rq enqueue")
    parser.add_argument("-n", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=500, help="scheduler tick batch (and baseline pipeline)")
    args = parser.parse_args(argv)
    from fhir_smartflow.connections import Keys
    from fhir_smartflow.scheduling.scheduler import RqScheduler

    now = datetime.now(UTC)
    with _procs.private_redis() as redis_url:
        conn = redis.Redis.from_url(redis_url)
        queue = Queue("bench-followups", connection=conn)
        scheduler = RqScheduler(conn, Keys("bench:"), queue, lambda: now, batch_size=args.batch_size)
        t0 = time.perf_counter()
        for action in schedules(args.n, now - timedelta(minutes=1)):
            scheduler.schedule(action)
        schedule_s = time.perf_counter() - t0
        assert scheduler.pending_count() == args.n, scheduler.pending_count()
        t0 = time.perf_counter()
        ticks = 0
        while scheduler.pending_count() and ticks < args.n:
            scheduler.tick(now)
            ticks += 1
        pickup_s = time.perf_counter() - t0
        fired = queue.count
        conn.flushdb()

        t0 = time.perf_counter()
        for start in range(0, args.n, args.batch_size):
            with conn.pipeline() as pipe:
                for _ in range(min(args.batch_size, args.n - start)):
                    queue.enqueue("operator.truth", 1, pipeline=pipe)
                pipe.execute()
        baseline_s = time.perf_counter() - t0
    print(f"machine: {_procs.machine()}")
    print(f"scheduled {args.n} follow-ups in {schedule_s:.2f}s ({args.n / schedule_s:.0f}/s)")
    print(f"picked up {fired} due follow-ups in {pickup_s:.2f}s over {ticks} ticks ({fired / pickup_s:.0f}/s)")
    print(f"baseline: {args.n} no-op rq jobs enqueued in {baseline_s:.2f}s ({args.n / baseline_s:.0f}/s)")
    print(f"ratio pick-up / baseline time: {pickup_s / baseline_s:.2f}x")
    return 0 if fired == args.n else 1


if __name__ == "__main__":
    sys.exit(main())
