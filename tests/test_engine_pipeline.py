"""Prior state on real Redis and the EnginePipeline (Dispatcher) with a fake Executor."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from fhir_smartflow.connections import Keys
from fhir_smartflow.engine.plan import CancelGroup, Plan
from fhir_smartflow.metrics import Metrics
from fhir_smartflow.worker.execute import Prewritten
from fhir_smartflow.worker.pipeline import EnginePipeline
from fhir_smartflow.worker.prior import RedisPriorState
from tests.support.engine import SETTINGS, appointment, event_for, patient, shipped_engine
from tests.support.fakes import FakeContext

pytestmark = pytest.mark.integration

KEYS = Keys("smartflow-test:")
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class RecordingExecutor:
    """Executor protocol fake: keeps the plans (the real PlanExecutor is tested elsewhere)."""

    def __init__(self) -> None:
        self.plans: list[Plan] = []

    def execute(self, plan: Plan, prewritten: Prewritten | None = None) -> Any:
        self.plans.append(plan)
        return {"executed": len(plan.actions)}


class RecordingHistory:
    def __init__(self) -> None:
        self.records: list[tuple[Plan, Any]] = []

    def record(self, plan: Plan, result: Any) -> None:
        self.records.append((plan, result))


@pytest.fixture(scope="module")
def engine():
    return shipped_engine()


def test_prior_state_keeps_only_small_fields_and_ignores_older_versions(redis_conn):
    prior = RedisPriorState(redis_conn, KEYS, ttl=60, fields={"status"})
    v2 = appointment("a1", "noshow", "2026-03-13T14:00:00Z", "2026-03-13T16:00:00Z", version="2")
    prior.put("Appointment", "a1", v2)
    stored = prior.get("Appointment", "a1")
    assert stored == {
        "resourceType": "Appointment",
        "id": "a1",
        "status": "noshow",
        "meta": {"versionId": "2", "lastUpdated": "2026-03-13T16:00:00Z"},
    }
    assert "participant" not in json.loads(redis_conn.get(KEYS.prior("Appointment", "a1")))  # no PHI kept
    assert 0 < redis_conn.ttl(KEYS.prior("Appointment", "a1")) <= 60
    v1 = appointment("a1", "booked", "2026-03-13T14:00:00Z", "2026-03-01T10:00:00Z", version="1")
    prior.put("Appointment", "a1", v1)  # arrives late: ignored
    assert prior.get("Appointment", "a1")["status"] == "noshow"
    v3 = appointment("a1", "booked", "2026-03-13T14:00:00Z", "2026-03-14T10:00:00Z", version="3")
    prior.put("Appointment", "a1", v3)
    assert prior.get("Appointment", "a1")["status"] == "booked"
    # Non-numeric versions fall back to lastUpdated.
    prior.put("Appointment", "b", {**v2, "id": "b", "meta": {"versionId": "x", "lastUpdated": "2026-03-13T16:00:00Z"}})
    prior.put("Appointment", "b", {**v1, "id": "b", "meta": {"versionId": "y", "lastUpdated": "2026-03-01T10:00:00Z"}})
    assert prior.get("Appointment", "b")["status"] == "noshow"
    assert prior.get("Appointment", "missing") is None


def make_pipeline(engine, redis_conn, ctx, history=None, metrics=None):
    executor = RecordingExecutor()
    pipeline = EnginePipeline(
        engine,
        SETTINGS,
        RedisPriorState(redis_conn, KEYS, fields=engine.prior_fields()),
        lambda event: ctx,
        executor,
        redis_conn,
        KEYS,
        history=history,
        metrics=metrics,
        clock=lambda: NOW,
    )
    return pipeline, executor


def test_noshow_runs_once_then_prior_state_stops_repeats(engine, redis_conn):
    ctx = FakeContext([patient()])
    history = RecordingHistory()
    metrics = Metrics(redis_conn, "smartflow-test:")
    pipeline, executor = make_pipeline(engine, redis_conn, ctx, history, metrics)
    booked = appointment("a1", "booked", "2026-03-13T14:00:00Z", "2026-03-01T10:00:00Z", version="1")
    noshow = appointment("a1", "noshow", "2026-03-13T14:00:00Z", "2026-03-13T16:00:00Z", version="2")
    later = appointment("a1", "noshow", "2026-03-13T14:00:00Z", "2026-03-14T09:00:00Z", version="3")
    pipeline.dispatch(event_for(booked, "create"))
    pipeline.dispatch(event_for(noshow, "update"))
    pipeline.dispatch(event_for(later, "update"))
    assert [p.trigger.trigger for p in executor.plans] == ["appointment.booked", "appointment.no_show"]
    assert executor.plans[1].runs[0].ran
    assert [r for _, r in history.records] == [{"executed": len(p.actions)} for p in executor.plans]
    assert metrics.conn.hget(metrics.key("flow_runs"), "result=ran") == b"2"


def test_first_kept_claims_once_per_patient(engine, redis_conn):
    ctx = FakeContext([patient()])
    pipeline, executor = make_pipeline(engine, redis_conn, ctx)
    first = appointment("a1", "arrived", "2026-10-26T13:00:00Z", "2026-10-26T13:00:00Z")
    second = appointment("a2", "arrived", "2026-11-02T14:00:00Z", "2026-11-02T14:00:00Z")
    pipeline.dispatch(event_for(first, "update"))
    # A retry of the same event (job failed after claiming) still runs: the claim is its own.
    redis_conn.delete(KEYS.prior("Appointment", "a1"))
    pipeline.dispatch(event_for(first, "update"))
    pipeline.dispatch(event_for(second, "update"))
    kept = [p for p in executor.plans if p.trigger.trigger == "appointment.first_kept"]
    assert [p.trigger.event.resource_id for p in kept] == ["a1", "a1"]
    assert kept[0] == kept[1]


def test_discharge_marker_stops_not_after_flows_until_admission(engine, redis_conn):
    ctx = FakeContext([patient()])
    pipeline, executor = make_pipeline(engine, redis_conn, ctx)
    encounter = {
        "resourceType": "Encounter",
        "id": "e1",
        "meta": {"versionId": "2"},
        "status": "finished",
        "class": {"code": "AMB"},
        "subject": {"reference": "Patient/p1"},
    }
    pipeline.dispatch(event_for(encounter, "update"))
    (discharge,) = executor.plans
    assert isinstance(discharge.actions[0], CancelGroup)
    assert redis_conn.exists(KEYS.discharged("Patient/p1"))
    booked = appointment("a5", "booked", "2026-03-20T14:00:00Z", "2026-03-10T12:00:00Z", version="1")
    pipeline.dispatch(event_for(booked, "create"))
    (run,) = executor.plans[-1].runs
    assert run.flow_id == "previsit-questionnaire" and not run.ran and "discharged" in run.reason
    admitted = {**encounter, "id": "e2", "status": "in-progress", "meta": {"versionId": "1"}}
    pipeline.dispatch(event_for(admitted, "create"))
    assert not redis_conn.exists(KEYS.discharged("Patient/p1"))
    rebooked = appointment("a6", "booked", "2026-03-27T14:00:00Z", "2026-03-11T12:00:00Z", version="1")
    pipeline.dispatch(event_for(rebooked, "create"))
    assert executor.plans[-1].runs[0].ran


def test_inactive_patient_counts_as_discharged(engine, redis_conn):
    ctx = FakeContext([patient(active=False)])
    pipeline, executor = make_pipeline(engine, redis_conn, ctx)
    booked = appointment("a5", "booked", "2026-03-20T14:00:00Z", "2026-03-10T12:00:00Z", version="1")
    pipeline.dispatch(event_for(booked, "create"))
    (run,) = executor.plans[-1].runs
    assert not run.ran and "discharged" in run.reason


def test_events_without_triggers_only_update_prior_state(engine, redis_conn):
    ctx = FakeContext()
    pipeline, executor = make_pipeline(engine, redis_conn, ctx)
    other = {"resourceType": "Observation", "id": "o1", "status": "final", "meta": {"versionId": "1"}}
    assert pipeline.dispatch(event_for(other, "create")) == []
    assert executor.plans == []
    assert pipeline.prior.get("Observation", "o1")["status"] == "final"
