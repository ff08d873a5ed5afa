"""`GET /metrics` on the real webhook: counters move when notifications arrive and are processed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
import rq
from prometheus_client.parser import text_string_to_metric_families

from fhir_smartflow.app import create_app
from fhir_smartflow.config import EngineConfig, RedisConfig, Settings, SubscriptionConfig
from fhir_smartflow.worker import runtime

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).parent / "fixtures" / "notifications"


def _samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = requests.get(f"{url}/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_count_notifications_events_and_latency(redis_conn, monkeypatch, serve_app) -> None:
    monkeypatch.setenv("METRICS_TEST_SECRET", "s3cret")
    settings = Settings(
        redis=RedisConfig(key_prefix="mt:"),
        engine=EngineConfig(dispatch="record"),
        subscriptions=[SubscriptionConfig(id="sub", secret_env="METRICS_TEST_SECRET", criteria="Patient?")],
    )
    server = serve_app(create_app(settings, redis_conn))
    before = _samples(server.url)
    body = (FIXTURES / "backport-r4-event-full-resource.json").read_bytes()
    headers = {"Content-Type": "application/fhir+json"}
    ok = requests.post(f"{server.url}/fhir/notify", data=body, headers={**headers, "X-Smartflow-Secret": "s3cret"})
    bad = requests.post(f"{server.url}/fhir/notify", data=body, headers={**headers, "X-Smartflow-Secret": "no"})
    assert (ok.status_code, bad.status_code) == (200, 401), (ok.text, bad.text)
    rt = runtime.build_runtime(settings, redis_conn)
    runtime.install(rt)
    try:
        rq.SimpleWorker([rt.queue], connection=redis_conn).work(burst=True)
    finally:
        runtime.install(None)
    after = _samples(server.url)

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert moved("smartflow_notifications_total", type="event-notification", result="accepted") == 1
    assert moved("smartflow_auth_failures_total", reason="invalid") == 1
    assert moved("smartflow_events_received_total", source="webhook") == 1
    assert moved("smartflow_events_total", result="processed") == 1
    assert moved("smartflow_event_latency_seconds_count") == 1
    assert json.loads(redis_conn.lindex("mt:dispatched", 0))["resource_id"] == "p1"
