"""CSRF protection for the whole console: one token per session, checked before every state-changing
request (POST, PUT, PATCH, DELETE) — views need nothing. Forms use ``{{ csrf_field() }}``; scripts send
the token of ``csrf_token()`` (in the page's ``<meta name="csrf-token">``) as ``X-CSRF-Token``."""

from __future__ import annotations

import hmac
import secrets

from flask import Flask, abort, request, session
from markupsafe import Markup, escape

FIELD = "csrf_token"
HEADER = "X-CSRF-Token"
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def csrf_token() -> str:
    """This session's token (made on first use)."""
    token = session.get(FIELD)
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session[FIELD] = token
    return token


def csrf_field() -> Markup:
    """The hidden form input carrying the token."""
    return Markup(f'<input type="hidden" name="{FIELD}" value="{escape(csrf_token())}">')


def install_csrf(app: Flask) -> None:
    app.jinja_env.globals["csrf_token"] = csrf_token
    app.jinja_env.globals["csrf_field"] = csrf_field

    @app.before_request
    def check_csrf() -> None:
        if request.method not in UNSAFE:
            return
        expected = session.get(FIELD)
        sent = request.headers.get(HEADER) or request.form.get(FIELD, "")
        if not isinstance(expected, str) or not sent or not hmac.compare_digest(expected, sent):
            abort(400, description="The form has expired or did not come from this console; reload the page.")
