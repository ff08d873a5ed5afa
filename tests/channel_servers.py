"""Real local servers the channel tests talk to: a Twilio-REST-shaped Flask app and a webhook receiver,
each served by werkzeug in a thread on a free port."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask, jsonify, request
from werkzeug.serving import make_server

SID = "AC0123456789abcdef0123456789abcdef"
TOKEN = "test-auth-token"


@contextmanager
def serve(app: Flask) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=5)


class TwilioFake:
    """Speaks the provider's REST shape: basic auth, form fields, 201 JSON with a sid, scripted errors."""

    def __init__(self) -> None:
        self.script: list[tuple[int, dict[str, str], dict[str, Any]]] = []
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._ids = itertools.count(1)
        self.app = Flask("twilio-fake")
        self.app.add_url_rule("/2010-04-01/Accounts/<sid>/<resource>.json", "create", self._create, methods=["POST"])

    def _create(self, sid: str, resource: str) -> Any:
        auth = request.authorization
        if sid != SID or auth is None or auth.username != SID or auth.password != TOKEN:
            return jsonify({"code": 20003, "message": "Authenticate", "status": 401}), 401
        self.requests.append((resource, request.form.to_dict()))
        if self.script:
            status, headers, body = self.script.pop(0)
            return jsonify(body), status, headers
        prefix = "SM" if resource == "Messages" else "CA"
        return jsonify({"sid": f"{prefix}{next(self._ids):032d}", "status": "queued"}), 201


class WebhookReceiver:
    def __init__(self) -> None:
        self.received: list[tuple[bytes, dict[str, str]]] = []
        self.app = Flask("webhook-receiver")
        self.app.add_url_rule("/hook", "hook", self._hook, methods=["POST"])

    def _hook(self) -> Any:
        self.received.append((request.get_data(), dict(request.headers)))
        return jsonify({"ok": True}), 200, {"X-Request-Id": f"req-{len(self.received)}"}
