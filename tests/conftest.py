"""Shared fixtures.

The suite starts its own ``redis-server`` on a free port (session fixture) and never touches a Redis it
did not start. Each test that touches Redis gets a DB of that server no other test uses, flushed after
it (the shape of rq's tests/__init__.py). Connections are passed explicitly.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the benchmarks package holds the process helpers tests share
    sys.path.insert(0, str(ROOT))

from benchmarks._procs import RedisServer  # noqa: E402

# Databases of the suite's own redis-server: each test takes the next unused one, so none is reused.
_DATABASES = 1024


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def smartflow_cmd(*args: str) -> list[str]:
    """The installed console script (falls back to the module when run from a bare checkout)."""
    exe = Path(sys.executable).with_name("fhir-smartflow")
    if exe.exists():
        return [str(exe), *args]
    return [sys.executable, "-c", "from fhir_smartflow.cli import main; main()", *args]


class Process:
    """A real child process (serve, worker, sandbox, ...) with its output kept for failure messages."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path, log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_http(self, url: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.args} exited with {self.proc.returncode}:\n{self.output()}")
            try:
                requests.get(url, timeout=0.5)
                return
            except requests.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"{url} did not answer within {timeout}s:\n{self.output()}")

    def stop(self, sig_kill: bool = False) -> int:
        if self.proc.poll() is None:
            if sig_kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[callable]:
    """Start real processes; all are stopped at the end of the test."""
    started: list[Process] = []

    def start(args: list[str], env: dict[str, str] | None = None, name: str = "proc") -> Process:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTFLOW_")}
        full_env.update(env or {})
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        p = Process(args, full_env, ROOT, tmp_path / f"{name}-{len(started)}.log")
        started.append(p)
        return p

    yield start
    for p in reversed(started):
        p.stop()


class ThreadedWsgiServer:
    """A real HTTP server (werkzeug, threaded) for a WSGI app, on a free port, in a daemon thread."""

    def __init__(self, app: Any, port: int = 0) -> None:
        from werkzeug.serving import make_server

        self.server = make_server("127.0.0.1", port, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def sandbox_server() -> Iterator[str]:
    """Base URL of a fresh in-memory sandbox FHIR store served over real HTTP (fault injection enabled
    but idle: POST {base}/$faults to turn it on). The app is reachable as `sandbox_server.app`."""
    from fhir_smartflow.config import Settings
    from fhir_smartflow.sandbox.app import create_sandbox_app

    app = create_sandbox_app(Settings(), faults=True)
    server = ThreadedWsgiServer(app)
    state = app.extensions["sandbox"]
    state.base_url = state.notifier.base_url = server.url
    yield _SandboxURL(server.url, app)
    server.stop()
    app.extensions["sandbox"].close()


class _SandboxURL(str):
    """The base URL (a str), carrying the Flask app for tests that need the store or notifier."""

    app: Any

    def __new__(cls, url: str, app: Any) -> _SandboxURL:
        obj = super().__new__(cls, url)
        obj.app = app
        return obj


# OpenEMR bridge tests: helpers (emulator, keys) in tests/openemr_support.py, fixtures made visible here.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from openemr_support import emulator, key_file, private_pem  # noqa: E402, F401


def pytest_addoption(parser: pytest.Parser) -> None:
    # Here, not in tests/chaos/conftest.py: pytest only takes options from the top conftest or plugins.
    parser.addoption(
        "--chaos-long",
        action="store_true",
        default=False,
        help="run the chaos tests in their long form (N = 10,000 notifications instead of 500)",
    )
