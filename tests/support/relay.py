"""Between the sandbox store and `serve`: a relay that forwards each notification and keeps it, so a test
can deliver the same signed request again (a store retrying, an attacker replaying)."""

from __future__ import annotations

from typing import Any

import requests
from flask import Flask, Response, request

from fhir_smartflow.sandbox.subscriptions import self_subscription
from tests.support.fhir import wait_subscription
from tests.support.lifecycle import SECRET, Stack

FORWARDED = ("Content-Type", "X-Smartflow-Secret")


class Relay:
    """Between the store and `serve`: forwards each notification and keeps it, to deliver it again."""

    def __init__(self, target: str, serve: Any) -> None:
        self.target = target
        self.received: list[tuple[bytes, dict[str, str]]] = []
        app = Flask("relay")
        app.add_url_rule("/", "relay", self._relay, methods=["POST"])
        self.url = serve(app).url + "/"

    def _relay(self) -> Response:
        body, headers = request.get_data(), {k: v for k, v in request.headers.items() if k in FORWARDED}
        self.received.append((body, headers))
        answer = self.deliver(body, headers)
        return Response(answer.content, status=answer.status_code, mimetype="application/fhir+json")

    def deliver(self, body: bytes, headers: dict[str, str]) -> requests.Response:
        return requests.post(self.target, data=body, headers=headers, timeout=10)

    def notification_about(self, reference: str) -> tuple[bytes, dict[str, str]] | None:
        return next(((b, h) for b, h in self.received if reference.encode() in b), None)


def subscribe_through(stack: Stack, relay: Relay, rtype: str) -> None:
    sid = f"nf-{rtype.lower()}"
    sub = self_subscription(sid, relay.url, f"X-Smartflow-Secret: {SECRET}", rtype, "backport", "full-resource", 0)
    put = requests.put(f"{stack.store}/Subscription/{sid}", json=sub, headers={"Content-Type": "application/fhir+json"})
    assert put.status_code < 300, put.text
    wait_subscription(stack.store, sid)
