"""A Twilio-REST-shaped provider for the channel tests (serve its ``app`` with the ``serve_app`` fixture;
a webhook receiver is `tests.support.net.Receiver`)."""

from __future__ import annotations

import itertools
import threading
from typing import Any

from flask import Flask, jsonify, request

SID = "AC0123456789abcdef0123456789abcdef"
TOKEN = "test-auth-token"


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


class HangingTwilio(TwilioFake):
    """A provider that takes its time: each message request is recorded, ``arrived`` is set, and the
    answer waits until the test sets ``release`` (to kill a worker while its send is in flight)."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived = threading.Event()
        self.release = threading.Event()
        self.app.view_functions["create"] = self._hang

    def _hang(self, sid: str, resource: str) -> Any:
        # Read the form now: once the sender is SIGKILLed its connection resets and the unread body is gone.
        request.form.to_dict()
        self.arrived.set()
        self.release.wait(30)
        return self._create(sid, resource)
