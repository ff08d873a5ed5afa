"""The full chaos run: every event acted on exactly once under duplicates, kills, a Redis crash and a flaky EHR.

Real processes: a redis-server of our own (AOF, fsync always), the sandbox FHIR store with fault
injection (10 % of writes answer 503 or 429 with Retry-After, 1 % stall 2 s), ``serve``, two workers
(SIGKILLed and restarted every few seconds), a scheduler. N patients are created in the store; their
R4 Backport notifications are delivered 3 times each, shuffled, from several threads, retried like a
FHIR server retries (on 503 / connection errors). Redis is kill -9'd once mid-run and restarted on
the same AOF. After the run settles:

- every patient has exactly one Task and one Communication, and every written resource exactly one
  Provenance (by business identifier): nothing lost, nothing written twice;
- no job is left in the failed, started or scheduled registries;
- the counters add up: events_received = events{processed} + events{deduplicated}, processed = N.

Short form N = 500 (CI, about a minute); ``--chaos-long``: N = 10,000.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests

from benchmarks._stack import Stack, patient_ref
from tests.support import fhir

if TYPE_CHECKING:
    from chaos_harness import RedisServer

# Fixtures (chaos_redis, chaos_n, repeaters) come from chaos_harness: see its docstring.
pytest_plugins = ["chaos_harness"]

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

# Fault plan for the sandbox's POST /$faults (fhir_smartflow/sandbox/faults.py). Writes only, so the
# final check can read; seeded so a failing run can be repeated.
FAULTS = {
    "status_rate": 0.10,
    "statuses": [503, 429],
    "retry_after": 1,
    "stall_rate": 0.01,
    "stall_seconds": 2.0,
    "methods": ["POST", "PUT"],
    "seed": 20261125,
}
SENDER_THREADS = 6
# Seconds between SIGKILLs, alternating between the two workers: each lives ~2 intervals, longer than a
# worker's start-up (~3-5 s of imports on a loaded 2-core machine), so they get work done between kills.
WORKER_KILL_INTERVAL = 5.0
SERVICE_CONFIG = {
    # Abandoned jobs (worker SIGKILLed mid-job) are noticed after the job timeout: keep it short.
    "redis": {"job_timeout_seconds": 15},
    # Ride out a 10 % error rate and a Redis restart without exhausting retries. Retry-After is honoured
    # up to backoff_max_seconds: kept short, or each injected fault costs the worker a full second
    # (~0.4 s per event at 4 writes per event) and the short form cannot finish in CI time.
    "fhir": {"max_retries": 10, "backoff_base_seconds": 0.05, "backoff_max_seconds": 0.25, "timeout_seconds": 5.0},
}


class Sender:
    """Delivers notification bodies like a FHIR server: retries on 503 / 429 / connection errors."""

    def __init__(self, url: str, headers: dict[str, str], give_up_after: float) -> None:
        self.url = url
        self.headers = headers
        self.give_up_after = give_up_after
        self.statuses: Counter[int | str] = Counter()
        self._local = threading.local()
        self._lock = threading.Lock()

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def deliver(self, body: bytes) -> None:
        deadline = time.monotonic() + self.give_up_after
        while True:
            try:
                r = self._session().post(self.url, data=body, headers=self.headers, timeout=10)
                status: int | str = r.status_code
            except requests.RequestException as exc:
                r, status = None, type(exc).__name__
            with self._lock:
                self.statuses[status] += 1
            if r is not None and r.status_code < 300:
                return
            if r is not None and r.status_code not in (429, 503):
                raise AssertionError(f"serve answered {r.status_code} to a valid notification: {r.text[:500]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"serve did not accept a notification within {self.give_up_after}s ({status})")
            retry_after = float(r.headers.get("Retry-After", "0.2")) if r is not None else 0.2
            time.sleep(min(retry_after, 0.5))


def registries(stack: Stack, conn: Any) -> dict[str, list[str]]:
    from rq import Queue
    from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

    from fhir_smartflow.config import load_settings

    queue = Queue(load_settings(stack.config_path, env={}).redis.queue, connection=conn)
    return {
        # Taken off the queue by a worker that has not started it yet (or was killed right then).
        "queued": [*queue.job_ids, *queue.intermediate_queue.get_job_ids()],
        "started": StartedJobRegistry(queue=queue).get_job_ids(),
        "scheduled": ScheduledJobRegistry(queue=queue).get_job_ids(),
        "failed": FailedJobRegistry(queue=queue).get_job_ids(),
    }


def settle(stack: Stack, conn: Any, cap: float, stall: float = 30.0) -> dict[str, list[str]]:
    """Wait until no job is queued, running or waiting for a retry; give up after ``stall`` seconds
    without progress (or ``cap`` in all). Dead workers are restarted on the way."""
    deadline = time.monotonic() + cap
    last, progress_at = None, time.monotonic()
    state: dict[str, list[str]] = {}
    while time.monotonic() < deadline and time.monotonic() - progress_at < stall:
        state = registries(stack, conn)
        if not (state["queued"] or state["started"] or state["scheduled"]):
            return state
        sizes = tuple(len(v) for v in state.values())
        if sizes != last:
            last, progress_at = sizes, time.monotonic()
        time.sleep(0.5)
    return state


def ours(resources: list[dict[str, Any]], system: str) -> dict[str, list[dict[str, Any]]]:
    """Resources by our business identifier value: ``identifier``, or ``meta.tag`` for Provenance
    (R4 Provenance has no identifier element; see fhir_smartflow/engine/provenance.py)."""
    by_id: dict[str, list[dict[str, Any]]] = {}
    for res in resources:
        marks = [*(res.get("identifier") or []), *((res.get("meta") or {}).get("tag") or [])]
        values = {m.get("value") or m.get("code") for m in marks if m.get("system") == system}
        for value in values - {None}:
            by_id.setdefault(value, []).append(res)
    return by_id


def duplicates(by_id: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
    return {value: len(found) for value, found in by_id.items() if len(found) != 1}


def test_every_event_acted_on_exactly_once_under_chaos(
    tmp_path: Path, chaos_redis: RedisServer, chaos_n: int, repeaters: Any
) -> None:
    from fhir_smartflow.config import load_settings
    from fhir_smartflow.metrics import Metrics

    started = time.monotonic()
    stack = Stack(tmp_path, chaos_redis.url, log_level="INFO", extra_config=SERVICE_CONFIG)
    try:
        stack.start_sandbox(faults=True)
        stack.start_serve()
        for name in ("a", "b"):
            stack.start_worker(name, "simple")
        stack.start_scheduler()
        settings = load_settings(stack.config_path, env={})
        patients = stack.create_patients(chaos_n)
        print(f"created {chaos_n} patients at {time.monotonic() - started:.1f}s")
        stack.set_faults(**FAULTS)  # fails the test if the sandbox refuses the plan

        rng = random.Random(20261125)
        deliveries = [(i, p) for i, p in enumerate(patients) for _ in range(3)]
        rng.shuffle(deliveries)
        bodies = {i: stack.notify_body(p, i + 1) for i, p in enumerate(patients)}
        sender = Sender(f"{stack.serve_url}/fhir/notify", stack.headers(), give_up_after=120)

        crashed: list[str] = []

        def kill_a_worker(k: int) -> None:
            for name, proc in list(stack.workers.items()):
                if not proc.alive():  # the worker command must survive the Redis restart by itself
                    crashed.append(f"{name}:{proc.proc.returncode}")
                    stack.restart_worker(name)
            names = sorted(stack.workers)
            stack.restart_worker(names[k % len(names)], kill=True)

        killer = repeaters(kill_a_worker, WORKER_KILL_INTERVAL, max_times=10_000, name="worker-killer")
        # One Redis crash (about 1 s down), roughly a third of the way into the sends.
        crash_after = max(2.0, chaos_n / 300)
        redis_crash = repeaters(lambda _k: chaos_redis.restart(down_seconds=1.0), crash_after, 1, name="redis")
        with ThreadPoolExecutor(SENDER_THREADS) as pool:
            list(pool.map(lambda d: sender.deliver(bodies[d[0]]), deliveries))
        redis_crash.stop()
        assert redis_crash.done == 1 and chaos_redis.starts == 2, "Redis was not restarted during the run"
        elapsed = time.monotonic() - started
        print(f"delivered at {elapsed:.1f}s: {dict(sender.statuses)}; kills {killer.done}, crashed {crashed}")
        conn = chaos_redis.client()
        # Workers keep getting killed while the queue drains: most of the work happens now.
        state = settle(stack, conn, cap=300 if chaos_n <= 500 else 7200)
        kills = killer.stop()
        assert kills >= 2 and not killer.errors, f"worker killer: {kills} kills, errors {killer.errors}"
        if killer.done:  # the last kill may have hit a job that was just requeued: drain again
            state = settle(stack, conn, cap=120)

        crashed += [f"{name}:{proc.proc.returncode}" for name, proc in stack.workers.items() if not proc.alive()]
        print(f"settled at {time.monotonic() - started:.1f}s: { {k: len(v) for k, v in state.items()} }")
        injected = fhir.fault_state(stack.fhir_base).get("counters", {})
        assert injected.get("failed", 0) > 0, f"no fault was injected, the run proves little: {injected}"
        system = settings.fhir.identifier_system
        tasks = ours(stack.search_all("Task"), system)
        comms = ours(stack.search_all("Communication"), system)
        provs = ours(stack.search_all("Provenance"), system)
        sent = {f"Patient/{p['id']}" for p in patients}

        # Exactly once, by business identifier.
        assert not duplicates(tasks), f"Tasks written more than once: {duplicates(tasks)}"
        assert not duplicates(comms), f"Communications written more than once: {duplicates(comms)}"
        assert not duplicates(provs), f"Provenances written more than once: {duplicates(provs)}"
        # Nothing lost: one Task and one (portal) Communication per patient notified.
        task_patients = Counter(patient_ref(t[0]["for"]["reference"]) for t in tasks.values())
        comm_patients = Counter(patient_ref(c[0]["subject"]["reference"]) for c in comms.values())
        assert set(task_patients) == sent, f"patients without a Task: {sorted(sent - set(task_patients))[:20]}"
        assert set(task_patients.values()) == {1}, "a patient got more than one Task"
        assert set(comm_patients) == sent and set(comm_patients.values()) == {1}
        # Every resource we wrote has exactly one Provenance.
        expected_provs = {f"{value}/provenance" for value in [*tasks, *comms]}
        assert set(provs) == expected_provs, f"Provenance mismatch: missing {len(expected_provs - set(provs))}"
        for value, found in [*tasks.items(), *comms.items()]:
            target = provs[f"{value}/provenance"][0]["target"][0]["reference"]
            assert target.startswith(f"{found[0]['resourceType']}/{found[0]['id']}"), (value, target)

        # No job stuck or failed.
        assert not state.get("failed"), f"failed jobs: {failed_reasons(conn, state['failed'])}"
        left = [*state.get("queued", []), *state.get("started", []), *state.get("scheduled", [])]
        assert not left, f"jobs left: { {k: len(v) for k, v in state.items()} } {failed_reasons(conn, left)}"

        # The counters add up across processes (they live in Redis, which survived its crash on the AOF).
        metrics = Metrics(conn, settings.redis.key_prefix)
        received = sum(int(v) for v in metrics.read("events_received").values())
        processed = metrics.counter_value("events", result="processed")
        deduplicated = metrics.counter_value("events", result="deduplicated")
        assert received >= 3 * chaos_n, f"only {received} events queued for {3 * chaos_n} accepted deliveries"
        failed = metrics.counter_value("events", result="failed")
        # Every job enqueued ends in exactly one counted outcome (fhir_smartflow/worker/jobs.py).
        assert failed == 0, f"{failed} event jobs failed for good"
        assert received == processed + deduplicated, (
            f"received {received} != processed {processed} + deduplicated {deduplicated}"
        )
        assert not crashed, f"workers exited by themselves (they must survive a Redis restart): {crashed}"
        assert processed == chaos_n
        assert 500 not in sender.statuses, f"serve answered 500: {sender.statuses}"
        print(
            f"\nchaos run N={chaos_n}: {time.monotonic() - started:.1f}s, worker kills {kills}, crashes {crashed}, "
            f"webhook statuses {dict(sender.statuses)}, received {received}, processed {processed}, "
            f"deduplicated {deduplicated}"
        )
    finally:
        stack.stop()


def failed_reasons(conn: Any, job_ids: list[str]) -> list[str]:
    """Description and last error of (up to 10 of) the given jobs, for assertion messages."""
    from rq.job import Job

    reasons = []
    for job in Job.fetch_many(job_ids[:10], connection=conn):
        if job is not None:
            result = job.latest_result()
            error = (result.exc_string if result is not None else None) or job.exc_info or ""
            reasons.append(f"{job.description}: {error.strip().splitlines()[-1:] if error.strip() else 'no error'}")
    return reasons
