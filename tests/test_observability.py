"""/metrics exposition from the Redis-backed metrics, and the admin-token-guarded /rq view."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
import requests
import responses
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families
from rq import Queue

from fhir_smartflow.config import load_settings
from fhir_smartflow.connections import Keys
from fhir_smartflow.engine.plan import Schedule
from fhir_smartflow.fhir.client import FhirClient
from fhir_smartflow.metrics import Metrics
from fhir_smartflow.observability import register_observability
from fhir_smartflow.retry import RetryPolicy
from fhir_smartflow.scheduling.scheduler import RqScheduler
from tests.support.procs import ROOT

pytestmark = pytest.mark.integration


def scrape(client) -> dict[str, dict[tuple, float]]:
    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.mimetype == "text/plain"
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(resp.get_data(as_text=True)):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


@pytest.fixture
def app_and_metrics(redis_conn: redis.Redis, redis_url: str) -> tuple[Flask, Metrics]:
    settings = load_settings(env={"SMARTFLOW_REDIS_URL": redis_url, "SMARTFLOW_REDIS_KEY_PREFIX": "m:"})
    app = Flask(__name__)
    register_observability(app, settings, redis_conn)
    return app, Metrics(redis_conn, "m:")


def test_counters_move_and_exposition_parses(app_and_metrics: tuple[Flask, Metrics]) -> None:
    app, metrics = app_and_metrics
    client = app.test_client()
    before = scrape(client)
    assert before.get("smartflow_notifications_total", {}) == {}
    metrics.inc("notifications", type="event-notification", result="accepted")
    metrics.inc("notifications", 2, type="event-notification", result="accepted")
    metrics.inc("deliveries", channel="sms", status="completed")
    metrics.set("poll_lag_seconds", 12.5, resource_type="Appointment")
    after = scrape(client)
    key = (("result", "accepted"), ("type", "event-notification"))
    assert after["smartflow_notifications_total"][key] == 3
    assert after["smartflow_deliveries_total"][(("channel", "sms"), ("status", "completed"))] == 1
    assert after["smartflow_poll_lag_seconds"][(("resource_type", "Appointment"),)] == 12.5


def test_histogram_buckets_are_cumulative(app_and_metrics: tuple[Flask, Metrics]) -> None:
    app, metrics = app_and_metrics
    for seconds in (0.003, 0.2, 0.2, 120.0):
        metrics.observe("event_latency_seconds", seconds)
    samples = scrape(app.test_client())
    buckets = samples["smartflow_event_latency_seconds_bucket"]
    assert buckets[(("le", "0.005"),)] == 1
    assert buckets[(("le", "0.25"),)] == 3
    assert buckets[(("le", "60.0"),)] == 3
    assert buckets[(("le", "+Inf"),)] == 4
    assert samples["smartflow_event_latency_seconds_count"][()] == 4
    assert samples["smartflow_event_latency_seconds_sum"][()] == pytest.approx(120.403)


def test_a_histogram_sum_written_in_seconds_before_still_counts(
    app_and_metrics: tuple[Flask, Metrics], redis_conn: redis.Redis
) -> None:
    """Earlier versions kept the sum as a float of seconds (``#sum``); new observations add microseconds."""
    app, metrics = app_and_metrics
    redis_conn.hset(metrics.key("event_latency_seconds"), mapping={"#sum": "1.5", "#count": "1", "#le=5.0": "1"})
    metrics.observe("event_latency_seconds", 0.25)
    assert redis_conn.hget(metrics.key("event_latency_seconds"), "#sum_us") == b"250000"
    samples = scrape(app.test_client())
    assert samples["smartflow_event_latency_seconds_sum"][()] == pytest.approx(1.75)
    assert samples["smartflow_event_latency_seconds_count"][()] == 2


def test_queue_gauges_are_live(app_and_metrics: tuple[Flask, Metrics], redis_conn: redis.Redis) -> None:
    app, _ = app_and_metrics
    q = Queue("smartflow", connection=redis_conn)
    q.enqueue("builtins.print", "x")
    q.enqueue("builtins.print", "y")
    assert scrape(app.test_client())["smartflow_followups_pending"][()] == 0
    scheduler = RqScheduler(redis_conn, Keys("m:"), q, clock=lambda: datetime(2026, 3, 2, tzinfo=UTC))
    for i in range(3):
        scheduler.schedule(Schedule(datetime(2026, 3, 3, tzinfo=UTC), "reminder", f"flow/a/reminder/{i}"))
    samples = scrape(app.test_client())
    assert samples["smartflow_queue_jobs"][(("state", "queued"),)] == 2
    assert samples["smartflow_queue_jobs"][(("state", "failed"),)] == 0
    assert samples["smartflow_followups_pending"][()] == 3


def test_admin_view_needs_the_token(redis_conn: redis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_ADMIN_TOKEN", "s3cret-token")
    settings = load_settings(
        env={"SMARTFLOW_REDIS_URL": redis_url, "SMARTFLOW_SERVER_ADMIN_TOKEN_ENV": "TEST_ADMIN_TOKEN"}
    )
    app = Flask(__name__)
    register_observability(app, settings, redis_conn)
    client = app.test_client()
    assert client.get("/rq").status_code == 401
    assert client.get("/rq", headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = client.get("/rq", headers={"Authorization": "Bearer s3cret-token"})
    assert ok.status_code == 200 and ok.get_json()["queue"] == "smartflow"
    basic = base64.b64encode(b"admin:s3cret-token").decode()
    assert client.get("/rq/", headers={"Authorization": f"Basic {basic}"}).status_code == 200
    assert client.get("/metrics").status_code == 200  # metrics stay open for the scraper


def test_no_token_no_admin_view(app_and_metrics: tuple[Flask, Metrics]) -> None:
    app, _ = app_and_metrics
    assert app.test_client().get("/rq").status_code == 404


def test_rq_dashboard_mount(redis_conn: redis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_ADMIN_TOKEN", "tok")
    settings = load_settings(
        env={
            "SMARTFLOW_REDIS_URL": redis_url,
            "SMARTFLOW_SERVER_ADMIN_TOKEN_ENV": "TEST_ADMIN_TOKEN",
            "SMARTFLOW_SERVER_RQ_DASHBOARD": "true",
        }
    )
    app = Flask(__name__)
    register_observability(app, settings, redis_conn)
    client = app.test_client()
    assert client.get("/rq/").status_code == 401
    resp = client.get("/rq/0/data/queues.json", headers={"Authorization": "Bearer tok"})
    assert resp.status_code == 200 and "queues" in resp.get_json()


def test_metrics_move_when_notifications_arrive(
    redis_conn: redis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, serve_app
) -> None:
    """The real webhook app + /metrics over real HTTP: an accepted and a refused notification show up."""
    from fhir_smartflow.app import create_app

    monkeypatch.setenv("TEST_HOOK_SECRET", "hook-secret")
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'[redis]\nurl = "{redis_url}"\n[[subscriptions]]\nid = "ehr"\nheader = "X-Smartflow-Secret"\n'
        'secret_env = "TEST_HOOK_SECRET"\ncriteria = "Patient?"\n'
    )
    settings = load_settings(cfg)
    app = create_app(settings, redis_conn)  # the factory registers /metrics itself
    server = serve_app(app)
    body = (ROOT / "tests" / "fixtures" / "notifications" / "classic-resource.json").read_bytes()
    url = f"{server.url}{settings.server.notify_path}"
    headers = {"Content-Type": "application/fhir+json"}
    ok = requests.post(url, data=body, headers={**headers, "X-Smartflow-Secret": "hook-secret"}, timeout=10)
    assert ok.status_code < 300, ok.text
    refused = requests.post(url, data=body, headers={**headers, "X-Smartflow-Secret": "wrong"}, timeout=10)
    assert refused.status_code == 401
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    accepted = [v for (name, labels), v in samples.items()
                if name == "smartflow_notifications_total" and ("result", "accepted") in labels]  # fmt: skip
    assert accepted == [1]
    assert samples[("smartflow_notifications_total", (("result", "unauthorized"), ("type", "unknown")))] == 1
    assert sum(v for (name, _), v in samples.items() if name == "smartflow_auth_failures_total") == 1
    assert samples[("smartflow_queue_jobs", (("state", "queued"),))] >= 1  # the event waits for a worker


@responses.activate
def test_fhir_client_counts_requests_by_method_and_status(redis_conn) -> None:
    metrics = Metrics(redis_conn, "t:")
    base = "https://ehr.example.org/fhir"
    client = FhirClient(base, retry=RetryPolicy(max_retries=1), sleep=lambda s: None, metrics=metrics)
    responses.get(f"{base}/Patient/1", status=503)
    responses.get(f"{base}/Patient/1", json={"resourceType": "Patient", "id": "1"})
    client.read("Patient/1")
    assert metrics.counter_value("fhir_requests", method="GET", status="503") == 1
    assert metrics.counter_value("fhir_requests", method="GET", status="200") == 1
