"""The web console: a Flask app of its own, mounted by `serve` at ``[console] path`` beside the webhook, so
its sessions, CSRF checks and CSP never touch the webhook. Pages live in ``console/views``; this package
gives them the login, roles, CSRF, security headers, the stores of flow / template files and the reload bus.
"""

from __future__ import annotations

from datetime import timedelta

from flask import Flask, render_template
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from fhir_smartflow.console.auth import current_user, register_auth, require
from fhir_smartflow.console.csrf import install_csrf
from fhir_smartflow.console.deps import ConsoleDeps
from fhir_smartflow.console.headers import install_headers
from fhir_smartflow.console.nav import nav_items
from fhir_smartflow.console.views import register_views

__all__ = ["ConsoleDeps", "create_console_app"]

COOKIE = "smartflow_console"


def create_console_app(deps: ConsoleDeps) -> Flask:
    """The console app; ``deps.secret_key`` signs its cookies (the same key on every host)."""
    app = Flask(__name__, static_folder="static", template_folder="templates")
    app.secret_key = deps.secret_key
    app.config.update(
        SESSION_COOKIE_NAME=COOKIE,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=not deps.embedded,  # embedded mode serves plain HTTP on this machine only
        SESSION_COOKIE_PATH=deps.settings.console.path,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=deps.settings.console.session_hours),
        MAX_CONTENT_LENGTH=1024 * 1024,
        TEMPLATES_AUTO_RELOAD=False,
    )
    app.extensions["console"] = deps
    install_csrf(app)
    install_headers(app)
    register_auth(app, with_oidc=deps.oidc is not None)

    @app.context_processor
    def layout() -> dict[str, object]:
        user = current_user()
        items = [item for item in nav_items(app) if user is not None and user.can(item.role)]
        return {"user": user, "nav": items, "embedded": deps.embedded, "oidc_login": deps.oidc is not None}

    @app.errorhandler(403)
    def forbidden(_exc: Exception) -> tuple[str, int]:
        return render_template("error.html", title="Not allowed", message="Your role may not do this."), 403

    @app.errorhandler(400)
    def bad_request(exc: HTTPException) -> tuple[str, int]:
        message = exc.description or "Bad request."
        return render_template("error.html", title="Refused", message=message), 400

    register_views(app, deps)
    if not any(rule.rule == "/" for rule in app.url_map.iter_rules()):
        _home(app)
    hops = deps.settings.console.proxy_hops
    if hops:  # only the configured proxies' headers: a client could forge any others
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)  # type: ignore[method-assign]
    return app


def _home(app: Flask) -> None:
    """A landing page for when no page module claims ``/``."""

    @app.route("/", endpoint="home")
    @require("viewer")
    def home() -> str:
        return render_template("home.html")
