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

Targets: p50 <= 50 ms, p99 <= 250 ms.
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


class TaskPoller:
    """Records the first time a Task for each patient is visible (search by _lastUpdated, paged)."""

    def __init__(self, fhir_base: str, interval: float = 0.01) -> None:
        self.fhir_base = fhir_base
        self.interval = interval
        self.first_seen: dict[str, float] = {}  # "Patient/x" -> wall time
        self.server_time: dict[str, str] = {}  # "Patient/x" -> Task.meta.lastUpdated
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
                if patient and patient not in self.first_seen:
                    self.first_seen[patient] = now
                    self.server_time[patient] = updated
                self._watermark = max(self._watermark, updated)
            time.sleep(self.interval)

    def wait_for(self, patients: set[str], timeout: float) -> set[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not patients <= self.first_seen.keys():
            time.sleep(0.05)
        return patients - self.first_seen.keys()


def latencies(sent: dict[str, float], seen: dict[str, float]) -> list[float]:
    return [seen[p] - t for p, t in sent.items() if p in seen]


def figures(values: list[float], missing: int) -> dict[str, Any]:
    return {
        "events": len(values) + missing,
        "missing": missing,
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

    _loadgen.paced(stack.fhir_base, make, rate=rate, seconds=len(patients) / rate, threads=4, label="baseline")
    missing = poller.wait_for(set(sent), timeout=30)
    return figures(latencies(sent, poller.first_seen), len(missing))


def service_phase(stack: _stack.Stack, poller: TaskPoller, patients: list[dict[str, Any]], rate: float) -> dict:
    sent: dict[str, float] = {}
    bodies = [stack.notify_body(p, i + 1) for i, p in enumerate(patients)]
    headers = stack.headers()

    def make(i: int) -> _loadgen.Request:
        sent[f"Patient/{patients[i]['id']}"] = time.time()
        return _loadgen.Request("POST", "/fhir/notify", bodies[i], headers)

    load = _loadgen.paced(stack.serve_url, make, rate=rate, seconds=len(patients) / rate, threads=8, label="notify")
    print(load.line())
    missing = poller.wait_for(set(sent), timeout=120)
    result = figures(latencies(sent, poller.first_seen), len(missing))
    result["webhook"] = load.summary()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Notification -> Task visible latency")
    parser.add_argument("--rate", type=float, default=100.0, help="events/s")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--baseline-seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--worker-class", default="simple", choices=["simple", "fork"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    n_service, n_base = int(args.rate * args.seconds), int(args.rate * args.baseline_seconds)
    with _procs.private_redis() as redis_url, tempfile.TemporaryDirectory() as tmpdir:
        stack = _stack.Stack(Path(tmpdir), redis_url, log_level="WARNING")
        try:
            stack.start_sandbox()
            stack.start_serve()
            for w in range(args.workers):
                stack.start_worker(str(w), args.worker_class)
            print(f"creating {n_base + n_service} patients in the sandbox ...", file=sys.stderr)
            patients = stack.create_patients(n_base + n_service)
            poller = TaskPoller(stack.fhir_base)
            poller.start()
            base = baseline_phase(stack, poller, patients[:n_base], args.rate)
            svc = service_phase(stack, poller, patients[n_base:], args.rate)
            poller.stop()
        finally:
            stack.stop()
    report = {"machine": _procs.machine(), "rate": args.rate, "workers": args.workers, "class": args.worker_class}
    report.update(baseline=base, service=svc)
    print(f"machine: {report['machine']}; {args.rate:g} ev/s; {args.workers} x {args.worker_class} worker")
    print(f"baseline (direct store write) p50 {base['p50_ms']} ms  p99 {base['p99_ms']} ms  max {base['max_ms']} ms")
    print(
        f"service  (notify -> Task)     p50 {svc['p50_ms']} ms  p99 {svc['p99_ms']} ms  max {svc['max_ms']} ms  "
        f"missing {svc['missing']}/{svc['events']}"
    )
    if base["p50_ms"]:
        print(
            f"ratio to baseline: p50 {svc['p50_ms'] / base['p50_ms']:.2f}x  p99 {svc['p99_ms'] / base['p99_ms']:.2f}x"
        )
    print(
        f"targets: p50 <= 50 ms {'met' if svc['p50_ms'] <= 50 else 'MISSED'}; "
        f"p99 <= 250 ms {'met' if svc['p99_ms'] <= 250 else 'MISSED'}"
    )
    if args.json:
        print(json.dumps(report, indent=2))
    return 0 if svc["missing"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
