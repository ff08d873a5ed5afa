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
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, TypeVar

import redis
from flask import Flask, abort, current_app, g, redirect, render_template, request, session, url_for
from werkzeug.wrappers import Response

from fhir_smartflow.console.accounts import ROLES, ConsoleUser
from fhir_smartflow.console.keys import ConsoleKeys
from fhir_smartflow.console.oidc import OidcError, Pending

if TYPE_CHECKING:
    from fhir_smartflow.console.deps import ConsoleDeps

F = TypeVar("F", bound=Callable[..., Any])


LOCAL = "local"  # a console account
OIDC = "oidc"  # a user the EHR's login server vouched for, listed in [console] oidc_users


class Sessions:
    """Session id → (user name, how they logged in), expiring after ``ttl_seconds``; Redis when given,
    else memory."""

    def __init__(self, conn: redis.Redis | None, keys: ConsoleKeys, ttl_seconds: int) -> None:
        self.conn, self.keys, self.ttl = conn, keys, ttl_seconds
        self._memory: dict[str, tuple[str, str, float]] = {}
        self._lock = threading.Lock()

    def start(self, user: str, source: str = LOCAL) -> str:
        sid = secrets.token_urlsafe(32)
        if self.conn is None:
            with self._lock:
                self._memory[sid] = (user, source, time.monotonic() + self.ttl)
        else:
            self.conn.set(self.keys.session(sid), json.dumps({"user": user, "source": source}), ex=self.ttl)
        return sid

    def get(self, sid: str) -> tuple[str, str] | None:
        """(user, source) of a live session."""
        if self.conn is None:
            with self._lock:
                found = self._memory.get(sid)
            return (found[0], found[1]) if found and found[2] > time.monotonic() else None
        raw = self.conn.get(self.keys.session(sid))
        if not raw:
            return None
        record = json.loads(raw)  # type: ignore[arg-type]
        return record["user"], record.get("source", LOCAL)

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
        found = deps().sessions.get(sid) if isinstance(sid, str) else None
        g.console_user = _user_of(*found) if found else None
    user: ConsoleUser | None = g.console_user
    return user


def _user_of(name: str, source: str) -> ConsoleUser | None:
    """The user with the role they have now (an account removed, or a name taken off oidc_users: none)."""
    if source == OIDC:
        oidc = deps().oidc
        role = oidc.role_of(name) if oidc is not None else None
        return ConsoleUser(name, role) if role else None
    return deps().accounts.get(name)


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


def _start_session(name: str, source: str) -> None:
    old = session.get("sid")
    if isinstance(old, str):
        deps().sessions.end(old)
    session.clear()  # a fresh session id and CSRF token: nothing set before login carries over
    session["sid"] = deps().sessions.start(name, source)
    session.permanent = True
    deps().audit.record(name, "login", detail="" if source == LOCAL else source)


def _oidc_return() -> str:
    return deps().settings.console.oidc_redirect_uri or url_for("login_oidc_done", _external=True)


def _login_error(message: str, status: int) -> Response:
    return Response(render_template("login.html", next="", error=message), status=status, mimetype="text/html")


def register_auth(app: Flask, with_oidc: bool) -> None:
    """The login and logout routes (GET shows the form; POST, with the CSRF token, logs in); with
    ``with_oidc``, the way through the EHR's login server too."""

    @app.route("/login", methods=["GET", "POST"])
    def login() -> Response | str | tuple[str, int, dict[str, str]]:
        if request.method == "GET":
            return render_template("login.html", next=request.args.get("next", ""), error=None)
        name = request.form.get("username", "").strip()
        password = request.form.get("password", "")
        target = request.form.get("next", "")
        limiter, address = deps().limiter, _client_address()
        # A name that is no account is not recorded: it may be a password typed in the wrong field.
        who = name if name and deps().accounts.get(name) else "(unknown account)"
        wait = limiter.retry_after(name, address)
        if wait:
            deps().audit.record(who, "login.limited")
            error = f"Too many failed attempts. Try again in {wait} seconds."
            body = render_template("login.html", next=target, error=error)
            return body, 429, {"Retry-After": str(wait)}
        user = deps().accounts.verify(name, password) if name and password else None
        if user is None:
            limiter.failed(name, address)
            deps().audit.record(who, "login.refused")
            return render_template("login.html", next=target, error="Wrong user name or password."), 401, {}
        limiter.succeeded(name, address)
        _start_session(user.name, LOCAL)
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

    if with_oidc:
        _register_oidc(app)


def _register_oidc(app: Flask) -> None:
    """Login through the EHR's server: off to it, and back with a code (the session's state must match)."""

    @app.route("/login/oidc")
    def login_oidc() -> Response:
        """Off to the EHR's login server; it sends the user back to ``login_oidc_done``."""
        oidc = deps().oidc
        assert oidc is not None  # registered only with it
        pending = Pending.new()
        session["oidc"] = {**asdict(pending), "next": request.args.get("next", "")}
        try:
            return redirect(oidc.authorize_url(_oidc_return(), pending))
        except OidcError as exc:
            return _login_error(str(exc), 502)

    @app.route("/login/oidc/done")
    def login_oidc_done() -> Response:
        oidc = deps().oidc
        assert oidc is not None  # registered only with it
        kept = session.pop("oidc", None)
        state, code = request.args.get("state", ""), request.args.get("code", "")
        if not isinstance(kept, dict) or not state or not secrets.compare_digest(state, str(kept.get("state", ""))):
            abort(400, description="This login did not start here (state); log in again.")
        if not code:
            return _login_error("The EHR's login server did not log you in.", 401)
        pending = Pending(kept["state"], kept["nonce"], kept["verifier"])
        try:
            name = oidc.finish(code, _oidc_return(), pending)
        except OidcError as exc:
            deps().audit.record("(unknown account)", "login.refused", detail="oidc")
            return _login_error(str(exc), 401)
        if oidc.role_of(name) is None:
            deps().audit.record("(not a console user)", "login.refused", detail="oidc")
            return _login_error("The EHR knows you, but you are not a user of this console.", 403)
        _start_session(name, OIDC)
        return redirect(_safe_next(str(kept.get("next", ""))))
