"""Ports, waiting on conditions, and real HTTP servers in a thread (loopback only)."""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from flask import Flask, Response, request

T = TypeVar("T")

_PORTS_FROM = 20_000
_random = random.SystemRandom()  # never the seeded global generator: parallel test processes must not agree


def free_port() -> int:
    """A loopback TCP port nothing listens on right now, below the kernel's ephemeral range: a port from
    that range (``bind`` to 0) can be taken as the source port of any outgoing connection in the
    meantime, before the process it is meant for starts listening on it."""
    low = _ephemeral_low()
    for _ in range(200):
        port = _random.randrange(_PORTS_FROM, low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # that whole range busy: what the kernel gives
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ephemeral_low() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32_768
    return max(low, _PORTS_FROM + 1_000)


def wait_for(
    check: Callable[[], T],
    what: str,
    log: Callable[[], str] | None = None,
    *,
    timeout: float = 30.0,
    interval: float = 0.05,
) -> T:
    """Call ``check`` until it returns something truthy and return that; fail naming ``what`` (with the
    tail of ``log``) after ``timeout`` seconds. ``check`` may raise to fail at once."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = f"\n{log()[-6000:]}" if log is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{tail}")
        time.sleep(interval)


class ThreadedWsgiServer:
    """A real HTTP server (werkzeug, threaded) for a WSGI app, on a free port, in a daemon thread."""

    def __init__(self, app: Any, port: int = 0) -> None:
        from werkzeug.serving import make_server

        self.server = make_server("127.0.0.1", port, app, threaded=True)
        self.port = int(self.server.server_port)
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@dataclass(frozen=True)
class Received:
    method: str
    path: str  # with the query string, if any
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """A WSGI app that records every request; ``listen`` serves it. It answers the scripted ``statuses``
    in order, then ``status`` with ``body`` (JSON), except the requests ``routes`` answers; every answer
    carries ``X-Request-Id: req-<n>``."""

    def __init__(
        self, *, status: int = 200, body: Any = None, routes: dict[tuple[str, str], tuple[int, Any]] | None = None
    ) -> None:
        self.requests: list[Received] = []
        self.statuses: list[tuple[int, dict[str, str]]] = []
        self.url = ""
        self.port = 0
        self._lock = threading.Lock()
        answer = json.dumps({} if body is None else body)
        routes_ = routes or {}  # (method, path) → (status, body): fixed answers for those requests
        app = Flask("receiver")

        @app.route("/", defaults={"path": ""}, methods=["GET", "POST", "PUT", "DELETE"])
        @app.route("/<path:path>", methods=["GET", "POST", "PUT", "DELETE"])
        def catch(path: str) -> Response:
            full_path = request.full_path.rstrip("?")
            with self._lock:
                self.requests.append(Received(request.method, full_path, dict(request.headers), request.get_data()))
                code, headers = self.statuses.pop(0) if self.statuses else (status, {})
                headers = {**headers, "X-Request-Id": f"req-{len(self.requests)}"}
            if (request.method, request.path) in routes_:
                code, routed = routes_[(request.method, request.path)]
                return Response(json.dumps(routed), status=code, headers=headers, mimetype="application/json")
            return Response(answer, status=code, headers=headers, mimetype="application/json")

        self.app = app

    def listen(self, serve: Callable[..., ThreadedWsgiServer], port: int = 0) -> Receiver:
        """Serve over HTTP with ``serve`` (the ``serve_app`` fixture, which stops it)."""
        server = serve(self.app, port)
        self.url, self.port = server.url, server.port
        return self

    def seen(self) -> list[Received]:
        with self._lock:
            return list(self.requests)

    def calls(self) -> list[tuple[str, str]]:
        """(method, path) of each request so far."""
        return [(r.method, r.path) for r in self.seen()]

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 10.0) -> list[Received]:
        """The requests so far, once ``predicate`` holds for them."""
        return wait_for(
            lambda: [seen] if predicate(seen := self.seen()) else None,
            "the receiver's condition",
            timeout=timeout,
            interval=0.02,
            log=lambda: str(self.calls()),
        )[0]
