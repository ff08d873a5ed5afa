"""Redis memory per pending follow-up (the budget: <= 1 KiB per pending reminder).

Schedules N realistic reminders (payload as the planner writes it) under a fresh key prefix, sums
``MEMORY USAGE <key> SAMPLES 0`` over every key the scheduler wrote, divides by N, then deletes them.
Two shapes: one reminder per patient and workflow (worst case for the index sets) and the usual
reminder + overdue check per task.

    python benchmarks/scheduled_memory.py [--redis-url redis://127.0.0.1:6379/N] [-n 10000]

Without --redis-url it claims a free DB on 127.0.0.1:6379 the way the test fixtures do, so it never
measures (or deletes) in a DB a test run is using.
"""

from __future__ import annotations

import argparse
import hashlib
import uuid
from datetime import UTC, datetime, timedelta

import redis
from rq import Queue

from fhir_smartflow.connections import Keys
from fhir_smartflow.engine.plan import Schedule
from fhir_smartflow.scheduling.clock import SystemClock
from fhir_smartflow.scheduling.scheduler import RqScheduler


def _digest(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:20]


def followup(i: int, kind: str, at: datetime) -> Schedule:
    flow, slug = "intake-forms", "send-intake-packet"
    trigger = f"patient.registered|Patient/{100000 + i}|v1"
    group = f"{flow}/{_digest(flow, 1, trigger)}"
    payload = {
        "flow_id": flow,
        "flow_version": "1",
        "action": slug,
        "action_index": 0,
        "trigger_id": trigger,
        "task_identifier": f"{flow}/{slug}/task/{_digest(flow, 1, trigger, 0, 'task')}",
        "group": group,
        "patient": f"Patient/{100000 + i}",
        "due": (at + timedelta(days=1)).isoformat(),
        "methods": ["sms", "email", "portal"],
    }
    return Schedule(
        at=at, kind=kind, identifier=f"{flow}/{slug}/{kind}/{_digest(flow, 1, trigger, 0, kind)}", payload=payload
    )


def measure(conn: redis.Redis, n: int, kinds: tuple[str, ...] = ("reminder",)) -> float:
    """Bytes of Redis memory per pending follow-up for ``n`` tasks x ``kinds``."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    keys = Keys(prefix)
    scheduler = RqScheduler(conn, keys, Queue("bench", connection=conn), SystemClock())
    at = datetime(2030, 1, 1, tzinfo=UTC)
    for i in range(n):
        for kind in kinds:
            scheduler.schedule(followup(i, kind, at + timedelta(minutes=i)))
    try:
        total = 0
        for key in conn.scan_iter(match=f"{prefix}*", count=1000):
            total += int(conn.memory_usage(key, samples=0) or 0)
        return total / (n * len(kinds))
    finally:
        for key in conn.scan_iter(match=f"{prefix}*", count=1000):
            conn.delete(key)


def _claimed_db() -> tuple[redis.Redis, str]:
    admin = redis.Redis(db=0)
    token = uuid.uuid4().hex
    for db in range(1, int(admin.config_get("databases").get("databases", 16))):
        if admin.set(f"smartflow-test-claim:{db}", token, nx=True, ex=600):
            return redis.Redis(db=db), f"smartflow-test-claim:{db}"
    raise SystemExit("no free Redis DB to measure in")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="")
    parser.add_argument("-n", type=int, default=10_000)
    args = parser.parse_args()
    conn, claim = (redis.Redis.from_url(args.redis_url), "") if args.redis_url else _claimed_db()
    try:
        one = measure(conn, args.n)
        two = measure(conn, args.n, ("reminder", "overdue"))
    finally:
        if claim:
            redis.Redis(db=0).delete(claim)
    print(f"pending follow-ups: {args.n} tasks")
    print(f"  one reminder per task:        {one:7.0f} bytes per pending follow-up")
    print(f"  reminder + overdue per task:  {two:7.0f} bytes per pending follow-up")
    print(f"  budget: 1024 bytes -> {'OK' if max(one, two) <= 1024 else 'OVER'}")


if __name__ == "__main__":
    main()
