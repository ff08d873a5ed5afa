"""The console in tests: a site of its own (copies of the repository's flows, templates and mappings in
``tmp_path``, so saves never touch the repository), a logged-in HTTP client, and the app's url_map."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import requests

from tests.support.procs import ROOT, Process

CONSOLE_SECRET = "test-console-signing-key-0123456789abcdef"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
META = re.compile(r'<meta name="csrf-token" content="([^"]+)"')


@dataclass(frozen=True)
class Site:
    flows: Path
    templates: Path
    mappings: Path

    def engine_section(self) -> dict[str, list[str]]:
        return {"flows": [str(self.flows)], "templates": [str(self.templates)], "mappings": [str(self.mappings)]}


def copy_site(tmp_path: Path) -> Site:
    """The repository's flows, templates and mappings, copied under ``tmp_path/site``."""
    base = tmp_path / "site"
    for name, source in (("flows", "flows/examples"), ("templates", "templates"), ("mappings", "mappings")):
        shutil.copytree(ROOT / source, base / name)
    return Site(base / "flows", base / "templates", base / "mappings")


class ConsoleClient:
    """A browser-like client of a console at ``base`` (e.g. ``http://127.0.0.1:8080/console``)."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")
        self.http = requests.Session()

    def _plain_http(self) -> None:
        # The console marks its cookie Secure outside embedded mode; the tests talk plain HTTP to loopback,
        # where a browser would send it (localhost is a secure context) but requests would not.
        for cookie in self.http.cookies:
            cookie.secure = False

    def get(self, path: str, **kwargs: object) -> requests.Response:
        response = self.http.get(self.base + path, allow_redirects=False, timeout=10, **kwargs)  # type: ignore[arg-type]
        self._plain_http()
        return response

    def post(self, path: str, data: dict[str, str] | None = None, **kwargs: object) -> requests.Response:
        return self.request("POST", path, data, **kwargs)

    def request(
        self, method: str, path: str, data: dict[str, str] | None = None, **kwargs: object
    ) -> requests.Response:
        response = self.http.request(method, self.base + path, data=data, allow_redirects=False, timeout=30, **kwargs)  # type: ignore[arg-type]
        self._plain_http()
        return response

    def page(self, path: str) -> requests.Response:
        """GET ``path``, following redirects inside the console (the landing page may send on)."""
        response = self.get(path)
        root = urlsplit(self.base).path
        for _ in range(5):
            if not response.is_redirect:
                break
            location = urlsplit(response.headers["Location"]).path
            query = urlsplit(response.headers["Location"]).query
            assert location.startswith(root), response.headers["Location"]
            response = self.get(location[len(root) :] + (f"?{query}" if query else ""))
        return response

    def logged_in(self) -> bool:
        """True when the landing page opens (not the login page)."""
        page = self.page("/")
        return page.status_code == 200 and "/login" not in page.url

    def token(self, path: str = "/login") -> str:
        """The CSRF token of this session, as the page at ``path`` carries it."""
        page = self.get(path).text
        found = CSRF.search(page) or META.search(page)
        assert found, f"no CSRF token on {path}"
        return found.group(1)

    def login(self, name: str, password: str) -> requests.Response:
        return self.post("/login", {"username": name, "password": password, "csrf_token": self.token()})


def console_rules(config: Path) -> list[tuple[str, str, frozenset[str]]]:
    """(endpoint, path under the mount with placeholder arguments, methods) of every rule of the console
    app that ``serve`` builds from ``config`` (pages included)."""
    from fhir_smartflow.config import load_settings
    from fhir_smartflow.console import create_console_app
    from fhir_smartflow.console.deps import build_console_deps

    app = create_console_app(build_console_deps(load_settings(config, env={}), None, secret_key=CONSOLE_SECRET))
    adapter = app.url_map.bind("localhost")
    found = []
    for rule in app.url_map.iter_rules():
        path = adapter.build(rule.endpoint, {arg: "1" for arg in rule.arguments}, append_unknown=False)
        found.append((rule.endpoint, path, frozenset(rule.methods or ())))
    return found


@dataclass(frozen=True)
class ConsoleServe:
    base: str  # the console's URL
    config: Path
    env: dict[str, str]  # what each CLI call needs (config, console key)
    prefix: str
    process: Process


def start_console_serve(
    processes: Callable[..., Process],
    tmp_path: Path,
    *,
    redis_url: str,
    prefix: str,
    extra: dict[str, dict[str, object]] | None = None,
    env: dict[str, str] | None = None,
) -> ConsoleServe:
    """`serve --insecure-dev` on the test's Redis with the console on a copied site."""
    from tests.support.net import free_port
    from tests.support.procs import smartflow_cmd
    from tests.support.toml import write_config

    site = copy_site(tmp_path)
    port = free_port()
    sections: dict[str, dict[str, object]] = {
        "server": {"port": port},
        "redis": {"url": redis_url, "key_prefix": prefix},
        "fhir": {"base_url": "http://127.0.0.1:9/fhir"},  # never called by these tests
        "engine": dict(site.engine_section()),
        **(extra or {}),
    }
    config = write_config(tmp_path / "smartflow.toml", sections)
    env = {"SMARTFLOW_CONFIG": str(config), "SMARTFLOW_CONSOLE_SECRET": CONSOLE_SECRET, **(env or {})}
    serve = processes(smartflow_cmd("serve", "--insecure-dev"), env, "serve")
    base = f"http://127.0.0.1:{port}/console"
    serve.wait_http(f"{base}/login")
    return ConsoleServe(base, config, env, prefix, serve)
