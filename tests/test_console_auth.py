"""Who may use the console, against a real `serve` on a real Redis: accounts made with the CLI, login and
logout, the cookie's flags, rate-limited logins, CSRF on every state-changing rule, a login redirect for
every page, roles, and the embedded quick start's printed admin password."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
from flask import Flask
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from fhir_smartflow.config import Settings
from fhir_smartflow.console import create_console_app
from fhir_smartflow.console.audit import Audit
from fhir_smartflow.console.auth import require
from fhir_smartflow.console.csrf import UNSAFE
from fhir_smartflow.console.deps import build_console_deps
from fhir_smartflow.console.headers import CSP
from fhir_smartflow.console.keys import ConsoleKeys
from fhir_smartflow.worker.runtime import utc_now
from tests.support.console import (
    CONSOLE_SECRET,
    ConsoleClient,
    ConsoleServe,
    console_rules,
    copy_site,
    start_console_serve,
)
from tests.support.net import free_port
from tests.support.procs import smartflow_cmd
from tests.support.toml import write_config

pytestmark = pytest.mark.integration

ADMIN_PW = "admin-password-0123"
VIEWER_PW = "viewer-password-0123"


@pytest.fixture
def console(processes, run_cli, tmp_path: Path, redis_url: str) -> ConsoleServe:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    started = start_console_serve(
        processes,
        tmp_path,
        redis_url=redis_url,
        prefix=prefix,
        extra={"console": {"login_attempts": 3, "proxy_hops": 1}},
    )
    env = started.env
    done = run_cli(
        "console", "add-user", "alice", "--role", "admin", env={**env, "SMARTFLOW_CONSOLE_PASSWORD": ADMIN_PW}
    )
    assert done.returncode == 0, done.stderr
    # The password on stdin, as a script would pipe it.
    piped = subprocess.run(
        smartflow_cmd("console", "add-user", "victor", "--role", "viewer"),
        input=f"{VIEWER_PW}\n",
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert piped.returncode == 0, piped.stderr
    short = run_cli("console", "add-user", "eve", env={**env, "SMARTFLOW_CONSOLE_PASSWORD": "short"})
    assert short.returncode == 2 and short.stderr.strip().splitlines() == [
        "console add-user: password: at least 12 characters"
    ]
    return started


def test_login_sets_a_protected_cookie_and_logout_ends_the_session(console) -> None:
    base = console.base
    client = ConsoleClient(base)
    page = client.get("/login")
    assert page.headers["Content-Security-Policy"] == CSP
    assert "default-src 'self'" in CSP and "http" not in CSP  # no other origin
    done = client.login("alice", ADMIN_PW)
    assert done.status_code == 302 and done.headers["Location"].endswith("/console/")
    cookie = done.headers["Set-Cookie"]
    for flag in ("HttpOnly", "SameSite=Lax", "Secure", "Path=/console"):
        assert flag in cookie, cookie
    home = client.page("/")
    assert home.status_code == 200 and "alice (admin)" in home.text
    stolen = dict(client.http.cookies)
    out = client.post("/logout", {"csrf_token": client.token(urlsplit(home.url).path.removeprefix("/console"))})
    assert out.status_code == 302 and out.headers["Location"].endswith("/console/login")
    replay = ConsoleClient(base)
    replay.http.cookies.update(stolen)  # the cookie from before logout no longer opens anything
    assert not replay.logged_in()


def test_wrong_password_refused_and_logins_rate_limited_per_user(console) -> None:
    base, serve = console.base, console.process
    client = ConsoleClient(base)
    client.http.headers["X-Forwarded-For"] = "203.0.113.7"  # as the trusted proxy says
    for _ in range(3):
        assert client.login("alice", "not-the-password!").status_code == 401
    limited = client.login("alice", ADMIN_PW)  # even the right password waits now
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) > 0
    assert client.login("victor", VIEWER_PW).status_code == 302  # another account from the same address
    elsewhere = ConsoleClient(base)
    elsewhere.http.headers["X-Forwarded-For"] = "203.0.113.8"
    assert elsewhere.login("alice", ADMIN_PW).status_code == 302  # the same account from another address
    typo = "my-password-in-the-name-field"
    assert client.login(typo, ADMIN_PW).status_code == 401
    assert typo not in serve.output() and ADMIN_PW not in serve.output() and "not-the-password" not in serve.output()


def test_removed_account_loses_its_session_at_once(console, run_cli, redis_conn: redis.Redis) -> None:
    base, env, prefix = console.base, console.env, console.prefix
    client = ConsoleClient(base)
    assert client.login("victor", VIEWER_PW).status_code == 302
    assert client.logged_in()
    assert run_cli("console", "remove-user", "victor", env=env).returncode == 0
    assert not client.logged_in()
    assert run_cli("console", "remove-user", "victor", env=env).returncode == 1
    trail = [(e.user, e.action, e.target) for e in Audit(redis_conn, ConsoleKeys(prefix), utc_now).recent()]
    assert trail[:2] == [("(command line)", "account.remove", "victor"), ("victor", "login", "")]
    assert ("(command line)", "account.add", "alice") in trail


def test_every_state_changing_rule_refuses_a_request_without_the_csrf_token(console) -> None:
    base, env = console.base, console.env
    client = ConsoleClient(base)
    assert client.login("alice", ADMIN_PW).status_code == 302
    unsafe = [(e, p, m & UNSAFE) for e, p, m in console_rules(Path(env["SMARTFLOW_CONFIG"])) if m & UNSAFE]
    assert {"login", "logout"} <= {e for e, _, _ in unsafe}
    for endpoint, path, methods in unsafe:
        for method in sorted(methods):
            for data in ({}, {"csrf_token": "forged"}):
                answer = client.request(method, path, data)
                assert answer.status_code == 400, (endpoint, method, path, answer.status_code)
    assert client.logged_in()  # the refusals changed nothing


def test_every_page_without_a_session_redirects_to_login(console) -> None:
    base, env = console.base, console.env
    client = ConsoleClient(base)
    pages = [(e, p) for e, p, m in console_rules(Path(env["SMARTFLOW_CONFIG"])) if "GET" in m]
    pages = [(e, p) for e, p in pages if e not in {"login", "static"} and not e.startswith("login_")]
    assert pages
    for endpoint, path in pages:
        answer = client.get(path)
        assert answer.status_code == 302, (endpoint, path, answer.status_code)
        assert answer.headers["Location"].startswith("/console/login?next="), (endpoint, answer.headers["Location"])


def test_a_viewer_may_read_but_not_use_admin_views(redis_conn: redis.Redis) -> None:
    deps = build_console_deps(Settings(), redis_conn, secret_key=CONSOLE_SECRET, embedded=True)
    deps.accounts.add("victor", VIEWER_PW, "viewer")
    app = create_console_app(deps)
    app.add_url_rule("/admin-only", "admin_only", require("admin")(lambda: "edited"), methods=["GET", "POST"])
    outer = Flask("outer")
    outer.wsgi_app = DispatcherMiddleware(outer.wsgi_app, {"/console": app})  # type: ignore[method-assign]
    web = outer.test_client()
    page = web.get("/console/login").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    web.post("/console/login", data={"username": "victor", "password": VIEWER_PW, "csrf_token": token})
    assert web.get("/console/", follow_redirects=True).status_code == 200
    assert web.get("/console/admin-only").status_code == 403


def test_embedded_mode_prints_a_generated_admin_password_once(processes, tmp_path: Path) -> None:
    site = copy_site(tmp_path)
    port = free_port()
    config = write_config(tmp_path / "smartflow.toml", {"server": {"port": port}, "engine": site.engine_section()})
    serve = processes(smartflow_cmd("serve", "--embedded"), {"SMARTFLOW_CONFIG": str(config)}, "embedded")
    out = serve.wait_output("  password: ", timeout=60)
    base = f"http://127.0.0.1:{port}/console"
    serve.wait_http(f"{base}/login")
    password = re.search(r"^  password: (\S+)$", out, re.M).group(1)  # type: ignore[union-attr]
    assert "CONSOLE ADMIN PASSWORD" in out
    client = ConsoleClient(base)
    done = client.login("admin", password)
    assert done.status_code == 302 and "Secure" not in done.headers["Set-Cookie"]  # plain HTTP on this machine
    assert "Embedded mode" in client.page("/").text
    assert serve.output().count(password) == 1  # printed once, never logged


_COUNT_HASHES = """
import argon2
calls = []
hash_password = argon2.PasswordHasher.hash
argon2.PasswordHasher.hash = lambda self, *a, **k: calls.append(1) or hash_password(self, *a, **k)
import fhir_smartflow.cli
print(len(calls))
from fhir_smartflow.console.accounts import Accounts, MemoryBackend
accounts = Accounts(MemoryBackend())
print(len(calls), accounts.verify("nobody", "not-a-password-at-all"))
"""


def test_a_process_starts_without_hashing_and_an_unknown_name_is_verified_against_a_hash() -> None:
    """Every command (a health probe every few seconds) imports the accounts module: no argon2 hash
    (≈ 0.2 s of CPU, 64 MiB) at import; the first Accounts makes the one an unknown name is checked against."""
    out = subprocess.run(
        [sys.executable, "-c", _COUNT_HASHES], capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    assert out == ["0", "1", "None"]
