"""The worklist's routes: launch (EHR and standalone), callback, the list, a task, completing it, messages."""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from datetime import datetime
from typing import Any

from flask import Flask, Response, abort, g, redirect, render_template, request, url_for

from fhir_smartflow.worklist.deps import WorklistDeps
from fhir_smartflow.worklist.fhir import FhirError, UserFhir
from fhir_smartflow.worklist.messages import groups_of, my_messages, open_message
from fhir_smartflow.worklist.scopes import requested_scopes
from fhir_smartflow.worklist.sessions import COOKIE
from fhir_smartflow.worklist.smart_client import Endpoints, SmartError, new_verifier
from fhir_smartflow.worklist.tasks import (
    OUTCOMES,
    Identity,
    NotYours,
    finish,
    history,
    identity,
    is_mine,
    my_tasks,
    versions,
)

log = logging.getLogger(__name__)

CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'self'",
    ]
)
REFRESH_MARGIN = 60
MAX_REASON = 500


def create_worklist_app(deps: WorklistDeps) -> Flask:
    app = Flask("fhir_smartflow.worklist")
    app.extensions["worklist"] = deps

    @app.template_filter("local")
    def local_time(value: datetime) -> str:
        return value.astimezone(deps.timezone).strftime("%Y-%m-%d %H:%M %Z")

    def cookie(response: Response, sid: str) -> Response:
        response.set_cookie(
            COOKIE,
            sid,
            max_age=deps.sessions.ttl,
            path=request.script_root or "/",
            httponly=True,
            secure=deps.secure_cookie or request.is_secure,
            samesite="Lax",
        )
        return response

    def redirect_uri() -> str:
        root = deps.config.public_url.rstrip("/") or request.host_url.rstrip("/") + request.script_root
        return root + "/callback"

    def begin(launch: str | None) -> Response:
        try:
            endpoints = deps.client.discover()
        except SmartError as exc:
            return page_error(str(exc), 502)
        state, verifier = secrets.token_urlsafe(24), new_verifier()
        scope = requested_scopes(deps.config.scope_version, ehr_launch=launch is not None)
        pending = {
            "state": state,
            "verifier": verifier,
            "endpoints": dataclasses.asdict(endpoints),
            "redirect": redirect_uri(),
        }
        sid = deps.sessions.create({"pending": pending})
        url = deps.client.authorize_url(endpoints, pending["redirect"], scope, state, verifier, launch)
        return cookie(redirect(url), sid)  # type: ignore[arg-type]

    def page_error(message: str, status: int) -> Response:
        return Response(render_template("error.html", message=message), status=status)

    @app.get("/launch")
    def launch() -> Response:
        iss, launch_id = request.args.get("iss", ""), request.args.get("launch", "")
        if not iss or not launch_id:
            return page_error("An EHR launch needs iss and launch.", 400)
        if not deps.client.same_server(iss):
            log.warning("worklist: refused an EHR launch from an unexpected iss")
            return page_error("This worklist is registered with another FHIR server; the launch is refused.", 400)
        return begin(launch_id)

    @app.get("/start")
    def standalone() -> Response:
        return begin(None)

    @app.get("/callback")
    def callback() -> Response:
        sid = request.cookies.get(COOKIE)
        session = deps.sessions.load(sid)
        pending = (session or {}).get("pending")
        if not sid or not pending:
            return page_error("The sign-in has expired or was started elsewhere; launch the worklist again.", 400)
        if not secrets.compare_digest(request.args.get("state", ""), pending["state"]):
            return page_error("The sign-in answer does not match this browser's launch.", 400)
        if request.args.get("error"):
            deps.sessions.delete(sid)
            return page_error(f"The EHR refused the sign-in: {request.args.get('error')}", 403)
        endpoints = Endpoints(**pending["endpoints"])
        try:
            tokens = deps.client.exchange(
                endpoints, request.args.get("code", ""), pending["redirect"], pending["verifier"]
            )
            practitioner = deps.client.fhir_user(endpoints, tokens.get("id_token", ""))
        except SmartError as exc:
            deps.sessions.delete(sid)
            return page_error(str(exc), 401)
        deps.sessions.delete(sid)  # a fresh id after sign-in (no fixation)
        new_sid = deps.sessions.create(
            {
                "token_endpoint": endpoints.token,
                "access_token": tokens["access_token"],
                "refresh_token": tokens.get("refresh_token"),
                "expires_at": time.time() + int(tokens.get("expires_in", 300)),
                "practitioner": practitioner,
                "patient": f"Patient/{tokens['patient']}" if tokens.get("patient") else None,
                "scope": tokens.get("scope", ""),
            }
        )
        return cookie(redirect(url_for("tasks")), new_sid)  # type: ignore[arg-type]

    @app.before_request
    def signed_in() -> Response | None:
        if request.endpoint in {"launch", "standalone", "callback", "static"}:
            return None
        sid = request.cookies.get(COOKIE)
        session = deps.sessions.load(sid)
        if not sid or not session or "access_token" not in session:
            return page_error("Not signed in: open the worklist from the EHR (or start it).", 401)
        if request.method not in {"GET", "HEAD"}:
            given = request.form.get("csrf", "")
            if not given or not secrets.compare_digest(given, session["csrf"]):
                abort(400, "missing or wrong CSRF token")
        if session["expires_at"] - REFRESH_MARGIN < time.time():
            if not session.get("refresh_token"):
                deps.sessions.delete(sid)
                return page_error("The session has ended; launch the worklist again.", 401)
            try:
                tokens = deps.client.refresh(session["token_endpoint"], session["refresh_token"])
            except SmartError as exc:
                deps.sessions.delete(sid)
                return page_error(f"The session has ended ({exc}); launch the worklist again.", 401)
            session["access_token"] = tokens["access_token"]
            session["refresh_token"] = tokens.get("refresh_token", session["refresh_token"])
            session["expires_at"] = time.time() + int(tokens.get("expires_in", 300))
            deps.sessions.save(sid, session)
        g.sid, g.session = sid, session
        g.fhir = UserFhir(deps.client.fhir_base, session["access_token"], deps.client.http)
        return None

    @app.errorhandler(FhirError)
    def fhir_error(exc: FhirError) -> Response:
        status = exc.status if exc.status in (401, 403, 404, 409, 412) else 502
        return page_error(str(exc), status)

    @app.after_request
    def headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"  # the callback's code never leaks onward
        if response.mimetype == "text/html":
            response.headers["Cache-Control"] = "no-store"
        return response

    def who() -> Identity:
        return identity(g.fhir, g.session["practitioner"])

    def context() -> dict[str, Any]:
        return {"csrf": g.session["csrf"], "practitioner": g.session["practitioner"], "patient": g.session["patient"]}

    @app.get("/")
    def tasks() -> str:
        rows = my_tasks(g.fhir, who(), g.session["patient"], deps.clock())
        return render_template("list.html", rows=rows, **context())

    @app.get("/task/<task_id>")
    def task(task_id: str) -> Response | str:
        resource, _ = g.fhir.read("Task", task_id)
        if not is_mine(resource, who()):
            return page_error("This task is not on your worklist.", 403)
        changes = history(g.fhir, task_id)
        return render_template(
            "task.html", task=resource, history=changes, versions=versions(g.fhir, task_id), **context()
        )

    @app.post("/task/<task_id>/<outcome>")
    def finish_task(task_id: str, outcome: str) -> Response:
        if outcome not in OUTCOMES:
            abort(404)
        reason = request.form.get("reason", "").strip()[:MAX_REASON]
        if outcome == "not-needed" and not reason:
            return page_error("Say why the task is not needed.", 400)
        try:
            finish(g.fhir, task_id, who(), outcome, reason, deps.clock())
        except NotYours:
            log.warning("worklist: refused to change a task not on the user's worklist")
            return page_error("This task is not on your worklist; nothing was changed.", 403)
        log.info("worklist: task %s set to %s by the signed-in user", task_id, OUTCOMES[outcome])
        return redirect(url_for("tasks"))  # type: ignore[return-value]

    @app.get("/messages")
    def messages() -> str:
        person = who()
        found = my_messages(g.fhir, person, groups_of(g.fhir, person.practitioner))
        return render_template("messages.html", messages=found, **context())

    @app.get("/messages/<comm_id>")
    def message(comm_id: str) -> Response | str:
        person = who()
        found = open_message(g.fhir, comm_id, person, groups_of(g.fhir, person.practitioner), deps.clock())
        if found is None:
            return page_error("This message is not addressed to you.", 403)
        return render_template("message.html", message=found, **context())

    @app.post("/logout")
    def logout() -> Response:
        deps.sessions.delete(g.sid)
        response = Response(render_template("error.html", message="Signed out."))
        response.delete_cookie(COOKIE, path=request.script_root or "/")
        return response

    return app
