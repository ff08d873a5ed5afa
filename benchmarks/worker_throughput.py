"""Worker throughput: events/s through dedupe → mapping → plan → write to the sandbox store.

For each configuration (worker class simple | fork, 1 | 2 processes): ``--events`` notifications
are queued through ``serve`` with no worker running, then the workers start in ``--burst`` mode and
drain the queue. Time runs from the first job leaving the queue to the last worker exiting.
``--senders 8`` posts them from 8 concurrent clients, so serve's group commit queues several
deliveries per job (``process_events``), as a burst from the EHR would. With one sender the
deliveries after the first two join backlog batches (nothing drains the queue while they arrive).
CPU per event: CPU in the steady-state window over the events the workers counted done in it.

Baseline in the same run, same worker command and class: the same number of no-op rq jobs
(``operator.truth``) — rq's own per-job cost, so the ratio shows what our job adds.

    .venv/bin/python -m benchmarks.worker_throughput                 # 500 events per configuration
    .venv/bin/python -m benchmarks.worker_throughput --events 2000 --configs simple:1 simple:2 fork:1 fork:2
    .venv/bin/python -m benchmarks.worker_throughput --events 800 --configs simple:1 --senders 8
    .venv/bin/python -m benchmarks.worker_throughput --events 1000 --configs simple:1 --profile hapi

``--profile hapi`` runs the sandbox with HAPI FHIR's behaviours (referential integrity, transaction answers
without resources unless asked for); each row also says how many FHIR requests the workers sent per event.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks import _payloads, _procs, _stack


def _cpu_sample(stack: _stack.Stack) -> tuple[float, float, float, float]:
    """CPU seconds so far of the workers, the sandbox store and redis-server (its own ``INFO cpu``), and the
    events done so far."""
    workers = sum(_procs.cpu_seconds(p.pid) for p in stack.workers.values())
    sandbox = _procs.cpu_seconds(stack.sandbox.pid) if stack.sandbox is not None else float("nan")
    info = stack.redis.info("cpu")
    return workers, sandbox, float(info["used_cpu_user"]) + float(info["used_cpu_sys"]), stack.events_done()


def drain(
    stack: _stack.Stack, worker_class: str, processes: int, expected: int, timeout: float
) -> tuple[float, dict[str, float] | None]:
    """Start burst workers; seconds from the first dequeue to the last worker's exit, and the CPU ms in
    steady state per event done in the window (per job when the jobs count no events: no-op jobs).

    CPU (user + system of the worker processes and their reaped children, from ``/proc/<pid>/stat``,
    no profiler) is sampled when 10 % and when 90 % of the jobs have left the queue, so worker start-up
    and shut-down are not counted and the queue still holds >= 10 % of the jobs (under load). Events are
    those the workers counted done between the two samples: exact however many events a job carries.
    """
    for w in range(processes):
        stack.start_worker(f"{worker_class}-{w}", worker_class, burst=True)
    deadline = time.monotonic() + timeout
    first = None
    lo, hi = expected - expected // 10, expected // 10  # queue lengths at which CPU is sampled
    marks: list[tuple[int, tuple[float, float, float, float]]] = []
    while time.monotonic() < deadline:
        count = stack.queue_count()
        if first is None and count < expected:
            first = time.perf_counter()
        if (not marks and count <= lo) or (len(marks) == 1 and count <= hi):
            try:
                marks.append((count, _cpu_sample(stack)))
            except OSError:  # a worker already gone: no steady-state sample
                marks.append((count, (float("nan"),) * 4))
        if not any(p.alive() for p in stack.workers.values()):
            break
        time.sleep(0.005)
    else:
        raise RuntimeError(f"workers did not drain {expected} jobs in {timeout}s")
    end = time.perf_counter()
    for name in list(stack.workers):
        if stack.workers[name].proc.returncode not in (0, None):
            raise RuntimeError(f"worker {name} failed:\n{stack.workers[name].output()[-3000:]}")
        stack.workers[name].stop()
        del stack.workers[name]
    cpu_ms = None
    if len(marks) == 2 and marks[0][0] > marks[1][0]:
        done = marks[1][1][3] - marks[0][1][3]
        units = done if done > 0 else marks[0][0] - marks[1][0]
        cpu_ms = {
            k: (b - a) * 1000 / units
            for k, a, b in zip(("worker", "sandbox", "redis"), *(m[1][:3] for m in marks), strict=True)
        }
    return end - (first or end), cpu_ms


def queue_events(
    stack: _stack.Stack,
    patients: list[dict[str, Any]],
    start_number: int,
    senders: int = 1,
    content: _payloads.Content = "full-resource",
) -> None:
    """POST one notification per patient to ``serve``, from ``senders`` concurrent clients (one event-number
    sequence shared by them). With several, deliveries overlap and serve's group commit queues them
    together (``process_events`` jobs), as under a burst from the EHR. ``content``: full-resource, or
    id-only (the worker reads each focus from the FHIR server)."""
    import requests

    def send(k: int) -> None:
        session = stack.session if senders == 1 else requests.Session()
        for i in range(k, len(patients), senders):
            body = stack.notify_body(patients[i], start_number + i, content)
            r = session.post(f"{stack.serve_url}/fhir/notify", data=body, headers=stack.headers(), timeout=30)
            if r.status_code >= 300:
                raise RuntimeError(f"serve answered {r.status_code}: {r.text[:500]}")

    with ThreadPoolExecutor(senders) as pool:
        list(pool.map(send, range(senders)))


def queue_noops(stack: _stack.Stack, count: int) -> None:
    from rq import Queue

    from fhir_smartflow.config import load_settings

    settings = load_settings(stack.config_path, env={})
    queue = Queue(settings.redis.queue, connection=stack.redis)
    with queue.connection.pipeline() as pipe:
        for _ in range(count):
            queue.enqueue("operator.truth", 1, pipeline=pipe)
        pipe.execute()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Worker events/s: fork vs non-fork, 1 vs 2 processes")
    parser.add_argument("--events", type=int, default=500, help="per configuration")
    parser.add_argument("--configs", nargs="+", default=["simple:1", "simple:2", "fork:1", "fork:2"])
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument(
        "--senders", type=int, default=1, help="concurrent clients posting the notifications (8: batches form)"
    )
    parser.add_argument(
        "--profile", default="lenient", help="the sandbox's server behaviours: lenient | medplum | hapi"
    )
    parser.add_argument("--content", default="full-resource", choices=["full-resource", "id-only"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = []
    with _procs.private_redis() as redis_url, tempfile.TemporaryDirectory() as tmpdir:
        stack = _stack.Stack(Path(tmpdir), redis_url, log_level="WARNING")
        try:
            stack.start_sandbox(profile=args.profile)
            stack.start_serve()
            patients = stack.create_patients(args.events * len(args.configs))
            for k, config in enumerate(args.configs):
                worker_class, processes = config.split(":")[0], int(config.split(":")[1])
                queue_noops(stack, args.events)
                noop_s, noop_cpu = drain(stack, worker_class, processes, args.events, args.timeout)
                batch = patients[k * args.events : (k + 1) * args.events]
                queue_events(stack, batch, k * args.events + 1, args.senders, args.content)
                jobs = stack.queue_count()  # fewer than the events when deliveries were committed together
                requests_before = stack.fhir_requests()
                event_s, event_cpu = drain(stack, worker_class, processes, jobs, args.timeout)
                requests_after = stack.fhir_requests()
                fhir_per_event = {
                    method: round((count - requests_before.get(method, 0)) / args.events, 2)
                    for method, count in sorted(requests_after.items())
                }
                tasks = len(stack.search_all("Task"))
                row = {
                    "worker_class": worker_class,
                    "processes": processes,
                    "senders": args.senders,
                    "jobs": jobs,
                    "events_per_s": round(args.events / event_s, 1),
                    "events_per_s_per_process": round(args.events / event_s / processes, 1),
                    "noop_jobs_per_s": round(args.events / noop_s, 1),
                    "ratio_to_noop": round(noop_s / event_s, 3),
                    "tasks_in_store": tasks,
                    "cpu_ms_per_event": {k: round(v, 3) for k, v in (event_cpu or {}).items()},
                    "cpu_ms_per_noop_job": {k: round(v, 3) for k, v in (noop_cpu or {}).items()},
                    "fhir_requests_per_event": fhir_per_event,
                }
                rows.append(row)
                print(
                    f"{worker_class:>6} x{processes}: {row['events_per_s']:>7} events/s "
                    f"({row['events_per_s_per_process']} per process) | no-op jobs {row['noop_jobs_per_s']}/s "
                    f"| ratio {row['ratio_to_noop']}x | {jobs} jobs for {args.events} events | Tasks so far {tasks}"
                    f"\n    CPU ms per event (steady state) {row['cpu_ms_per_event']}"
                    f" | per no-op job {row['cpu_ms_per_noop_job']}"
                    f"\n    FHIR requests per event {fhir_per_event}"
                )
        finally:
            stack.stop()
    print(
        f"machine: {_procs.machine()}; {args.events} events per configuration; "
        f"sandbox profile {args.profile}; {args.content} notifications"
    )
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
