"""Engine cost: trigger matching + planning per event with 10, 100 and 1,000 flows loaded.

Flows are generated: a fixed handful on the trigger the events match (one send-form flow that runs,
one whose condition is false, one disabled) and the rest on triggers that cannot match (mappings on
another resource type). With flows indexed by trigger, the cost per event must stay flat as the
non-matching flows grow. Baselines in the same run: an empty loop (harness cost) and the 10-flow
engine; the report gives µs/event and the ratio to the 10-flow figure.

    .venv/bin/python -m benchmarks.engine                   # 10 / 100 / 1000 flows, 2,000 events each
    .venv/bin/python -m benchmarks.engine --flows 10 100 1000 5000 --events 5000 --json

Target: <= 1 ms/event at 1,000 flows, not growing linearly with non-matching flows.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import _payloads

MATCHING_TRIGGER = "bench.registered"
OTHER_TRIGGERS = 9  # non-matching triggers (mappings on Appointment)


def other_trigger(k: int) -> str:
    return f"bench.other_{chr(ord('a') + k)}"  # trigger names are [a-z_] only


def write_mappings(directory: Path) -> None:
    rules = [
        "[[mapping]]",
        f'trigger = "{MATCHING_TRIGGER}"',
        'resource = "Patient"',
        'interactions = ["create"]',
        'when = "active = true"',
        "patient = \"'Patient/' + id\"",
        'search = "Patient?active=true"',
        "",
    ]
    for k in range(OTHER_TRIGGERS):
        rules += [
            "[[mapping]]",
            f'trigger = "{other_trigger(k)}"',
            'resource = "Appointment"',
            f"when = \"status = 'noshow' and id = 'x{k}'\"",
            "patient = \"participant.actor.reference.where($this.startsWith('Patient/')).first()\"",
            'search = "Appointment?status=noshow"',
            "",
        ]
    (directory / "bench.toml").write_text("\n".join(rules), encoding="utf-8")


def write_templates(directory: Path) -> None:
    (directory / "bench-form.toml").write_text(
        'id = "bench-form"\nname = "Bench form"\nstatus = "enabled"\nmethods = ["portal"]\n'
        'subject = "Forms from {{ clinic.name }}"\n'
        'body = "Hi {{ patient.first_name }}, please complete {{ form.title }} by {{ task.due }}: {{ form.link }}"\n',
        encoding="utf-8",
    )


def flow_toml(flow_id: str, trigger: str, condition: str | None = None, enabled: bool = True) -> str:
    lines = [
        f'id = "{flow_id}"',
        f'name = "Bench flow {flow_id}"',
        f"enabled = {'true' if enabled else 'false'}",
        'version = "1"',
        f'trigger = "{trigger}"',
    ]
    if condition:
        lines.append(f'condition = "{condition}"')
    lines += [
        "",
        "[[actions]]",
        'name = "Send intake packet"',
        'category = "smartflow"',
        'type = "send-form"',
        f'item = "http://example.org/Questionnaire/{flow_id}"',  # distinct: duplicates are load errors
        'template = "bench-form"',
        'methods = ["portal"]',
        'due = { amount = 3, unit = "days", direction = "after", anchor = "event" }',
        'owner = "patient"',
        "",
    ]
    return "\n".join(lines)


def write_flows(directory: Path, count: int) -> None:
    matching = [
        flow_toml("bench-match-runs", MATCHING_TRIGGER),
        flow_toml("bench-match-condition-false", MATCHING_TRIGGER, condition="gender = 'unknown-gender'"),
        flow_toml("bench-match-disabled", MATCHING_TRIGGER, enabled=False),
    ]
    for i, text in enumerate(matching[: min(count, 3)]):
        (directory / f"match-{i}.toml").write_text(text, encoding="utf-8")
    for i in range(max(0, count - 3)):
        trigger = other_trigger(i % OTHER_TRIGGERS)
        (directory / f"other-{i:05d}.toml").write_text(flow_toml(f"bench-other-{i:05d}", trigger), encoding="utf-8")


def make_events(count: int) -> list[Any]:
    from fhir_smartflow.events import ResourceEvent

    now = _payloads.now_instant()
    events = []
    for i in range(count):
        pat = _payloads.patient(f"bench-{i}", i)
        events.append(
            ResourceEvent(
                subscription="bench",
                resource_type="Patient",
                resource_id=pat["id"],
                received_at=now,
                event_number=i + 1,
                version_id="1",
                interaction="create",
                resource=pat,
            )
        )
    return events


def measure(flow_count: int, events: list[Any], settings: Any) -> dict[str, Any]:
    from fhir_smartflow import flowfiles
    from fhir_smartflow.engine import planner, triggers
    from fhir_smartflow.tooling.simulate import MemoryContext

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for sub in ("mappings", "flows", "templates"):
            (tmp / sub).mkdir()
        write_mappings(tmp / "mappings")
        write_templates(tmp / "templates")
        write_flows(tmp / "flows", flow_count)
        t0 = time.perf_counter()
        engine, errors = flowfiles.load_paths(
            [str(tmp / "mappings")], [str(tmp / "flows")], [str(tmp / "templates")], settings
        )
        load_s = time.perf_counter() - t0
    if engine is None or errors:
        raise SystemExit("generated flows did not load:\n" + "\n".join(str(e) for e in errors))
    # Each event's own resources, like the worker's per-event context source (built before timing).
    contexts = [MemoryContext([e.resource]) for e in events]
    now = datetime.now(UTC)

    t0 = time.perf_counter()
    matched = [triggers.match_triggers(engine, e, None) for e in events]
    match_s = time.perf_counter() - t0
    trigger_events = [t for ts in matched for t in ts]
    if len(trigger_events) != len(events):
        raise SystemExit(f"expected one trigger per event, got {len(trigger_events)} for {len(events)} events")

    t0 = time.perf_counter()
    plans = [planner.plan(engine, t, c, settings, now) for t, c in zip(trigger_events, contexts, strict=True)]
    plan_s = time.perf_counter() - t0
    ran = sum(1 for p in plans for r in p.runs if r.ran)
    if ran != len(events):
        raise SystemExit(f"expected exactly one flow run per event, got {ran}")
    n = len(events)
    return {
        "flows": flow_count,
        "load_ms": round(load_s * 1000, 1),
        "match_us": round(match_s / n * 1e6, 1),
        "plan_us": round(plan_s / n * 1e6, 1),
        "total_us": round((match_s + plan_s) / n * 1e6, 1),
    }


def noop_us(events: list[Any]) -> float:
    def noop(_event: Any) -> None:
        return None

    t0 = time.perf_counter()
    for e in events:
        noop(e)
    return (time.perf_counter() - t0) / len(events) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Planner cost per event vs. number of flows")
    parser.add_argument("--flows", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    from fhir_smartflow.config import load_settings

    settings = load_settings(env={})
    events = make_events(args.events)
    measure(min(args.flows), events[: min(200, len(events))], settings)  # warm-up (imports, FHIRPath caches)
    rows = [measure(n, events, settings) for n in args.flows]
    base = rows[0]["total_us"]
    empty = noop_us(events)
    print(f"{args.events} events per size; empty loop {empty:.2f} µs/event (harness cost)")
    print(
        f"{'flows':>6} {'load ms':>9} {'match µs':>9} {'plan µs':>9} {'total µs':>9} {'vs ' + str(rows[0]['flows']):>8}"
    )
    for row in rows:
        row["ratio_to_smallest"] = round(row["total_us"] / base, 2) if base else None
        print(
            f"{row['flows']:>6} {row['load_ms']:>9} {row['match_us']:>9} {row['plan_us']:>9} "
            f"{row['total_us']:>9} {row['ratio_to_smallest']:>7}x"
        )
    largest = rows[-1]
    verdict = "met" if largest["total_us"] <= 1000 else "MISSED"
    print(f"target <= 1000 µs/event at {largest['flows']} flows: {verdict} ({largest['total_us']} µs)")
    if args.json:
        print(json.dumps({"empty_loop_us": round(empty, 2), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
