"""The hand-written consumer: what one bench-intake event costs with no queue, no rq and no engine.

For each event (the JSON of ``ResourceEvent.to_dict()`` for a new Patient, as a worker receives it):
``json.loads`` → build the four resources a bench-intake event writes (Task, portal Communication, a
Provenance for each) with the project's own builders (``engine/resources.py``, ``engine/provenance.py``)
→ validate each with ``fhir.resources`` R4B (``engine/validation.validate_resource``, as the worker does)
→ ONE transaction Bundle of four conditional creates (``ifNoneExist`` on the business identifiers, the
Provenance targets the entries' ``urn:uuid`` fullUrls) POSTed to the sandbox with urllib3 (or
``http.client``) over one keep-alive connection → parse the answer and check four ``201``.

CPU is this process's own ``time.process_time`` (single-threaded loop, no profiler) between the 10 %
and 90 % marks of the events (imports, model building and the connection are not counted); the
sandbox's CPU from ``/proc/<pid>/stat`` over the same window.

With ``--with-worker`` the same run also drains ``--events`` notifications for other patients of the
same sandbox through ``serve`` + one ``simple`` burst worker with ``benchmarks.worker_throughput``'s
own functions (its simple:1 config: no-op rq jobs first, same steady-state window), so the worker's CPU
per event and the consumer's are taken minutes apart on the same machine.

    .venv/bin/python -m benchmarks.consumer_baseline                    # 500 events, consumer only
    .venv/bin/python -m benchmarks.consumer_baseline --events 800 --with-worker --json
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import urllib3

from benchmarks import _procs, _stack, worker_throughput
from fhir_smartflow.channels import ONLINE_WRITTEN
from fhir_smartflow.engine.provenance import build_provenance
from fhir_smartflow.engine.resources import build_communication, build_task
from fhir_smartflow.engine.validation import validate_resource
from fhir_smartflow.events import ResourceEvent
from fhir_smartflow.fhir.writeback import if_none_exist
from fhir_smartflow.instants import format_instant

SYSTEM = "urn:smartflow:bench:consumer"
FLOW, VERSION, ACTION = "bench-intake", "1", "send-intake-packet"
HEADERS = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}


def event_json(patient: dict[str, Any], number: int) -> bytes:
    """The event a worker would be handed for this Patient's creation, as JSON."""
    event = ResourceEvent(
        subscription=_procs.SUBSCRIPTION_ID,
        resource_type="Patient",
        resource_id=patient["id"],
        received_at=format_instant(datetime.now(UTC), "milliseconds"),
        event_number=number,
        version_id=(patient.get("meta") or {}).get("versionId"),
        interaction="create",
        resource=patient,
    )
    return json.dumps(event.to_dict()).encode()


def transaction(raw: bytes) -> bytes:
    """Event JSON in, the validated transaction Bundle of its four resources out (as bytes)."""
    event = json.loads(raw)
    patient = event["resource"]
    ref = f"Patient/{patient['id']}"
    version = event.get("version_id") or "1"
    now = datetime.now(UTC)
    name = (patient.get("name") or [{}])[0]
    full_name = " ".join([*name.get("given", []), name.get("family", "")]).strip()
    group = f"{FLOW}/{ref}/{version}"
    task_id = f"{group}/{ACTION}"
    task = build_task(
        identifier_system=SYSTEM,
        identifier_value=task_id,
        group=group,
        instantiates_uri=f"urn:smartflow:flow:{FLOW}:{VERSION}",
        description="Send intake packet",
        authored_on=format_instant(now, "milliseconds"),
        requester="Device/smartflow",
        for_ref=ref,
        focus=ref,
        owner=ref,
        due=format_instant(now + timedelta(days=3), "milliseconds"),
        questionnaire="http://example.org/Questionnaire/intake",
        code_text="Complete questionnaire",
    )
    comm = build_communication(
        identifier_system=SYSTEM,
        identifier_value=f"{task_id}/portal",
        method="portal",
        medium=ONLINE_WRITTEN,
        text=f"Dear {full_name}, please complete your intake form before your visit: https://portal.example.org/f/1",
        sender="Device/smartflow",
        status="completed",
        recipients=[ref],
        subject=ref,
        based_on_task=task_id,
        sent=format_instant(now, "milliseconds"),
        topic="Intake form",
    )
    items: list[tuple[dict[str, Any], str, str]] = []  # (resource, business identifier, fullUrl)
    for resource in (task, comm):
        identifier = resource["identifier"][0]["value"]
        full_url = f"urn:uuid:{uuid.uuid4()}"
        prov = build_provenance(
            {**resource, "id": "placeholder"},
            identifier_system=SYSTEM,
            identifier_value=identifier + "/provenance",
            flow_id=FLOW,
            flow_version=VERSION,
            trigger="patient.registered",
            source_reference=f"{ref}/_history/{version}",
            device_id="smartflow",
            recorded=now,
        )
        prov["target"] = [{"reference": full_url}]  # the server rewrites it to the stored Type/id
        items.append((resource, identifier, full_url))
        items.append((prov, identifier + "/provenance", f"urn:uuid:{uuid.uuid4()}"))
    bundle_entries = []
    for resource, identifier, full_url in items:
        validate_resource(resource)
        rtype = resource["resourceType"]
        bundle_entries.append(
            {
                "fullUrl": full_url,
                "resource": resource,
                "request": {"method": "POST", "url": rtype, "ifNoneExist": if_none_exist(rtype, SYSTEM, identifier)},
            }
        )
    return json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": bundle_entries}).encode()


