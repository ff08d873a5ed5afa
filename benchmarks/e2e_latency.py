"""End-to-end latency: notification in → Task visible in the sandbox FHIR store, at a fixed rate.

Real processes: the sandbox store, ``serve`` and worker(s) on a private redis-server started for the run. Patients
are created in the sandbox first; then R4 Backport full-resource notifications for them are posted
to ``serve`` at ``--rate`` events/s for ``--seconds`` s. A poller thread searches the store for new
Tasks and records when each patient's Task first becomes visible. Latency = visible - sent.

Baseline in the same run, same store, same poller: Tasks POSTed straight to the sandbox at the same
rate (the floor set by the store's write + the poll resolution). The report gives both and the
difference / ratio, so the service's own share is visible.

    .venv/bin/python -m benchmarks.e2e_latency                     # 100 ev/s for 30 s, 1 worker
    .venv/bin/python -m benchmarks.e2e_latency --rate 100 --seconds 30 --workers 2 --worker-class fork

The target run (100 events/s for 60 s, two workers) and the low-rate one::

    .venv/bin/python -m benchmarks.e2e_latency --rate 100 --seconds 60 --workers 2
    .venv/bin/python -m benchmarks.e2e_latency --rate 1 --seconds 60 --baseline-seconds 10

CPU per event of ``serve``, the workers, the sandbox (``/proc/<pid>/stat``) and Redis (its own ``INFO
cpu``) is taken over each phase (from the first send until the last Task is visible, or the wait ends)
and divided by that phase's events, background included: at 1 event/s that is the figure that matters.
The poller's searches cost the sandbox the same in both phases; ``--idle-seconds`` first measures each
process's CPU per second with nothing sent (the poller running), the background that a low rate divides
by few events. Lost: events whose Task never became visible; duplicated: patients with more than one.

Targets: p50 <= 50 ms, p99 <= 250 ms, nothing lost.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

from benchmarks import _loadgen, _procs, _stack

TARGET_P50_MS, TARGET_P99_MS = 50.0, 250.0


def cpu_sample(stack: _stack.Stack) -> dict[str, float]:
    """CPU seconds so far of serve, the workers (together), the sandbox and redis-server, and the time."""
    info = stack.redis.info("cpu")
    return {
        "t": time.monotonic(),
        "serve": _procs.cpu_seconds(stack.serve.pid) if stack.serve else 0.0,
        "workers": sum(_procs.cpu_seconds(p.pid) for p in stack.workers.values()),
        "sandbox": _procs.cpu_seconds(stack.sandbox.pid) if stack.sandbox else 0.0,
        "redis": float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
    }


def cpu_per(before: dict[str, float], after: dict[str, float], count: float) -> dict[str, float]:
    """CPU ms per ``count`` (events, or seconds) of each process between two samples."""
    return {k: round((after[k] - before[k]) * 1000 / count, 3) for k in before if k != "t"}


class TaskPoller:
    """Records the first time a Task for each patient is visible (search by _lastUpdated, paged)."""

    def __init__(self, fhir_base: str, interval: float = 0.01) -> None:
        self.fhir_base = fhir_base
        self.interval = interval
        self.first_seen: dict[str, float] = {}  # "Patient/x" -> wall time
        self.server_time: dict[str, str] = {}  # "Patient/x" -> Task.meta.lastUpdated
        self.tasks_per_patient: dict[str, int] = {}
        self._seen_ids: set[str] = set()
        self._watermark = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.polls = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            params = {"_count": "1000"}
            if self._watermark:
                params["_lastUpdated"] = f"ge{self._watermark}"
            try:
                bundle = session.get(f"{self.fhir_base}/Task", params=params, timeout=10).json()
            except (requests.RequestException, ValueError):
                time.sleep(self.interval)
                continue
            now = time.time()
            self.polls += 1
            for entry in bundle.get("entry", []):
                task = entry.get("resource", {})
                if task.get("id") in self._seen_ids:
                    continue
                self._seen_ids.add(task.get("id", ""))
                patient = _stack.patient_ref((task.get("for") or {}).get("reference"))
                updated = (task.get("meta") or {}).get("lastUpdated", "")
                if patient:
                    self.tasks_per_patient[patient] = self.tasks_per_patient.get(patient, 0) + 1
                if patient and patient not in self.first_seen:
                    self.first_seen[patient] = now
                    self.server_time[patient] = updated
                self._watermark = max(self._watermark, updated)
            time.sleep(self.interval)

    def wait_for(self, patients: set[str], timeout: float, stall: float = 20.0) -> set[str]:
        """Until every patient has a Task; gives up after ``stall`` s without a new one (a backlog still
        draining is not a loss) or ``timeout`` s in all. Returns the patients still without one."""
        deadline = time.monotonic() + timeout
        seen, progress = len(self.first_seen), time.monotonic()
        while time.monotonic() < deadline and not patients <= self.first_seen.keys():
            if len(self.first_seen) != seen:
                seen, progress = len(self.first_seen), time.monotonic()
            elif time.monotonic() - progress > stall:
                break
            time.sleep(0.05)
        return patients - self.first_seen.keys()


def latencies(sent: dict[str, float], seen: dict[str, float]) -> list[float]:
    return [seen[p] - t for p, t in sent.items() if p in seen]


def figures(values: list[float], missing: int) -> dict[str, Any]:
    return {
        "events": len(values) + missing,
        "missing": missing,
        "lost": missing,
        "p50_ms": round(_loadgen.percentile(values, 50) * 1000, 1),
        "p99_ms": round(_loadgen.percentile(values, 99) * 1000, 1),
        "max_ms": round(max(values, default=0.0) * 1000, 1),
    }


def baseline_phase(stack: _stack.Stack, poller: TaskPoller, patients: list[dict[str, Any]], rate: float) -> dict:
    """Tasks written straight to the store at ``rate``: store write + poll resolution."""
    sent: dict[str, float] = {}

    def make(i: int) -> _loadgen.Request:
        ref = f"Patient/{patients[i]['id']}"
        sent[ref] = time.time()
        task = {
            "resourceType": "Task",
            "status": "requested",
            "intent": "order",
            "for": {"reference": ref},
            "identifier": [{"system": "urn:bench:baseline", "value": f"baseline-{i}"}],
        }
        return _loadgen.Request("POST", "/Task", json.dumps(task).encode(), {"Content-Type": "application/fhir+json"})

    before = cpu_sample(stack)
    _loadgen.paced(stack.fhir_base, make, rate=rate, seconds=len(patients) / rate, threads=4, label="baseline")
    missing = poller.wait_for(set(sent), timeout=30)
    result = figures(latencies(sent, poller.first_seen), len(missing))
    after = cpu_sample(stack)
    result["cpu_ms_per_event"] = cpu_per(before, after, len(patients))
    result["seconds"] = round(after["t"] - before["t"], 2)
    return result


def jobs_done(stack: _stack.Stack) -> int:
    """Jobs the workers have finished so far (rq's own per-worker counts)."""
    from rq import Worker

    return sum(w.successful_job_count + w.failed_job_count for w in Worker.all(connection=stack.redis))


def service_phase(stack: _stack.Stack, poller: TaskPoller, patients: list[dict[str, Any]], rate: float) -> dict:
    sent: dict[str, float] = {}
    bodies = [stack.notify_body(p, i + 1) for i, p in enumerate(patients)]
    headers = stack.headers()

    def make(i: int) -> _loadgen.Request:
        sent[f"Patient/{patients[i]['id']}"] = time.time()
        return _loadgen.Request("POST", "/fhir/notify", bodies[i], headers)

    jobs_before = jobs_done(stack)
    before = cpu_sample(stack)
    load = _loadgen.paced(stack.serve_url, make, rate=rate, seconds=len(patients) / rate, threads=8, label="notify")
    print(load.line())
    missing = poller.wait_for(set(sent), timeout=900)
    after = cpu_sample(stack)
    result = figures(latencies(sent, poller.first_seen), len(missing))
    result["duplicated"] = sum(1 for p in sent if poller.tasks_per_patient.get(p, 0) > 1)
    result["webhook"] = load.summary()
    result["cpu_ms_per_event"] = cpu_per(before, after, len(patients))
    result["seconds"] = round(after["t"] - before["t"], 2)
    result["events_per_job"] = round(len(patients) / max(1, jobs_done(stack) - jobs_before), 2)
    return result


def net_of_idle(phase: dict[str, Any], idle: dict[str, float]) -> dict[str, float]:
    """CPU ms per event less each process's idle rate over the phase's duration (the poller, timers)."""
    events, seconds = phase["events"], phase["seconds"]
    return {k: round(v - idle.get(k, 0.0) * seconds / events, 3) for k, v in phase["cpu_ms_per_event"].items()}


def idle_phase(stack: _stack.Stack, seconds: float) -> dict[str, float]:
    """Each process's CPU ms per second with nothing sent (workers idle, the poller running)."""
    before = cpu_sample(stack)
    time.sleep(seconds)
    return cpu_per(before, cpu_sample(stack), seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Notification -> Task visible latency")
    parser.add_argument("--rate", type=float, default=100.0, help="events/s")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--baseline-seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--worker-class", default="simple", choices=["simple", "fork"])
    parser.add_argument("--poll-interval", type=float, default=0.01, help="s between the poller's Task searches")
    parser.add_argument("--idle-seconds", type=float, default=5.0, help="CPU per second with nothing sent (0: skip)")
    parser.add_argument(
        "--profile", default="lenient", help="the sandbox's server behaviours: lenient | medplum | hapi"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="TABLE.KEY=VALUE",
        help="a config value for every process (an integer VALUE is an integer), e.g. fhir.events_per_transaction=5",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    n_service, n_base = int(args.rate * args.seconds), int(args.rate * args.baseline_seconds)
    with _procs.private_redis() as redis_url, tempfile.TemporaryDirectory() as tmpdir:
        stack = _stack.Stack(Path(tmpdir), redis_url, log_level="WARNING", extra_config=_procs.config_values(args.set))
        try:
            stack.start_sandbox(profile=args.profile)
            stack.start_serve()
            for w in range(args.workers):
                stack.start_worker(str(w), args.worker_class)
            print(f"creating {n_base + n_service} patients in the sandbox ...", file=sys.stderr)
            patients = stack.create_patients(n_base + n_service)
            poller = TaskPoller(stack.fhir_base, interval=args.poll_interval)
            poller.start()
            time.sleep(2.0)  # the workers past their start-up
            idle = idle_phase(stack, args.idle_seconds) if args.idle_seconds > 0 else {}
            base = baseline_phase(stack, poller, patients[:n_base], args.rate)
            svc = service_phase(stack, poller, patients[n_base:], args.rate)
            poller.stop()
        finally:
            stack.stop()
    report = {"machine": _procs.machine(), "rate": args.rate, "workers": args.workers, "class": args.worker_class}
    if idle:
        for phase in (base, svc):
            phase["cpu_ms_per_event_net_of_idle"] = net_of_idle(phase, idle)
    report.update(idle_cpu_ms_per_s=idle, baseline=base, service=svc)
    print(f"machine: {report['machine']}; {args.rate:g} ev/s; {args.workers} x {args.worker_class} worker")
    print(f"baseline (direct store write) p50 {base['p50_ms']} ms  p99 {base['p99_ms']} ms  max {base['max_ms']} ms")
    print(
        f"service  (notify -> Task)     p50 {svc['p50_ms']} ms  p99 {svc['p99_ms']} ms  max {svc['max_ms']} ms  "
        f"lost {svc['lost']}/{svc['events']}  duplicated {svc['duplicated']}  events per job {svc['events_per_job']}"
    )
    print(f"CPU ms per event, service phase ({svc['seconds']} s): {svc['cpu_ms_per_event']}")
    print(f"CPU ms per event, baseline phase (direct writes): {base['cpu_ms_per_event']}")
    if idle:
        print(
            f"  net of idle: service {svc['cpu_ms_per_event_net_of_idle']};"
            f" baseline {base['cpu_ms_per_event_net_of_idle']}"
        )
        print(f"CPU ms per second with nothing sent ({args.idle_seconds:g} s, poller running): {idle}")
    if base["p50_ms"]:
        print(
            f"ratio to baseline: p50 {svc['p50_ms'] / base['p50_ms']:.2f}x  p99 {svc['p99_ms'] / base['p99_ms']:.2f}x"
        )
    verdicts = {
        "p50": svc["p50_ms"] <= TARGET_P50_MS,
        "p99": svc["p99_ms"] <= TARGET_P99_MS,
        "nothing_lost": svc["lost"] == 0 and svc["duplicated"] == 0,
    }
    report["targets_met"] = verdicts
    print(
        f"targets: p50 <= {TARGET_P50_MS:g} ms {'met' if verdicts['p50'] else 'MISSED'}; "
        f"p99 <= {TARGET_P99_MS:g} ms {'met' if verdicts['p99'] else 'MISSED'}; "
        f"nothing lost {'met' if verdicts['nothing_lost'] else 'MISSED'}"
    )
    if args.json:
        print(json.dumps(report, indent=2))
    return 0 if verdicts["nothing_lost"] else 1


if __name__ == "__main__":
    sys.exit(main())
