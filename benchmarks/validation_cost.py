"""R4B validation cost per resource: ``validate_resource`` on the four resources a bench-intake event writes.

A plain timing loop (``time.process_time`` over ``--iterations`` rounds, no profiler) over one Task, one
portal Communication and a Provenance for each, built with the same builders the worker uses. Baseline in
the same run: ``json.loads(json.dumps(resource))`` of the same four resources (a JSON round trip, the
least any write of them costs).

    .venv/bin/python -m benchmarks.validation_cost                 # 5,000 iterations x 4 resources
    .venv/bin/python -m benchmarks.validation_cost --iterations 20000 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

from fhir_smartflow.channels import ONLINE_WRITTEN
from fhir_smartflow.engine.provenance import build_provenance
from fhir_smartflow.engine.resources import build_communication, build_task
from fhir_smartflow.engine.validation import validate_resource

SYSTEM = "urn:smartflow:bench"


def resources() -> list[dict[str, Any]]:
    task = build_task(
        identifier_system=SYSTEM,
        identifier_value="bench-intake/Patient/bench-1/1/send-intake-packet",
        group="bench-intake/Patient/bench-1/1",
        instantiates_uri="urn:smartflow:flow:bench-intake:1",
        description="Send intake packet",
        authored_on="2026-12-02T03:00:00.000Z",
        requester="Device/smartflow",
        for_ref="Patient/bench-1",
        focus="Patient/bench-1",
        owner="Patient/bench-1",
        due="2026-12-05T03:00:00.000Z",
        questionnaire="http://example.org/Questionnaire/intake",
        code_text="Complete questionnaire",
    )
    comm = build_communication(
        identifier_system=SYSTEM,
        identifier_value="bench-intake/Patient/bench-1/1/send-intake-packet/portal",
        method="portal",
        medium=ONLINE_WRITTEN,
        text="Dear Alex Example, please complete your intake form before your visit: https://portal.example.org/f/1",
        sender="Device/smartflow",
        status="completed",
        recipients=["Patient/bench-1"],
        subject="Patient/bench-1",
        based_on_task="bench-intake/Patient/bench-1/1/send-intake-packet",
        sent="2026-12-02T03:00:00.000Z",
        topic="Intake form",
    )
    recorded = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)
    provs = [
        build_provenance(
            {**res, "id": f"x{i}", "meta": {"versionId": "1"}},
            identifier_system=SYSTEM,
            identifier_value=res["identifier"][0]["value"] + "/provenance",
            flow_id="bench-intake",
            flow_version="1",
            trigger="patient.registered",
            source_reference="Patient/bench-1/_history/1",
            device_id="smartflow",
            recorded=recorded,
        )
        for i, res in enumerate((task, comm))
    ]
    return [task, comm, *provs]


def _loop(fn: Any, items: list[dict[str, Any]], iterations: int) -> float:
    start = time.process_time()
    for _ in range(iterations):
        for item in items:
            fn(item)
    return time.process_time() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    items = resources()
    for item in items:  # warm up: model classes imported and built once, as in a running worker
        validate_resource(item)
    report: dict[str, Any] = {"iterations": args.iterations, "per_resource_us": {}}
    for item in items:
        cpu = _loop(validate_resource, [item], args.iterations)
        report["per_resource_us"][item["resourceType"] + ("" if item is not items[-1] else " (2nd)")] = round(
            cpu / args.iterations * 1e6, 1
        )
    total = _loop(validate_resource, items, args.iterations)
    base = _loop(lambda r: json.loads(json.dumps(r)), items, args.iterations)
    report["validate_4_resources_ms"] = round(total / args.iterations * 1000, 4)
    report["json_round_trip_4_resources_ms"] = round(base / args.iterations * 1000, 4)
    report["ratio_to_json_round_trip"] = round(total / base, 2) if base else None
    for name, us in report["per_resource_us"].items():
        print(f"validate {name:<18} {us:>8} µs CPU per resource")
    print(
        f"validate the 4 resources of one event: {report['validate_4_resources_ms']} ms CPU | baseline JSON round trip"
        f" of the same 4: {report['json_round_trip_4_resources_ms']} ms | ratio {report['ratio_to_json_round_trip']}x"
        f" ({args.iterations} iterations, time.process_time, no profiler)"
    )
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
