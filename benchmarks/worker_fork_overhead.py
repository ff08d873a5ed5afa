"""Per-job overhead of rq's forking Worker vs the non-forking SimpleWorker, on the real event job.

Enqueues N distinct ``process_event`` jobs (through `enqueue_events`, with the recording dispatcher:
dedupe claim + gap bookkeeping + one RPUSH per job, so nearly all time is worker overhead), drains
them with each worker class in burst mode in the same run, and prints jobs/s and the ratio.

    .venv/bin/python benchmarks/worker_fork_overhead.py [--jobs 500] [--redis-url redis://127.0.0.1:6379/0]

Uses its own queue name and key prefix (DB 0: the test suite claims and flushes DBs 1-15) and deletes them afterwards.
"""

from __future__ import annotations

import argparse
import time
import uuid

import redis
import rq

from fhir_smartflow.config import RedisConfig, Settings
from fhir_smartflow.events import ResourceEvent
from fhir_smartflow.queueing import enqueue_events
from fhir_smartflow.worker import runtime


def run(worker_class: type[rq.Worker], rt: runtime.Runtime, jobs: int, tag: str) -> float:
    events = [
        ResourceEvent(
            subscription=f"bench-{tag}",
            resource_type="Patient",
            resource_id=f"p{i}",
            received_at="2026-01-01T00:00:00+00:00",
            event_number=i + 1,
            version_id="1",
            timestamp="2026-01-01T00:00:00Z",
            resource={"resourceType": "Patient", "id": f"p{i}"},
        )
        for i in range(jobs)
    ]
    enqueue_events(rt.queue, events, metrics=rt.metrics)
    worker = worker_class([rt.queue], connection=rt.redis)
    started = time.perf_counter()
    worker.work(burst=True, logging_level="WARNING")
    elapsed = time.perf_counter() - started
    done = rt.redis.llen(f"{rt.keys.prefix}dispatched")
    rt.redis.delete(f"{rt.keys.prefix}dispatched")
    if done != jobs:
        raise SystemExit(f"{worker_class.__name__}: {done} of {jobs} jobs dispatched")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    settings = Settings(redis=RedisConfig(url=args.redis_url, key_prefix=prefix, queue=prefix + "q"))
    conn = redis.Redis.from_url(args.redis_url)
    rt = runtime.build_runtime(settings, conn)
    runtime.install(rt)  # forked work horses inherit it
    try:
        simple = run(rq.SimpleWorker, rt, args.jobs, "simple")
        fork = run(rq.Worker, rt, args.jobs, "fork")
    finally:
        keys = list(conn.scan_iter(f"{prefix}*")) + list(conn.scan_iter(f"rq:*{prefix}*"))
        if keys:
            conn.delete(*keys)
    print(f"jobs per class:       {args.jobs}")
    print(f"SimpleWorker (no fork): {args.jobs / simple:8.1f} jobs/s  ({simple / args.jobs * 1000:.2f} ms/job)")
    print(f"Worker (fork per job):  {args.jobs / fork:8.1f} jobs/s  ({fork / args.jobs * 1000:.2f} ms/job)")
    print(f"ratio simple/fork:      {fork / simple:8.1f}x")


if __name__ == "__main__":
    main()