def poster(fhir_base: str, client: str) -> tuple[Callable[[bytes], dict[str, Any]], Callable[[], None]]:
    if client == "urllib3":
        pool = urllib3.PoolManager(maxsize=1)

        def post_urllib3(body: bytes) -> dict[str, Any]:
            r = pool.request("POST", fhir_base, body=body, headers=HEADERS, timeout=30.0)
            if r.status != 200:
                raise RuntimeError(f"transaction answered {r.status}: {r.data[:500]!r}")
            return json.loads(r.data)

        return post_urllib3, pool.clear
    host, port = fhir_base.split("//", 1)[1].split("/", 1)[0].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)

    def post_http_client(body: bytes) -> dict[str, Any]:
        conn.request("POST", "/", body=body, headers=HEADERS)
        r = conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"transaction answered {r.status}: {data[:500]!r}")
        return json.loads(data)

    return post_http_client, conn.close


def consume(stack: _stack.Stack, events: list[bytes], client: str) -> dict[str, float]:
    """Run the consumer over ``events``; CPU ms per event (consumer, sandbox) between the 10 % and 90 % marks."""
    post, close = poster(stack.fhir_base, client)
    lo, hi = len(events) // 10, len(events) - len(events) // 10
    marks: dict[int, tuple[float, float, float]] = {}
    created = 0
    assert stack.sandbox is not None
    try:
        for i, raw in enumerate(events):
            if i in (lo, hi):
                marks[i] = (time.process_time(), _procs.cpu_seconds(stack.sandbox.pid), time.perf_counter())
            answer = post(transaction(raw))
            created += sum(str(e["response"]["status"]).startswith("201") for e in answer["entry"])
    finally:
        close()
    n = hi - lo
    (c0, s0, w0), (c1, s1, w1) = marks[lo], marks[hi]
    return {
        "events": len(events),
        "measured_events": n,
        "consumer_cpu_ms_per_event": round((c1 - c0) * 1000 / n, 3),
        "sandbox_cpu_ms_per_event": round((s1 - s0) * 1000 / n, 3),
        "events_per_s": round(n / (w1 - w0), 1),
        "resources_created": created,
    }


def validate_only(events: list[bytes]) -> float:
    """CPU ms per event of ``transaction()`` alone (JSON in, build + validate, JSON out): no HTTP."""
    return _procs.process_ms_each(transaction, events)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Hand-written consumer baseline (no rq) vs the worker")
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--client", choices=["urllib3", "http.client"], default="urllib3")
    parser.add_argument("--with-worker", action="store_true", help="also run worker_throughput's simple:1")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not 50 <= args.events <= 20_000:
        parser.error("--events must be 50..20000")
    report: dict[str, Any] = {"machine": _procs.machine(), "events": args.events, "client": args.client}
    with _procs.private_redis() as redis_url, tempfile.TemporaryDirectory() as tmpdir:
        stack = _stack.Stack(Path(tmpdir), redis_url, log_level="WARNING")
        try:
            stack.start_sandbox()
            if args.with_worker:
                stack.start_serve()
            patients = stack.create_patients(args.events * (2 if args.with_worker else 1))
            events = [event_json(p, i + 1) for i, p in enumerate(patients[: args.events])]
            for raw in events[:20]:  # warm up: model classes built once, as in a running worker
                transaction(raw)
            report["build_validate_ms_per_event"] = round(validate_only(events), 3)
            report["consumer"] = consume(stack, events, args.client)
            if args.with_worker:
                worker_throughput.queue_noops(stack, args.events)
                _, noop_cpu = worker_throughput.drain(stack, "simple", 1, args.events, args.timeout)
                worker_throughput.queue_events(stack, patients[args.events :], args.events + 1)
                jobs = stack.queue_count()  # fewer than the events: most deliveries join backlog batches
                seconds, cpu = worker_throughput.drain(stack, "simple", 1, jobs, args.timeout)
                report["worker_simple_1"] = {
                    "events_per_s": round(args.events / seconds, 1),
                    "cpu_ms_per_event": {k: round(v, 3) for k, v in (cpu or {}).items()},
                    "cpu_ms_per_noop_job": {k: round(v, 3) for k, v in (noop_cpu or {}).items()},
                    "tasks_in_store": len(stack.search_all("Task")),
                }
        finally:
            stack.stop()
    c = report["consumer"]
    print(f"machine: {report['machine']}; {args.events} events; client {args.client}")
    print(
        f"consumer (JSON -> build + validate 4 -> 1 transaction POST): {c['consumer_cpu_ms_per_event']} ms CPU"
        " per event"
        f" ({c['events_per_s']} events/s); of which build + validate alone {report['build_validate_ms_per_event']} ms;"
        f" sandbox {c['sandbox_cpu_ms_per_event']} ms per event; resources created {c['resources_created']}"
        f"/{4 * args.events}"
    )
    ok = c["resources_created"] == 4 * args.events
    if args.with_worker:
        w = report["worker_simple_1"]
        worker_ms = w["cpu_ms_per_event"].get("worker")
        ratio = round(worker_ms / c["consumer_cpu_ms_per_event"], 2) if worker_ms else None
        report["worker_to_consumer_ratio"] = ratio
        print(
            f"worker simple x1 (same run, same sandbox): {w['cpu_ms_per_event']} ms CPU per event "
            f"({w['events_per_s']} events/s), no-op rq job {w['cpu_ms_per_noop_job']} ms"
        )
        print(f"worker / hand-written consumer CPU per event: {ratio}x")
        ok = ok and w["tasks_in_store"] >= 2 * args.events
    if args.json:
        print(json.dumps(report, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
