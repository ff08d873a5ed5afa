"""Helpers for the sandbox tests: a real receiver server that records what it is sent."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from conftest import ThreadedWsgiServer
from flask import Flask, Response, request


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """A Flask app in a thread; answers `statuses` in order (then 200) and records every request."""

    def __init__(self, port: int = 0) -> None:
        self.requests: list[Received] = []
        self.statuses: list[tuple[int, dict[str, str]]] = []
        self._lock = threading.Lock()
        app = Flask("receiver")

        @app.route("/", defaults={"path": ""}, methods=["GET", "POST", "PUT", "DELETE"])
        @app.route("/<path:path>", methods=["GET", "POST", "PUT", "DELETE"])
        def catch(path: str) -> Response:
            with self._lock:
                self.requests.append(Received(request.method, "/" + path, dict(request.headers), request.get_data()))
                status, headers = self.statuses.pop(0) if self.statuses else (200, {})
            return Response("{}", status=status, headers=headers, mimetype="application/json")

        self.server = ThreadedWsgiServer(app, port)
        self.url = self.server.url

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                seen = list(self.requests)
            if predicate(seen):
                return seen
            time.sleep(0.02)
        raise AssertionError(f"receiver: condition not met in {timeout}s; got {[(r.method, r.path) for r in seen]}")

    def stop(self) -> None:
        self.server.stop()


def bundle_type(received: Received) -> str | None:
    """The Backport notification type of a received Bundle (handshake / heartbeat / event-notification)."""
    body = received.json()
    params = body["entry"][0]["resource"]["parameter"]
    return next(p["valueCode"] for p in params if p["name"] == "type")
