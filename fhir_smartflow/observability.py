"""``GET /metrics`` (Prometheus text) and the admin queue view at ``/rq``.

Metrics are written by every process into Redis hashes (``metrics.Metrics``); the collector here reads
them at scrape time, so one scrape of ``serve`` shows what all workers did. Live gauges (queue depth,
failed jobs, pending follow-ups) are read from rq / the scheduler at scrape time too.

``/rq``: the rq-dashboard UI when ``[server] rq_dashboard = true``, the optional ``rq-dashboard`` package
is installed (``pip install 'fhir-smartflow[dashboard]'``) and Redis is a real server; otherwise a small
JSON view of the queues. Both need the admin token (``[server] admin_token_env``) as
``Authorization: Bearer <token>`` (or as the HTTP Basic password, for browsers); with no token set, they
are not mounted at all.
"""

from __future__ import annotations

import base64
import hmac
import logging
from collections.abc import Iterator
from typing import Any

import redis
from flask import Blueprint, Flask, Response, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from rq import Queue

from fhir_smartflow.config import Settings, secret
from fhir_smartflow.connections import Keys
from fhir_smartflow.metrics import LATENCY_BUCKETS, METRICS, Metrics, histogram_sum
from fhir_smartflow.scheduling.scheduler import ScheduleKeys

log = logging.getLogger(__name__)

NAMESPACE = "smartflow"


def _labels(field: str, names: tuple[str, ...]) -> list[str]:
    """``type=a|result=b`` → ``["a", "b"]`` in the declared label order."""
    values = dict(part.split("=", 1) for part in field.split("|") if "=" in part) if field else {}
    return [values.get(n, "") for n in names]


def _num(raw: str) -> float:
    return float(raw)


class RedisMetricsCollector(Collector):
    """Turns the Redis hashes of ``Metrics`` into Prometheus metric families, plus live queue gauges."""

    def __init__(self, metrics: Metrics, queue_name: str, key_prefix: str) -> None:
        self.metrics = metrics
        self.queue_name = queue_name
        self.key_prefix = key_prefix

    def collect(self) -> Iterator[Metric]:
        for name, spec in sorted(METRICS.items()):
            fields = self.metrics.read(name)
            labels = list(spec.labels)
            full = f"{NAMESPACE}_{name}"
            if spec.kind == "counter":
                family: Metric = CounterMetricFamily(full, spec.help, labels=labels)
                for field, value in sorted(fields.items()):
                    family.add_metric(_labels(field, spec.labels), _num(value))
            elif spec.kind == "gauge":
                family = GaugeMetricFamily(full, spec.help, labels=labels)
                for field, value in sorted(fields.items()):
                    family.add_metric(_labels(field, spec.labels), _num(value))
            else:
                family = self._histogram(full, spec.help, spec.labels, fields)
            yield family
        yield from self._live()

    @staticmethod
    def _histogram(full: str, help_text: str, names: tuple[str, ...], fields: dict[str, str]) -> Metric:
        family = HistogramMetricFamily(full, help_text, labels=list(names))
        series: dict[str, dict[str, float]] = {}
        for field, value in fields.items():
            base, _, part = field.rpartition("#")
            series.setdefault(base, {})[part] = _num(value)
        for base, parts in sorted(series.items()):
            cumulative = 0.0
            buckets: list[tuple[str, float]] = []
            for bound in LATENCY_BUCKETS:
                cumulative += parts.get(f"le={bound}", 0.0)
                buckets.append((str(bound), cumulative))
            count = parts.get("count", cumulative + parts.get("le=+Inf", 0.0))
            buckets.append(("+Inf", count))
            family.add_metric(_labels(base, names), buckets, histogram_sum(parts))
        return family

    def _live(self) -> Iterator[Metric]:
        conn = self.metrics.conn
        queue = Queue(self.queue_name, connection=conn)
        jobs = GaugeMetricFamily(f"{NAMESPACE}_queue_jobs", "Jobs in the rq queue by state", labels=["state"])
        jobs.add_metric(["queued"], queue.count)
        jobs.add_metric(["started"], queue.started_job_registry.count)
        jobs.add_metric(["failed"], queue.failed_job_registry.count)
        jobs.add_metric(["scheduled"], queue.scheduled_job_registry.count)
        yield jobs
        yield GaugeMetricFamily(
            f"{NAMESPACE}_followups_pending",
            "Reminders, overdue checks, recurrences and deferred deliveries waiting for their time",
            value=_pending_followups(conn, self.key_prefix),
        )


