"""RunHistory on a real Redis: record, query by patient / flow / since, TTL, trim; and the CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from fhir_smartflow.connections import Keys
from fhir_smartflow.engine.plan import Deliver, FlowRun, Plan, Schedule, TriggerEvent, WriteResource
from fhir_smartflow.events import ResourceEvent
from fhir_smartflow.worker.execute import ActionError, ExecutionResult, Prewritten, WrittenResource
from fhir_smartflow.worker.history import RunHistory

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def make_plan(patient: str, flows: tuple[str, ...], appt: str = "a1") -> Plan:
    event = ResourceEvent(
        subscription="sub-1",
        resource_type="Appointment",
        resource_id=appt,
        received_at="2026-03-02T15:00:00Z",
        event_number=7,
        version_id="2",
        interaction="update",
    )
    trig = TriggerEvent(
        trigger="appointment.no_show", event=event, id=f"appointment.no_show|Appointment/{appt}|v2", patient=patient
    )
    task = {
        "resourceType": "Task",
        "id": "t1",
        "identifier": [{"system": "urn:x", "value": "f/a/task/1"}],
        "description": "Call Jane Doe at 555-0100",
    }
    runs = tuple(
        FlowRun(
            flow_id=f,
            flow_version="1",
            group=f"{f}/g",
            ran=True,
            reason="condition true",
            actions=(
                WriteResource("Task", "f/a/task/1", task, "a"),
                Deliver("sms", patient, "Hi Jane, secret body", "d1", "c1"),
                Schedule(T0 + timedelta(days=1), "reminder", "s1"),
            ),
        )
        for f in flows
    )
    return Plan(trigger=trig, runs=runs)


@pytest.fixture
def store(redis_conn: redis.Redis) -> tuple[RunHistory, Clock]:
    clock = Clock(T0)
    return RunHistory(redis_conn, Keys("t:"), max_runs=5, ttl=3600, clock=clock), clock


def test_record_holds_references_not_phi(store: tuple[RunHistory, Clock]) -> None:
    history, _ = store
    plan = make_plan("Patient/p1", ("no-show-followup",))
    result = ExecutionResult(
        written=[WrittenResource("Task", "t1", "f/a/task/1", True)],
        deliveries=[("d1", "completed")],
        scheduled=["s1"],
        errors=[ActionError("Deliver d1", "boom")],
    )
    run_id = history.record(plan, result)
    rec = history.get(run_id)
    assert rec is not None
    assert rec["trigger"]["name"] == "appointment.no_show"
    assert rec["trigger"]["focus"] == "Appointment/a1"
    assert rec["trigger"]["event_number"] == 7
    assert rec["flows"] == [
        {
            "id": "no-show-followup",
            "version": "1",
            "group": "no-show-followup/g",
            "ran": True,
            "reason": "condition true",
            "actions": 3,
        }
    ]
    assert rec["plan"] == {"write": 1, "deliver": 1, "schedule": 1, "cancel": 0, "patch": 0}
    assert rec["written"] == [{"type": "Task", "id": "t1", "identifier": "f/a/task/1", "created": True}]
    assert rec["deliveries"] == [{"channel": "sms", "status": "completed", "identifier": "d1"}]
    assert rec["scheduled"] == [{"kind": "reminder", "at": "2026-03-03T15:00:00Z", "identifier": "s1"}]
    assert rec["errors"] == ["Deliver d1: boom"]
    raw = json.dumps(rec)
    assert "Jane" not in raw and "555-0100" not in raw and "secret body" not in raw


def test_record_from_the_executors_result(store: tuple[RunHistory, Clock]) -> None:
    """The shapes the real PlanExecutor reports: WrittenResource tuples, (identifier, status) deliveries,
    Schedule identifiers, Task references, ActionErrors."""
    history, _ = store
    plan = make_plan("Patient/p1", ("f1",))
    result = ExecutionResult(
        written=[WrittenResource("Task", "t9", "f/a/task/1", True)],
        deliveries=[("d1", "completed")],
        scheduled=["s1"],
        cancelled=["Task/t3"],
        errors=[ActionError("WriteResource Task f/a/task/1", "server said no", 422)],
    )
    rec = history.get(history.record(plan, result))
    assert rec is not None
    assert rec["written"] == [{"type": "Task", "id": "t9", "identifier": "f/a/task/1", "created": True}]
    assert rec["deliveries"] == [{"channel": "sms", "status": "completed", "identifier": "d1"}]
    assert rec["scheduled"] == [{"kind": "reminder", "at": "2026-03-03T15:00:00Z", "identifier": "s1"}]
    assert rec["cancelled"] == ["Task/t3"]
    assert rec["errors"] == ["WriteResource Task f/a/task/1: server said no (HTTP 422)"]


def test_record_without_result(store: tuple[RunHistory, Clock]) -> None:
    history, _ = store
    rec = history.get(history.record(make_plan("Patient/p1", ("f1",)), None))
    assert rec is not None and rec["written"] == [] and rec["errors"] == []


def test_query_by_patient_flow_and_since(store: tuple[RunHistory, Clock]) -> None:
    history, clock = store
    history.record(make_plan("Patient/p1", ("f1",)))
    clock.at = T0 + timedelta(minutes=1)
    history.record(make_plan("Patient/p2", ("f2",)))
    clock.at = T0 + timedelta(minutes=2)
    history.record(make_plan("Patient/p1", ("f1", "f2")))

    assert [r["trigger"]["patient"] for r in history.query()] == ["Patient/p1", "Patient/p2", "Patient/p1"]
    assert len(history.query(patient="p1")) == 2
    assert len(history.query(patient="Patient/p2")) == 1
    assert len(history.query(flow="f2")) == 2
    assert len(history.query(patient="p1", flow="f2")) == 1
    assert len(history.query(since=T0 + timedelta(minutes=1))) == 2
    assert len(history.query(limit=1)) == 1
    assert history.query(patient="nobody") == []


def test_trim_to_max_runs_and_ttl(store: tuple[RunHistory, Clock], redis_conn: redis.Redis) -> None:
    history, clock = store
    ids = []
    for i in range(7):
        clock.at = T0 + timedelta(seconds=i)
        ids.append(history.record(make_plan("Patient/p1", ("f1",))))
    assert redis_conn.zcard(Keys("t:").history()) == 5
    assert [r["id"] for r in history.query()] == list(reversed(ids[2:]))
    assert redis_conn.zcard(history.patient_index("p1")) == 5
    ttl = redis_conn.ttl(Keys("t:").run(ids[-1]))
    assert 3500 < ttl <= 3600
    # A run older than the TTL is dropped from the index at the next record.
    clock.at = T0 + timedelta(hours=2)
    history.record(make_plan("Patient/p1", ("f1",)))
    assert redis_conn.zcard(Keys("t:").history()) == 1


def test_an_index_is_trimmed_and_its_ttl_renewed_at_most_once_a_second_and_always_expires(
    store: tuple[RunHistory, Clock], redis_conn: redis.Redis
) -> None:
    history, clock = store
    index = Keys("t:").history()
    for i in range(8):  # max_runs 5, all within one second: only the first run trims
        clock.at = T0 + timedelta(milliseconds=100 * i)
        history.record(make_plan(f"Patient/p{i}", ("f1",)))
    assert redis_conn.zcard(index) == 8
    assert redis_conn.zcard(history.flow_index("f1")) == 8
    assert 3500 < redis_conn.ttl(index) <= 3600 and 3500 < redis_conn.ttl(history.patient_index("p7")) <= 3600
    assert len(history.query()) == 8
    clock.at = T0 + timedelta(seconds=1)  # a second after the last trim: this run trims
    newest = history.record(make_plan("Patient/p1", ("f1",)))
    assert redis_conn.zcard(index) == 5 and redis_conn.zcard(history.flow_index("f1")) == 5
    assert history.query()[0]["id"] == newest


def test_history_cli(store: tuple[RunHistory, Clock], redis_url: str, tmp_path: Any, run_cli) -> None:
    history, clock = store
    history.record(make_plan("Patient/p1", ("f1",)))
    clock.at = T0 + timedelta(minutes=5)
    history.record(make_plan("Patient/p2", ("f2",)))
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[redis]\nurl = "{redis_url}"\nkey_prefix = "t:"\n')
    out = run_cli("--config", str(cfg), "history", "--patient", "p2", "--json", timeout=30)
    assert out.returncode == 0, out.stderr
    runs = json.loads(out.stdout)
    assert [r["trigger"]["patient"] for r in runs] == ["Patient/p2"]
    out = run_cli("--config", str(cfg), "history", "--since", "2026-03-02T15:01:00Z", timeout=30)
    assert out.returncode == 0 and "appointment.no_show" in out.stdout and "f2" in out.stdout
    assert "Patient/p1" not in out.stdout
    bad = run_cli("--config", str(cfg), "history", "--since", "yesterday", timeout=30)
    assert bad.returncode == 2 and "--since" in bad.stderr


def test_the_engine_pipeline_records_each_run(redis_conn: redis.Redis) -> None:
    """EnginePipeline → RunHistory on real Redis, with an executor returning the real result type."""
    from fhir_smartflow.worker.pipeline import EnginePipeline
    from fhir_smartflow.worker.prior import RedisPriorState
    from tests.support.engine import SETTINGS, appointment, event_for, patient, shipped_engine
    from tests.support.fakes import FakeContext

    class WritingExecutor:
        def execute(self, plan: Plan, prewritten: Prewritten | None = None) -> ExecutionResult:
            writes = [a for a in plan.actions if isinstance(a, WriteResource)]
            return ExecutionResult(
                written=[WrittenResource(w.resource_type, f"id{i}", w.identifier, True) for i, w in enumerate(writes)],
                deliveries=[(a.identifier, "completed") for a in plan.actions if isinstance(a, Deliver)],
            )

    keys = Keys("t:")
    engine = shipped_engine()
    history = RunHistory(redis_conn, keys, max_runs=100, ttl=3600, clock=Clock(T0))
    pipeline = EnginePipeline(
        engine, SETTINGS, RedisPriorState(redis_conn, keys, fields=engine.prior_fields()),
        lambda _event: FakeContext([patient()]), WritingExecutor(), redis_conn, keys, history=history,
        clock=lambda: T0,
    )  # fmt: skip
    booked = appointment("a1", "booked", "2026-03-13T14:00:00Z", "2026-03-01T10:00:00Z", version="1")
    noshow = appointment("a1", "noshow", "2026-03-13T14:00:00Z", "2026-03-13T16:00:00Z", version="2")
    pipeline.dispatch(event_for(booked, "create"))
    pipeline.dispatch(event_for(noshow, "update"))
    runs = history.query(flow="missed-appointment")
    assert [r["trigger"]["name"] for r in runs] == ["appointment.no_show"]
    run = runs[0]
    assert run["flows"][0]["ran"] and run["trigger"]["focus"] == "Appointment/a1"
    assert {w["type"] for w in run["written"]} >= {"Task", "Communication"}
    assert [d["channel"] for d in run["deliveries"]] == ["sms"]
    assert len(history.query(patient=run["trigger"]["patient"])) == 2  # booked and no-show
