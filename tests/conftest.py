"""Shared fixtures (the helpers they use are in tests/support/).

The suite starts its own ``redis-server`` on a free port (session fixture) and never touches a Redis it
did not start. Each test that touches Redis gets a DB of that server no other test uses, flushed after
it (the shape of rq's tests/__init__.py). Connections are passed explicitly.

Tests that use a real Redis, real child processes or real servers carry the ``integration`` marker
(module-level ``pytestmark``) and get them from the fixtures listed in REAL_FIXTURES; a test using one of
those without the marker fails.
"""

from __future__ import annotations

import itertools
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from tests.support import procs
from tests.support.fhir import Sandbox, serve_sandbox
from tests.support.lifecycle import start_stack  # noqa: F401 - fixture
from tests.support.net import Receiver, ThreadedWsgiServer
from tests.support.openemr import any_emulator, emulator, key_file, private_pem  # noqa: F401 - fixtures
from tests.support.procs import Process, RedisServer

# Databases of the suite's own redis-server: each test takes the next unused one, so none is reused.
_DATABASES = 1024

# Fixtures that start or reach something outside the test process; using one needs the marker.
REAL_FIXTURES = frozenset(
    {
        "redis_server",
        "processes",
        "run_cli",
        "serve_app",
        "receiver",
        "sandbox_server",
        "emulator",
        "chaos_redis",
        "browser",
        "page",
    }
)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The suite's own ``redis-server`` on a free port (never a Redis the suite did not start)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"), databases=_DATABASES).start()
    yield server
    server.stop()


_next_db = itertools.count(1)


@pytest.fixture
def redis_db(redis_server: RedisServer) -> Iterator[int]:
    """An empty Redis DB number of the suite's own server, used by this test only; flushed after it."""
    db = next(_next_db)
    if db >= _DATABASES:
        pytest.fail(f"the suite's redis-server has only {_DATABASES} databases")
    conn = redis_server.client(db=db)
    try:
        yield db
    finally:
        conn.flushdb()
        conn.close()


@pytest.fixture
def redis_url(redis_server: RedisServer, redis_db: int) -> str:
    return redis_server.url_for(redis_db)


@pytest.fixture
def redis_conn(redis_url: str) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(redis_url)
    yield conn
    conn.close()


T = TypeVar("T", Process, ThreadedWsgiServer)


def _stopped_at_the_end(make: Callable[..., T]) -> Iterator[Callable[..., T]]:
    """A fixture's factory: what ``make`` starts is stopped at the end of the test, last first."""
    started: list[T] = []

    def start(*args: Any, **kwargs: Any) -> T:
        started.append(make(*args, **kwargs))
        return started[-1]

    yield start
    for thing in reversed(started):
        thing.stop()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Callable[..., Process]]:
    """Start real processes: ``processes(args, env=None, name="proc")``, logs under tmp_path."""
    numbers = itertools.count()

    def process(args: list[str], env: dict[str, str] | None = None, name: str = "proc") -> Process:
        return Process(args, tmp_path / f"{name}-{next(numbers)}.log", env)

    yield from _stopped_at_the_end(process)


@pytest.fixture
def run_cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run one ``fhir-smartflow`` command to completion in a child process (`tests.support.procs.run_cli`)."""
    return procs.run_cli


@pytest.fixture
def serve_app() -> Iterator[Callable[..., ThreadedWsgiServer]]:
    """Serve WSGI apps over real HTTP: ``serve_app(app, port=0)`` (a free port by default)."""
    yield from _stopped_at_the_end(ThreadedWsgiServer)


@pytest.fixture
def receiver(serve_app: Callable[..., ThreadedWsgiServer]) -> Receiver:
    """A real HTTP server that records every request and answers 200 (see `Receiver`)."""
    return Receiver().listen(serve_app)


@pytest.fixture
def sandbox_server(serve_app: Callable[..., ThreadedWsgiServer]) -> Iterator[Sandbox]:
    """Base URL of a fresh in-memory sandbox FHIR store served over real HTTP (fault injection enabled
    but idle: POST {base}/$faults to turn it on). ``.app`` is the Flask app, ``.log`` the requests it got."""
    sandbox = serve_sandbox(serve_app)
    yield sandbox
    sandbox.close()


def pytest_addoption(parser: pytest.Parser) -> None:
    # Here, not in tests/chaos/conftest.py: pytest only takes options from the top conftest or plugins.
    parser.addoption(
        "--chaos-long",
        action="store_true",
        default=False,
        help="run the chaos tests in their long form (N = 10,000 notifications instead of 500)",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test reaching real services without the ``integration`` marker fails (so the rule stays true)."""
    used = sorted(REAL_FIXTURES & set(getattr(item, "fixturenames", ())))
    if used and item.get_closest_marker("integration") is None:
        pytest.fail(
            f"uses {', '.join(used)} (a real Redis / process / server) without the integration marker: "
            "add `pytestmark = pytest.mark.integration` to its module",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Headless Chromium (Debian's package) under Playwright, shared by the session's page tests."""
    from tests.support.browser import launch_browser

    yield from launch_browser()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A fresh browser context and page per test (no cookies or storage shared between tests); when the
    test fails, its last page is saved as ``<test name>.png`` in the artifacts directory."""
    from tests.support.browser import artifacts_dir

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    yield page
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        page.screenshot(path=str(artifacts_dir(tmp_path) / f"{request.node.name}.png"), full_page=True)
    context.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined] - read by the page fixture
    return report
