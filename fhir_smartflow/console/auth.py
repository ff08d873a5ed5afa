"""Who may use the console: login / logout, server-side sessions, ``require(role)``, ``current_user()``.

The session cookie (Flask's, signed with the console key) holds only a random session id and the CSRF
token; the session itself (account name) lives in Redis (or memory) so logout and removing an account end
it at once. Failed logins are counted per account name + client address (``LoginLimiter``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import redis
from flask import Flask, abort, current_app, g, redirect, render_template, request, session, url_for
from werkzeug.wrappers import Response

from fhir_smartflow.console.accounts import ROLES, ConsoleUser
from fhir_smartflow.console.keys import ConsoleKeys

if TYPE_CHECKING:
    from fhir_smartflow.console.deps import ConsoleDeps

F = TypeVar("F", bound=Callable[..., Any])


class Sessions:
    """Session id → account name, expiring after ``ttl_seconds``; Redis when given, else memory."""

    def __init__(self, conn: redis.Redis | None, keys: ConsoleKeys, ttl_seconds: int) -> None:
        self.conn, self.keys, self.ttl = conn, keys, ttl_seconds
        self._memory: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def start(self, user: str) -> str:
        sid = secrets.token_urlsafe(32)
        if self.conn is None:
            with self._lock:
                self._memory[sid] = (user, time.monotonic() + self.ttl)
        else:
            self.conn.set(self.keys.session(sid), json.dumps({"user": user}), ex=self.ttl)
        return sid

    def user(self, sid: str) -> str | None:
        if self.conn is None:
            with self._lock:
                found = self._memory.get(sid)
            return found[0] if found and found[1] > time.monotonic() else None
        raw = self.conn.get(self.keys.session(sid))
        return json.loads(raw)["user"] if raw else None  # type: ignore[arg-type]

    def end(self, sid: str) -> None:
        if self.conn is None:
            with self._lock:
                self._memory.pop(sid, None)
        else:
            self.conn.delete(self.keys.session(sid))


class LoginLimiter:
    """At most ``attempts`` failed logins per (account name, client address) within ``window`` seconds."""

    def __init__(self, conn: redis.Redis | None, keys: ConsoleKeys, attempts: int, window: int) -> None:
        self.conn, self.keys, self.attempts, self.window = conn, keys, attempts, window
        self._memory: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()

    def _key(self, name: str, address: str) -> str:
        # Hashed: the key names neither the account nor the address.
        return self.keys.login_failures(hashlib.sha256(f"{name}\0{address}".encode()).hexdigest()[:32])

    def retry_after(self, name: str, address: str) -> int:
        """Seconds until another attempt is allowed; 0 when one is allowed now."""
        key = self._key(name, address)
        if self.conn is None:
            with self._lock:
                count, until = self._memory.get(key, (0, 0.0))
            left = until - time.monotonic()
            return max(1, int(left)) if count >= self.attempts and left > 0 else 0
        count = int(self.conn.get(key) or 0)  # type: ignore[arg-type]
        if count < self.attempts:
            return 0
        return max(1, int(self.conn.ttl(key)))  # type: ignore[arg-type]

    def failed(self, name: str, address: str) -> None:
        key = self._key(name, address)
        if self.conn is None:
            with self._lock:
                count, until = self._memory.get(key, (0, 0.0))
                if until <= time.monotonic():
                    count, until = 0, time.monotonic() + self.window
                self._memory[key] = (count + 1, until)
            return
        pipe = self.conn.pipeline()
        pipe.incr(key)
        pipe.expire(key, self.window, nx=True)
        pipe.execute()

    def succeeded(self, name: str, address: str) -> None:
        key = self._key(name, address)
        if self.conn is None:
            with self._lock:
                self._memory.pop(key, None)
        else:
            self.conn.delete(key)


def deps() -> ConsoleDeps:
    """The running console's collaborators (inside a request)."""
    return current_app.extensions["console"]  # type: ignore[no-any-return]


def current_user() -> ConsoleUser | None:
    """The logged-in user of this request (their role as the account has it now), or None."""
    if "console_user" not in g:
        sid = session.get("sid")
        name = deps().sessions.user(sid) if isinstance(sid, str) else None
        g.console_user = deps().accounts.get(name) if name else None
    user: ConsoleUser | None = g.console_user
    return user


def require(role: str) -> Callable[[F], F]:
    """View decorator: no session → 302 to the login page (back here after); a lesser role → 403."""
    if role not in ROLES:
        raise ValueError(f"unknown console role {role!r}; one of {', '.join(ROLES)}")

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            user = current_user()
            if user is None:
                return redirect(url_for("login", next=_here()))
            if not user.can(role):
                abort(403)
            return view(*args, **kwargs)

        return wrapped  # type: ignore[return-value]

    return decorate


def _here() -> str:
    query = request.query_string.decode()
    return request.script_root + request.path + (f"?{query}" if query else "")


def _safe_next(target: str | None) -> str:
    """Only a path inside the console (no other host, no scheme-relative URL) is followed after login."""
    root = request.script_root or ""
    if target and target.startswith(f"{root}/") and not target.startswith("//") and "\\" not in target:
        return target
    return f"{root}/"


def _client_address() -> str:
    return request.remote_addr or "unknown"


def register_auth(app: Flask) -> None:
    """The login and logout routes (GET shows the form; POST, with the CSRF token, logs in)."""

    @app.route("/login", methods=["GET", "POST"])
    def login() -> Response | str | tuple[str, int, dict[str, str]]:
        if request.method == "GET":
            return render_template("login.html", next=request.args.get("next", ""), error=None)
        name = request.form.get("username", "").strip()
        password = request.form.get("password", "")
        target = request.form.get("next", "")
        limiter, address = deps().limiter, _client_address()
        wait = limiter.retry_after(name, address)
        if wait:
            deps().audit.record(name or "?", "login.limited")
            error = f"Too many failed attempts. Try again in {wait} seconds."
            body = render_template("login.html", next=target, error=error)
            return body, 429, {"Retry-After": str(wait)}
        user = deps().accounts.verify(name, password) if name and password else None
        if user is None:
            limiter.failed(name, address)
            deps().audit.record(name or "?", "login.refused")
            return render_template("login.html", next=target, error="Wrong user name or password."), 401, {}
        limiter.succeeded(name, address)
        old = session.get("sid")
        if isinstance(old, str):
            deps().sessions.end(old)
        session.clear()  # a fresh session id and CSRF token: nothing set before login carries over
        session["sid"] = deps().sessions.start(user.name)
        session.permanent = True
        deps().audit.record(user.name, "login")
        return redirect(_safe_next(target))

    @app.route("/logout", methods=["POST"])
    def logout() -> Response:
        sid = session.get("sid")
        user = current_user()
        if isinstance(sid, str):
            deps().sessions.end(sid)
        session.clear()
        if user is not None:
            deps().audit.record(user.name, "logout")
        return redirect(url_for("login"))
