"""The WSGI application: the webhook, health endpoints, and any extra WSGI apps mounted beside it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import redis
from flask import Flask, Response
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from fhir_smartflow.cds.app import CDS_PATH, create_cds_app
from fhir_smartflow.config import Settings
from fhir_smartflow.connections import Keys, connect
from fhir_smartflow.ingest.answers import as_response, error_answer, fhir_response
from fhir_smartflow.ingest.app import IngestContext, create_ingest_blueprint
from fhir_smartflow.ingest.auth import Authenticator
from fhir_smartflow.ingest.front import WebhookFront
from fhir_smartflow.ingest.policy import DeliveryPolicy
from fhir_smartflow.metrics import Metrics
from fhir_smartflow.observability import register_observability
from fhir_smartflow.queueing import queue_for
from fhir_smartflow.worker.runtime import utc_now

WSGIApp = Callable[..., Any]


def create_app(
    settings: Settings,
    redis_conn: redis.Redis | None = None,
    *,
    insecure_dev: bool = False,
    extra_wsgi_mounts: dict[str, WSGIApp] | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> Flask:
    """Build the app. Raises `ConfigError` when no subscription is configured and not ``insecure_dev``, or
    when a subscription's resource types are neither declared nor derivable (ingest/policy.py).

    ``extra_wsgi_mounts`` maps a path prefix to a WSGI app served under it (``serve`` mounts the
    sandbox FHIR store at ``settings.sandbox.path`` when no FHIR base URL is configured).
    """
    conn = redis_conn if redis_conn is not None else connect(settings)
    prefix = settings.redis.key_prefix
    ctx = IngestContext(
        settings=settings,
        conn=conn,
        queue=queue_for(conn, settings.redis),
        keys=Keys(prefix),
        metrics=Metrics(conn, prefix),
        authenticator=Authenticator.from_config(settings.subscriptions, insecure_dev=insecure_dev),
        clock=clock,
        policy=DeliveryPolicy(settings.subscriptions),
    )
    app = Flask("fhir_smartflow")
    app.config["MAX_CONTENT_LENGTH"] = settings.server.max_body_bytes
    app.extensions["smartflow"] = ctx
    app.register_blueprint(create_ingest_blueprint(ctx))
    register_observability(app, settings, conn)  # /metrics (and /rq with an admin token)
    _register_error_handlers(app)
    mounts = dict(extra_wsgi_mounts or {})
    if settings.cds.enabled:  # the CDS Hooks service beside the webhook (docs/cds-hooks.md)
        mounts[CDS_PATH] = create_cds_app(settings, conn)
    if mounts:
        app.wsgi_app = DispatcherMiddleware(app.wsgi_app, mounts)  # type: ignore[method-assign]
    app.wsgi_app = WebhookFront(ctx, app.wsgi_app)  # type: ignore[method-assign]
    return app


def _register_error_handlers(app: Flask) -> None:
    """Every error is FHIR JSON too; anything unexpected is our fault (500), never the client's input."""

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        response = fhir_response(status, exc.description or exc.name)
        if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:  # a RedisError: 503 + Retry-After
        return as_response(error_answer(exc, app.extensions["smartflow"].settings.server.retry_after_seconds))
