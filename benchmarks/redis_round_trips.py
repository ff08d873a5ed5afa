"""Redis commands, round trips and Redis CPU per event, end to end and per process role (serve, worker).

Real processes on a private redis-server: the sandbox FHIR store, ``serve`` and one ``simple`` worker,
each role's Redis connections through its own port of a counting proxy (``benchmarks/_redis_proxy.py``,
a process of its own). Commands are parsed from the RESP the clients send; a round trip is a burst of
client bytes answered by the server (a pipeline or MULTI/EXEC sent in one go is one).

1. ``serve``: ``--events`` notifications posted one after another (no worker running); counters and
   Redis CPU (its own ``INFO cpu``) from before the first to after the last, divided by the events.
2. worker: one ``--burst`` worker drains them; counters, Redis CPU and the worker's CPU are taken when
   10 % and when 90 % of the jobs have left the queue (start-up and shut-down not counted), divided by
   the jobs dequeued in between. The queue length is read straight from Redis (not through the proxy)
   every 50 ms.

Baseline in the same run, same Redis, same proxy: rq's own cost per job: ``--events`` no-op jobs
(``operator.truth``) enqueued one ``Queue.enqueue`` at a time, then drained by a plain
``rq.SimpleWorker`` in burst mode (measured the same way), so rq's per-job round trips show apart from
ours. Also: what an idle worker sends per second (``--idle-seconds``), the background that a low event
rate divides by fewer events.

    .venv/bin/python -m benchmarks.redis_round_trips                  # 400 events
    .venv/bin/python -m benchmarks.redis_round_trips --events 1000 --json

Targets: <= 10 round trips and <= 0.25 ms Redis CPU per event end to end.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from benchmarks import _procs, _stack
from benchmarks._redis_proxy import ProxyControl, delta
from benchmarks.worker_throughput import queue_events
from tests.support.net import free_port, wait_for
from tests.support.procs import ROOT, Process

ROLES = ("serve", "worker", "rq-enqueue", "rq-worker")
TARGET_ROUND_TRIPS = 10
TARGET_REDIS_CPU_MS = 0.25

# A plain rq SimpleWorker in burst mode: the baseline's consumer (no fhir-smartflow code at all).
_RQ_WORKER = """
import sys
import redis
from rq import Queue, SimpleWorker
conn = redis.Redis.from_url(sys.argv[1])
SimpleWorker([Queue(sys.argv[2], connection=conn)], connection=conn).work(burst=True, logging_level="WARNING")
"""


class Meter:
    """One snapshot of everything counted: proxy counters, Redis CPU and commandstats, process CPU."""

    def __init__(self, direct: redis.Redis, control: ProxyControl) -> None:
        self.direct = direct
        self.control = control

    def sample(self, pids: dict[str, int]) -> dict[str, Any]:
        cpu = self.direct.info("cpu")
        stats = self.direct.info("commandstats")
        return {
            "t": time.monotonic(),
            "proxy": self.control.stats(),
            "redis_cpu_s": float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
            "redis_calls": sum(int(v["calls"]) for v in stats.values()),
            "redis_usec": {name.removeprefix("cmdstat_"): int(v["usec"]) for name, v in stats.items()},
            "cpu_s": {name: _procs.cpu_seconds(pid) for name, pid in pids.items()},
        }


def window(
    before: dict[str, Any], after: dict[str, Any], role: str, events: float, redis_idle_ms_per_s: float = 0.0
) -> dict[str, Any]:
    """Per-event figures of ``role`` between two samples; ``redis_idle_ms_per_s``: Redis's CPU when nothing
    is sent (its own timers, idle connections), taken out of the ``net`` figure pro rata of the window."""
    counts = delta(after["proxy"], before["proxy"])
    mine = counts[role]
    redis_ms = (after["redis_cpu_s"] - before["redis_cpu_s"]) * 1000
    seconds = after["t"] - before["t"]
    return {
        "seconds": round(seconds, 3),
        "redis_cpu_ms_per_event_net_of_idle": round((redis_ms - redis_idle_ms_per_s * seconds) / events, 4),
        "events": events,
        "commands_per_event": round(mine["commands"] / events, 2),
        "round_trips_per_event": round(mine["round_trips"] / events, 2),
        "connections_opened": mine["connections"],
        "redis_cpu_ms_per_event": round(redis_ms / events, 4),
        # commandstats counts every client's commands (this driver's INFO / LLEN too): a cross-check.
        "redis_calls_per_event_all_clients": round((after["redis_calls"] - before["redis_calls"]) / events, 2),
        "command_time_us_per_event_all_clients": _command_time(before, after, events),
        "process_cpu_ms_per_event": {
            name: round((after["cpu_s"][name] - before["cpu_s"][name]) * 1000 / events, 3)
            for name in after["cpu_s"]
            if name in before["cpu_s"]
        },
        "proxy_cpu_ms_per_event": round(counts["proxy_cpu_s"] * 1000 / events, 3),
        "by_command_per_event": {
            k: round(v / events, 2) for k, v in sorted(mine["by_command"].items(), key=lambda kv: -kv[1])
        },
    }


def _command_time(before: dict[str, Any], after: dict[str, Any], events: float) -> dict[str, float]:
    """Redis's time inside the commands themselves (commandstats ``usec``) per event, the largest first and
    their total: the rest of its CPU is reading, parsing and answering. EXEC is left out: its time
    includes the commands it ran, which are counted under their own names."""
    spent = {
        name: usec - before["redis_usec"].get(name, 0)
        for name, usec in after["redis_usec"].items()
        if name != "exec" and usec > before["redis_usec"].get(name, 0)
    }
    top = dict(sorted(spent.items(), key=lambda kv: -kv[1])[:8])
    return {"total": round(sum(spent.values()) / events, 1), **{k: round(v / events, 1) for k, v in top.items()}}


def drain(
    meter: Meter,
    direct: redis.Redis,
    queue_key: str,
    expected: int,
    proc: Process,
    pid_name: str,
    timeout: float,
    done: Callable[[], int] | None = None,
) -> tuple[dict[str, Any], dict[str, Any], int]:
    """Samples when 10 % and 90 % of ``expected`` jobs have left the list ``queue_key``; the jobs in between,
    or with ``done`` (events counted done so far) the events done in between: exact for batches."""
    lo, hi = expected - expected // 10, expected // 10
    marks: list[tuple[int, dict[str, Any], int]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(marks) < 2:
        count = int(direct.llen(queue_key))
        if (not marks and count <= lo) or (len(marks) == 1 and count <= hi):
            marks.append((count, meter.sample({pid_name: proc.pid}), done() if done else 0))
        if not proc.alive():
            break
        time.sleep(0.05)
    end = time.monotonic() + timeout
    while proc.alive() and time.monotonic() < end:
        time.sleep(0.05)
    if proc.proc.returncode not in (0, None) or len(marks) < 2 or marks[0][0] <= marks[1][0]:
        raise RuntimeError(f"no steady-state window (marks {[m[0] for m in marks]}):\n{proc.output()[-3000:]}")
    return marks[0][1], marks[1][1], (marks[1][2] - marks[0][2]) if done else marks[0][0] - marks[1][0]


def start_proxy(tmp: Path, upstream_port: int) -> tuple[Process, dict[str, int], ProxyControl]:
    ports = {role: free_port() for role in ROLES}
    control_port = free_port()
    args = [sys.executable, "-m", "benchmarks._redis_proxy", "--upstream-port", str(upstream_port)]
    args += [a for role, port in ports.items() for a in ("--role", f"{role}={port}")]
    args += ["--control-port", str(control_port)]
    proc = Process(args, tmp / "proxy.log", cwd=ROOT)

    def connect() -> ProxyControl | None:
        if not proc.alive():
            raise RuntimeError(f"proxy exited:\n{proc.output()}")
        try:
            return ProxyControl(control_port)
        except OSError:
            return None

    return proc, ports, wait_for(connect, "the Redis proxy", timeout=15)


def redis_cpu_without_proxy(
    stack: _stack.Stack,
    meter: Meter,
    direct: redis.Redis,
    queue_key: str,
    noop: Any,
    patients: list[dict[str, Any]],
    args: argparse.Namespace,
    idle_redis_ms_per_s: float,
) -> dict[str, float]:
    """The two drains again with the consumers connected straight to Redis: the proxy's effect on Redis
    CPU (it relays each read as one write, but may coalesce or split segments differently)."""
    from rq import Queue

    tmp = stack.tmp
    direct_noop = Queue(noop.name, connection=direct)
    for _ in range(args.events):
        direct_noop.enqueue("operator.truth", 1)
    url = stack.redis_url
    rq_proc = Process([sys.executable, "-c", _RQ_WORKER, url, noop.name], tmp / "rq-worker-direct.log", cwd=ROOT)
    a, b, jobs = drain(meter, direct, direct_noop.key, args.events, rq_proc, "rq-worker", args.timeout)
    rq_proc.stop()
    rq_row = window(a, b, "rq-worker", jobs, idle_redis_ms_per_s)
    fresh = stack.create_patients(len(patients), first_index=len(patients))
    queue_events(stack, fresh, len(patients) + 1, args.senders)
    queued_jobs = int(direct.llen(queue_key))
    worker_proc = stack.start_worker("burst-direct", "simple", burst=True, role=None)
    done = functools.partial(stack.events_done, direct)
    a, b, events = drain(meter, direct, queue_key, queued_jobs, worker_proc, "worker", args.timeout, done)
    row = window(a, b, "worker", events, idle_redis_ms_per_s)
    return {
        "worker_redis_cpu_ms_per_event": row["redis_cpu_ms_per_event"],
        "worker_redis_cpu_ms_per_event_net_of_idle": row["redis_cpu_ms_per_event_net_of_idle"],
        "rq_worker_redis_cpu_ms_per_event_net_of_idle": rq_row["redis_cpu_ms_per_event_net_of_idle"],
        "worker_cpu_ms_per_event": row["process_cpu_ms_per_event"]["worker"],
        "rq_worker_redis_cpu_ms_per_event": rq_row["redis_cpu_ms_per_event"],
        "rq_worker_cpu_ms_per_event": rq_row["process_cpu_ms_per_event"]["rq-worker"],
        "worker_commands_through_proxy": row["commands_per_event"],  # 0: nothing went through it
        "worker_command_time_us_per_event": row["command_time_us_per_event_all_clients"],
    }


def per_event_sum(*rows: dict[str, Any]) -> dict[str, float]:
    keys = (
        "commands_per_event",
        "round_trips_per_event",
        "redis_cpu_ms_per_event",
        "redis_cpu_ms_per_event_net_of_idle",
    )
    return {k: round(sum(r[k] for r in rows), 4) for k in keys}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Redis commands / round trips / Redis CPU per event, per role")
    parser.add_argument("--events", type=int, default=400)
    parser.add_argument("--idle-seconds", type=float, default=5.0, help="idle worker's background, per second")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument(
        "--senders", type=int, default=1, help="concurrent clients posting to serve (8: group commit forms batches)"
    )
    parser.add_argument(
        "--no-direct-pass", action="store_true", help="skip the second drain with no proxy (Redis CPU cross-check)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.events < 50:
        parser.error("--events must be >= 50 (the steady-state window is the middle 80 %)")
    report: dict[str, Any] = {"machine": _procs.machine(), "events": args.events}
    with _procs.private_redis() as redis_url, tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        direct = redis.Redis.from_url(redis_url)
        proxy, ports, control = start_proxy(tmp, int(direct.connection_pool.connection_kwargs["port"]))
        urls = {role: f"redis://127.0.0.1:{port}/0" for role, port in ports.items()}
        proxied = {role: urls[role] for role in ("serve", "worker")}
        stack = _stack.Stack(tmp, redis_url, log_level="WARNING", role_redis_urls=proxied)
        meter = Meter(direct, control)
        try:
            stack.start_sandbox()
            stack.start_serve()
            from rq import Queue

            from fhir_smartflow.config import load_settings

            queue_name = load_settings(stack.config_path, env={}).redis.queue
            queue_key = Queue(queue_name, connection=direct).key
            patients = stack.create_patients(args.events)
            serve_pid = {"serve": stack.serve.pid}  # type: ignore[union-attr]

            # -- Redis's own CPU with only serve connected and nothing sent ---------------------------
            a = meter.sample({})
            time.sleep(args.idle_seconds)
            idle_redis_ms_per_s = (meter.sample({})["redis_cpu_s"] - a["redis_cpu_s"]) * 1000 / args.idle_seconds
            report["redis_idle_cpu_ms_per_s"] = round(idle_redis_ms_per_s, 4)

            # -- baseline: plain rq, no-op jobs ---------------------------------------------------------
            noop = Queue("bench-noop", connection=redis.Redis.from_url(urls["rq-enqueue"]))
            noop.connection.ping()
            before = meter.sample({})
            for _ in range(args.events):
                noop.enqueue("operator.truth", 1)
            after = meter.sample({})
            rq_enqueue = window(before, after, "rq-enqueue", args.events, idle_redis_ms_per_s)
            rq_proc = Process(
                [sys.executable, "-c", _RQ_WORKER, urls["rq-worker"], "bench-noop"], tmp / "rq-worker.log", cwd=ROOT
            )
            a, b, jobs = drain(meter, direct, noop.key, args.events, rq_proc, "rq-worker", args.timeout)
            rq_worker = window(a, b, "rq-worker", jobs, idle_redis_ms_per_s)
            rq_proc.stop()

            # -- ours: serve, then one burst worker -------------------------------------------------
            before = meter.sample(serve_pid)
            queue_events(stack, patients, 1, args.senders)
            after = meter.sample(serve_pid)
            serve = window(before, after, "serve", args.events, idle_redis_ms_per_s)
            queued_jobs = int(direct.llen(queue_key))  # fewer than the events when deliveries were grouped
            worker_proc = stack.start_worker("burst", "simple", burst=True)
            done = functools.partial(stack.events_done, direct)
            a, b, events = drain(meter, direct, queue_key, queued_jobs, worker_proc, "worker", args.timeout, done)
            worker = window(a, b, "worker", events, idle_redis_ms_per_s)  # the events done in the window
            worker["jobs_for_the_events"] = queued_jobs
            tasks = len(stack.search_all("Task"))
            direct_pass: dict[str, Any] = {}
            if not args.no_direct_pass:
                direct_pass = redis_cpu_without_proxy(
                    stack, meter, direct, queue_key, noop, patients, args, idle_redis_ms_per_s
                )

            # -- an idle worker's background per second ----------------------------------------------
            idle_proc = stack.start_worker("idle", "simple")
            wait_for(lambda: direct.scard("rq:workers") >= 1, "the idle worker to register", timeout=60)
            time.sleep(2.0)  # past its start-up
            a = meter.sample({"worker": idle_proc.pid})
            time.sleep(args.idle_seconds)
            b = meter.sample({"worker": idle_proc.pid})
            idle = window(a, b, "worker", 1, idle_redis_ms_per_s)
            idle = {
                "seconds": args.idle_seconds,
                "commands_per_s": round(idle["commands_per_event"] / args.idle_seconds, 2),
                "round_trips_per_s": round(idle["round_trips_per_event"] / args.idle_seconds, 2),
                "redis_cpu_ms_per_s": round(idle["redis_cpu_ms_per_event"] / args.idle_seconds, 4),
                "redis_cpu_ms_per_s_net_of_idle": round(
                    idle["redis_cpu_ms_per_event_net_of_idle"] / args.idle_seconds, 4
                ),
                "worker_cpu_ms_per_s": round(idle["process_cpu_ms_per_event"]["worker"] / args.idle_seconds, 3),
                "by_command_per_s": {
                    k: round(v / args.idle_seconds, 2) for k, v in idle["by_command_per_event"].items()
                },
            }
        finally:
            stack.stop()
            control.close()
            proxy.stop()
    ours, base = per_event_sum(serve, worker), per_event_sum(rq_enqueue, rq_worker)
    report.update(
        serve=serve,
        worker=worker,
        end_to_end=ours,
        baseline_rq_enqueue=rq_enqueue,
        baseline_rq_simpleworker=rq_worker,
        baseline_end_to_end=base,
        idle_worker=idle,
        without_proxy=direct_pass,
        tasks_in_store=tasks,
    )
    ratio = {k: round(ours[k] / base[k], 2) if base[k] else None for k in ours}
    report["ratio_to_baseline"] = ratio
    print(f"machine: {report['machine']}; {args.events} events (bench-intake), 1 simple worker")
    print(f"{'per event':<34} {'commands':>9} {'round trips':>12} {'Redis CPU ms':>13} {'net of idle':>12}")
    for label, row in (
        ("serve (POST /fhir/notify)", serve),
        ("worker (steady state)", worker),
        ("end to end", ours),
        ("baseline: rq Queue.enqueue", rq_enqueue),
        ("baseline: rq SimpleWorker no-op", rq_worker),
        ("baseline end to end", base),
    ):
        print(
            f"{label:<34} {row['commands_per_event']:>9} {row['round_trips_per_event']:>12}"
            f" {row['redis_cpu_ms_per_event']:>13} {row['redis_cpu_ms_per_event_net_of_idle']:>12}"
        )
    print(f"  Redis CPU with nothing sent: {report['redis_idle_cpu_ms_per_s']} ms per second (its timers)")
    print(
        f"ratio to baseline: commands {ratio['commands_per_event']}x, round trips {ratio['round_trips_per_event']}x, "
        f"Redis CPU {ratio['redis_cpu_ms_per_event']}x"
    )
    for label, row in (("serve", serve), ("worker", worker), ("rq enqueue", rq_enqueue), ("rq worker", rq_worker)):
        print(f"  {label} commands per event: {row['by_command_per_event']}")
    for label, row in (("serve", serve), ("worker", worker)):
        spent = row["command_time_us_per_event_all_clients"]
        print(f"  {label}: Redis's time inside commands, µs per event (all clients): {spent}")
    print(
        f"  worker process CPU per event {worker['process_cpu_ms_per_event']} ms; rq no-op "
        f"{rq_worker['process_cpu_ms_per_event']} ms; serve {serve['process_cpu_ms_per_event']} ms"
    )
    print(
        f"  idle worker per second: {idle['commands_per_s']} commands, {idle['round_trips_per_s']} round trips, "
        f"Redis CPU {idle['redis_cpu_ms_per_s']} ms (net of idle {idle['redis_cpu_ms_per_s_net_of_idle']}), "
        f"worker CPU {idle['worker_cpu_ms_per_s']} ms: "
        f"{idle['by_command_per_s']}"
    )
    print(
        f"  proxy's own CPU (a separate process, in no figure above): serve phase {serve['proxy_cpu_ms_per_event']}"
        f" ms/event, worker {worker['proxy_cpu_ms_per_event']} ms/event; Tasks in store {tasks}/{args.events}"
    )
    if direct_pass:
        print(
            f"  without the proxy (second pass, same events re-created): Redis CPU per event, worker "
            f"{direct_pass['worker_redis_cpu_ms_per_event']} ms (net of idle "
            f"{direct_pass['worker_redis_cpu_ms_per_event_net_of_idle']}), rq SimpleWorker no-op "
            f"{direct_pass['rq_worker_redis_cpu_ms_per_event']} ms (net "
            f"{direct_pass['rq_worker_redis_cpu_ms_per_event_net_of_idle']}); "
            f"worker CPU {direct_pass['worker_cpu_ms_per_event']}"
            f" ms, rq no-op {direct_pass['rq_worker_cpu_ms_per_event']} ms"
        )
    print(
        f"targets: <= {TARGET_ROUND_TRIPS} round trips per event "
        f"{'met' if ours['round_trips_per_event'] <= TARGET_ROUND_TRIPS else 'MISSED'}"
        f" ({ours['round_trips_per_event']}); <= {TARGET_REDIS_CPU_MS} ms Redis CPU per event "
        f"{'met' if ours['redis_cpu_ms_per_event'] <= TARGET_REDIS_CPU_MS else 'MISSED'}"
        f" ({ours['redis_cpu_ms_per_event']})"
    )
    if args.json:
        print(json.dumps(report, indent=2))
    return 0 if tasks >= args.events else 1


if __name__ == "__main__":
    sys.exit(main())