def _pending_followups(conn: redis.Redis, key_prefix: str) -> int:
    """Follow-ups waiting in the scheduler's due set (reminders, overdue checks, recurrences, deferrals)."""
    return int(conn.zcard(ScheduleKeys(Keys(key_prefix)).due))


def metrics_blueprint(conn: redis.Redis, settings: Settings) -> Blueprint:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        RedisMetricsCollector(Metrics(conn, settings.redis.key_prefix), settings.redis.queue, settings.redis.key_prefix)
    )
    bp = Blueprint("smartflow_metrics", __name__)

    @bp.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)

    return bp


def _presented_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip()).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return None
    return None


def _authorized(token: str) -> bool:
    presented = _presented_token()
    return presented is not None and hmac.compare_digest(presented.encode(), token.encode())


def _unauthorized() -> Response:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "security", "diagnostics": "admin token required"}],
    }
    resp = jsonify(body)
    resp.status_code = 401
    resp.headers["WWW-Authenticate"] = 'Bearer realm="fhir-smartflow admin", Basic realm="fhir-smartflow admin"'
    return resp


def queue_summary(conn: redis.Redis, queue_name: str, failed_limit: int = 50) -> dict[str, Any]:
    """Counts per state and the newest failed job ids (ids only: job arguments may hold PHI)."""
    queue = Queue(queue_name, connection=conn)
    failed = queue.failed_job_registry
    return {
        "queue": queue_name,
        "queued": queue.count,
        "started": queue.started_job_registry.count,
        "scheduled": queue.scheduled_job_registry.count,
        "deferred": queue.deferred_job_registry.count,
        "failed": failed.count,
        "failed_job_ids": failed.get_job_ids(0, failed_limit - 1),
    }


def _admin_json_blueprint(conn: redis.Redis, queue_name: str) -> Blueprint:
    bp = Blueprint("smartflow_admin", __name__)

    @bp.get("/rq")
    @bp.get("/rq/")
    def queues() -> Response:
        return jsonify(queue_summary(conn, queue_name))

    return bp


def _mount_rq_dashboard(app: Flask, settings: Settings) -> bool:
    """rq-dashboard at /rq when enabled, installed, and Redis is a real server (it connects by URL)."""
    if not settings.server.rq_dashboard:
        return False
    if not settings.redis.url:  # it connects by URL: not to the embedded queue, nor through sentinels
        log.warning("[server] rq_dashboard needs [redis] url; serving the JSON queue view at /rq instead")
        return False
    try:
        import rq_dashboard
        from rq_dashboard.web import setup_rq_connection
    except ImportError:
        log.warning("[server] rq_dashboard = true but rq-dashboard is not installed; JSON queue view at /rq instead")
        return False
    app.config["RQ_DASHBOARD_REDIS_URL"] = settings.redis.url
    setup_rq_connection(app)
    app.register_blueprint(rq_dashboard.blueprint, url_prefix="/rq")
    return True


def register_observability(app: Flask, settings: Settings, conn: redis.Redis) -> None:
    """Add ``/metrics`` and (with an admin token configured) ``/rq`` to the service's Flask app."""
    app.register_blueprint(metrics_blueprint(conn, settings))
    token = secret(settings.server.admin_token_env) if settings.server.admin_token_env else None
    if not token:
        if settings.server.rq_dashboard:
            log.warning(
                "[server] rq_dashboard = true but %s is not set: /rq is not mounted", settings.server.admin_token_env
            )
        return

    @app.before_request
    def _admin_guard() -> Response | None:
        if (request.path == "/rq" or request.path.startswith("/rq/")) and not _authorized(token):
            return _unauthorized()
        return None

    if not _mount_rq_dashboard(app, settings):
        app.register_blueprint(_admin_json_blueprint(conn, settings.redis.queue))
