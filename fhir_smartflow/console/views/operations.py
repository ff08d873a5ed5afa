"""Operations: subscriptions (status, last handshake / heartbeat / notification, gaps), the queue, failed jobs
with a replay button, pending follow-ups, reload status of every process and `doctor`'s checks."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
from flask import Flask, abort, flash, redirect, render_template, request, url_for
from rq.job import Job
from rq.registry import FailedJobRegistry
from werkzeug.wrappers import Response

from fhir_smartflow.batch_queueing import replay_failed_job
from fhir_smartflow.connections import Keys
from fhir_smartflow.console.auth import current_user, require
from fhir_smartflow.console.deps import ConsoleDeps
from fhir_smartflow.console.nav import add_nav
from fhir_smartflow.console.views.common import load_engine
from fhir_smartflow.fhir.client import FhirClient
from fhir_smartflow.queueing import queue_for
from fhir_smartflow.scheduling.scheduler import build_scheduler, iter_pending
from fhir_smartflow.tooling.doctor.checks import run_checks
from fhir_smartflow.tooling.doctor.model import DoctorContext

FAILED_SHOWN = 50
PENDING_SHOWN = 100


@dataclass
class SubscriptionRow:
    id: str
    criteria: str
    last_notification: str = ""
    last_status: str = ""
    last_status_type: str = ""
    highest: str = ""
    restarts: str = "0"
    gaps: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class FailedJob:
    id: str
    description: str
    reason: str
    ended_at: str


def _when(value: str | bytes | None) -> str:
    if not value:
        return ""
    text = value.decode() if isinstance(value, bytes) else value
    try:
        return datetime.fromtimestamp(float(text), UTC).isoformat(timespec="seconds")
    except ValueError:
        return text


def _subscriptions(deps: ConsoleDeps, conn: redis.Redis) -> list[SubscriptionRow]:
    keys = Keys(deps.settings.redis.key_prefix)
    rows = []
    for sub in deps.settings.subscriptions:
        state = {k.decode(): v.decode() for k, v in conn.hgetall(keys.subscription(sub.id)).items()}
        gaps = [json.loads(g) for g in conn.lrange(keys.gaps(sub.id), -10, -1)]
        rows.append(
            SubscriptionRow(
                id=sub.id,
                criteria=sub.criteria or sub.topic,
                last_notification=_when(state.get("last_seen")),
                last_status=_when(state.get("status_at")),
                last_status_type=state.get("last_status_type", ""),
                highest=state.get("highest", ""),
                restarts=state.get("restarts", "0"),
                gaps=gaps,
            )
        )
    return rows


def _reason(job: Job) -> str:
    result = job.latest_result()
    text = (result.exc_string if result else "") or ""
    return text.strip().splitlines()[-1] if text.strip() else "unknown"


def failed_jobs(conn: redis.Redis, deps: ConsoleDeps) -> tuple[int, list[FailedJob]]:
    queue = queue_for(conn, deps.settings.redis)
    registry = FailedJobRegistry(queue=queue)
    jobs = []
    for job_id in registry.get_job_ids(0, FAILED_SHOWN - 1):
        try:
            job = Job.fetch(job_id, connection=conn)
        except Exception:  # expired between listing and fetching
            continue
        ended = job.ended_at.isoformat(timespec="seconds") if job.ended_at else ""
        jobs.append(FailedJob(job_id, job.description or "", _reason(job), ended))
    return registry.count, jobs


def replay_job(conn: redis.Redis, deps: ConsoleDeps, job_id: str) -> str | None:
    """One failed job back on the queue the way `replay` does it (`replay_failed_job`): an event job's
    unfinished events through `enqueue_events` (source ``replay``), anything else requeued as it is.
    The new job ids (comma-separated), or None when it is not failed."""
    queue = queue_for(conn, deps.settings.redis)
    if job_id not in FailedJobRegistry(queue=queue).get_job_ids():
        return None
    new_ids = replay_failed_job(queue, Job.fetch(job_id, connection=conn))
    return ", ".join(new_ids) or "nothing (every event of it was already done)"


def _queue(conn: redis.Redis, deps: ConsoleDeps) -> dict[str, int | str]:
    queue = queue_for(conn, deps.settings.redis)
    return {
        "name": queue.name,
        "queued": queue.count,
        "started": queue.started_job_registry.count,
        "scheduled": queue.scheduled_job_registry.count,
        "deferred": queue.deferred_job_registry.count,
        "failed": queue.failed_job_registry.count,
    }


def _pending(conn: redis.Redis, deps: ConsoleDeps, kind: str, flow: str) -> tuple[int, list[dict[str, Any]], list[str]]:
    """How many follow-ups are pending, the soonest (filtered by kind and flow), and the kinds among them."""
    scheduler = build_scheduler(deps.settings, conn)
    found = []
    kinds = {kind} - {""}
    for item in iter_pending(scheduler, PENDING_SHOWN * 3):
        payload = item.payload or {}
        kinds.add(item.kind)
        if kind and item.kind != kind:
            continue
        if flow and payload.get("flow_id") != flow:
            continue
        found.append(
            {
                "kind": item.kind,
                "at": item.at.isoformat(timespec="seconds"),
                "flow": payload.get("flow_id", ""),
                "action": item.action or payload.get("action", ""),
                "patient": payload.get("patient", ""),
            }
        )
        if len(found) >= PENDING_SHOWN:
            break
    return scheduler.pending_count(), found, sorted(kinds)


def register(app: Flask, deps: ConsoleDeps) -> None:
    add_nav(app, "Operations", "operations")

    @app.get("/operations", endpoint="operations")
    @require("viewer")
    def operations() -> str:
        conn = deps.redis
        kind = request.args.get("kind", "")
        flow = request.args.get("flow", "")
        context: dict[str, Any] = {"no_redis": conn is None, "kind": kind, "flow": flow}
        if conn is not None:
            context["subscriptions"] = _subscriptions(deps, conn)
            context["queue"] = _queue(conn, deps)
            context["failed_count"], context["failed"] = failed_jobs(conn, deps)
            context["pending_count"], context["pending"], context["kinds"] = _pending(conn, deps, kind, flow)
        context["processes"] = deps.reload_bus.status() if deps.reload_bus is not None else []
        return render_template("operations.html", **context)

    @app.post("/operations/failed/<job_id>/replay", endpoint="replay_job")
    @require("admin")
    def replay(job_id: str) -> Response:
        if deps.redis is None:
            abort(404)
        new_id = replay_job(deps.redis, deps, job_id)
        user = current_user()
        if new_id is None:
            flash(f"Job {job_id} is no longer failed (replayed or expired already).", "error")
        else:
            deps.audit.record(user.name if user else "", "job.replay", job_id, new_id)
            flash(f"Job {job_id} replayed as {new_id}.", "info")
        return redirect(url_for("operations") + "#failed")

    @app.get("/operations/doctor", endpoint="doctor")
    @require("viewer")
    def doctor() -> str:
        settings = deps.settings

        def engine() -> Any:
            loaded, errors = load_engine(deps)
            if loaded is None:
                raise RuntimeError(f"{len(errors)} load error(s)")
            return loaded

        def conn() -> redis.Redis:
            if deps.redis is None:
                raise RuntimeError("no Redis")
            return deps.redis

        ctx = DoctorContext(
            settings=settings,
            make_client=lambda: deps.fhir or FhirClient.from_settings(settings),
            make_redis=conn,
            load_engine=engine,
        )
        return render_template("doctor.html", findings=run_checks(ctx))
