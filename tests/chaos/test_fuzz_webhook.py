"""Property-based fuzzing of the webhook: bad input never gets a 5xx, never crashes it, never enqueues.

The real app (``fhir_smartflow.app.create_app``) runs under a real threaded HTTP server on a free
port, against a redis-server of its own. Hypothesis posts malformed, truncated, oversized, wrongly
typed and deeply nested bodies with the right secret, and valid notifications with wrong auth or a
wrong content type. After every example the rq queue, the job keys and ``events_received`` are
unchanged; after the run ``/healthz`` still answers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks import _payloads, _procs
from fhir_smartflow.app import create_app
from fhir_smartflow.config import load_settings
from tests.support.net import ThreadedWsgiServer
from tests.support.procs import RedisServer
from tests.support.toml import write_config

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

MAX_BODY = 64 * 1024
FHIR_BASE = "http://127.0.0.1:9/fhir"
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class Webhook:
    url: str
    conn: redis.Redis
    queue: str
    prefix: str
    session: requests.Session

    def snapshot(self) -> tuple[int, int, int]:
        jobs = sum(1 for _ in self.conn.scan_iter("rq:job:*", count=1000))
        received = sum(int(v) for v in self.conn.hvals(f"{self.prefix}metric:events_received"))
        return self.conn.llen(f"rq:queue:{self.queue}"), jobs, received

    def post(self, body: bytes, headers: dict[str, str]) -> requests.Response:
        return self.session.post(self.url, data=body, headers=headers, timeout=10)


@pytest.fixture(scope="module")
def webhook(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Webhook]:
    tmp: Path = tmp_path_factory.mktemp("fuzz-webhook")
    (tmp / "redis").mkdir()
    rs = RedisServer(tmp / "redis").start()
    config = write_config(
        tmp / "smartflow.toml",
        {"redis": {"url": rs.url}, "fhir": {"base_url": FHIR_BASE}, "server": {"max_body_bytes": MAX_BODY}},
        [_procs.bench_subscription()],
    )
    old = os.environ.get(_procs.SECRET_ENV)
    os.environ[_procs.SECRET_ENV] = _procs.SECRET
    server = None
    try:
        app_settings = load_settings(config, env={_procs.SECRET_ENV: _procs.SECRET})
        server = ThreadedWsgiServer(create_app(app_settings))
        session = requests.Session()
        yield Webhook(f"{server.url}{app_settings.server.notify_path}", rs.client(), app_settings.redis.queue,
                      app_settings.redis.key_prefix, session)  # fmt: skip
        health = session.get(f"{server.url}/healthz", timeout=5)
        assert health.status_code == 200, "the webhook stopped answering after the fuzzing"
        session.close()
    finally:
        if server is not None:
            server.stop()
        rs.stop()
        if old is None:
            os.environ.pop(_procs.SECRET_ENV, None)
        else:
            os.environ[_procs.SECRET_ENV] = old


def good_headers() -> dict[str, str]:
    return {**_payloads.FHIR_JSON_HEADERS, _procs.SECRET_HEADER: _procs.SECRET}


def valid_bundle(i: int = 1) -> dict[str, Any]:
    return _payloads.backport_notification(FHIR_BASE, _procs.SUBSCRIPTION_ID, i, _payloads.patient(f"fz{i}", i))


def assert_refused(hook: Webhook, body: bytes, headers: dict[str, str], expected: set[int] | None = None) -> None:
    before = hook.snapshot()
    r = hook.post(body, headers)
    assert r.status_code < 500, f"{r.status_code} for a bad request: {r.text[:300]}"
    assert r.status_code >= 400, f"bad input accepted with {r.status_code}: {body[:200]!r}"
    if expected:
        assert r.status_code in expected, f"expected {expected}, got {r.status_code}: {r.text[:300]}"
    outcome = r.json()
    assert outcome.get("resourceType") == "OperationOutcome", r.text[:300]
    assert outcome.get("issue"), "OperationOutcome without an issue saying what was wrong"
    assert hook.snapshot() == before, "a refused request changed the queue"


def test_a_valid_notification_is_queued(webhook: Webhook) -> None:
    """The control: the fuzz assertions below could not fail if nothing were ever queued."""
    before = webhook.snapshot()
    r = webhook.post(_payloads.encode(valid_bundle(999)), good_headers())
    assert r.status_code == 200, r.text
    after = webhook.snapshot()
    assert after[0] > before[0] and after[2] > before[2]


def _non_empty(body: bytes) -> bool:
    return bool(body.strip())  # an empty POST is a valid classic rest-hook "something changed"


@FUZZ
@given(body=st.binary(min_size=1, max_size=2048).filter(_non_empty))
def test_random_bytes(webhook: Webhook, body: bytes) -> None:
    assert_refused(webhook, body, good_headers())


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@FUZZ
@given(value=JSON_VALUES)
def test_random_json_that_is_no_fhir_resource(webhook: Webhook, value: Any) -> None:
    if isinstance(value, dict):
        value.pop("resourceType", None)
    body = json.dumps(value).encode()
    assert_refused(webhook, body, good_headers(), {400})


@FUZZ
@given(data=st.data())
def test_truncated_notifications(webhook: Webhook, data: st.DataObject) -> None:
    body = _payloads.encode(valid_bundle())
    cut = data.draw(st.integers(min_value=1, max_value=len(body) - 1))
    assert_refused(webhook, body[:cut], good_headers(), {400})


@settings(max_examples=5, deadline=None)
@given(extra=st.integers(min_value=1, max_value=MAX_BODY))
def test_oversized_bodies(webhook: Webhook, extra: int) -> None:
    bundle = valid_bundle()
    bundle["entry"][1]["resource"]["text"] = {"status": "generated", "div": "x" * (MAX_BODY + extra)}
    assert_refused(webhook, _payloads.encode(bundle), good_headers(), {413})


WRONG_TYPES = st.one_of(st.integers(), st.lists(st.integers(), max_size=3), st.none(), st.booleans(), st.floats())


def _wrongly_typed(where: str, value: Any) -> Any:
    bundle: Any = valid_bundle()
    if where == "top":
        return value
    if where == "entry[]":
        bundle["entry"] = [value, value]
    elif where == "entry" and isinstance(value, list):
        bundle["entry"] = {"items": value}  # an object where an array must be
    else:
        bundle[where] = value
    return bundle


@FUZZ
@given(where=st.sampled_from(["resourceType", "entry", "entry[]", "top"]), value=WRONG_TYPES)
def test_wrongly_typed_structure(webhook: Webhook, where: str, value: Any) -> None:
    assert_refused(webhook, json.dumps(_wrongly_typed(where, value)).encode(), good_headers(), {400})


@pytest.mark.parametrize("value", [None, False, 0])
def test_falsy_bundle_entry_is_refused(webhook: Webhook, value: Any) -> None:
    assert_refused(webhook, json.dumps(_wrongly_typed("entry", value)).encode(), good_headers(), {400})


def _nested_body(depth: int, shape: str) -> bytes:
    inner = "[" * depth + "]" * depth if shape == "array" else '{"a":' * depth + "1" + "}" * depth
    body = ('{"resourceType":"Bundle","type":"history","entry":[{"resource":' + inner + "}]}").encode()
    assert len(body) < MAX_BODY  # this is about nesting, not size
    return body


@settings(max_examples=8, deadline=None)
@given(depth=st.integers(min_value=50, max_value=10_000), shape=st.sampled_from(["array", "object"]))
def test_nested_bodies(webhook: Webhook, depth: int, shape: str) -> None:
    # Past Python's recursion limit too: the parser's RecursionError must be a 400, not a 500.
    assert_refused(webhook, _nested_body(depth, shape), good_headers(), {400})


@pytest.mark.parametrize(("depth", "shape"), [(5_000, "array"), (5_000, "object")])
def test_deeply_nested_bodies_get_400_not_500(webhook: Webhook, depth: int, shape: str) -> None:
    assert_refused(webhook, _nested_body(depth, shape), good_headers(), {400})


WRONG_AUTH = st.sampled_from(["missing", "empty", "wrong", "prefix", "one-char", "other-header", "case"])


@FUZZ
@given(how=WRONG_AUTH, i=st.integers(min_value=1, max_value=10_000))
def test_valid_notifications_with_wrong_auth(webhook: Webhook, how: str, i: int) -> None:
    headers = dict(_payloads.FHIR_JSON_HEADERS)
    secret = _procs.SECRET
    header = _procs.SECRET_HEADER
    if how == "empty":
        headers[header] = ""
    elif how == "wrong":
        headers[header] = "not-the-secret"
    elif how == "prefix":
        headers[header] = secret[:-1]
    elif how == "one-char":
        headers[header] = secret[:-1] + ("x" if secret[-1] != "x" else "y")
    elif how == "other-header":
        headers["X-Some-Other-Header"] = secret
    elif how == "case":
        headers[header] = secret.upper()
    assert_refused(webhook, _payloads.encode(valid_bundle(i)), headers, {401})


@FUZZ
@given(
    content_type=st.sampled_from(
        ["text/plain", "application/xml", "application/fhir+xml", "multipart/form-data; boundary=x",
         "application/x-www-form-urlencoded", "image/png"]
    )
)  # fmt: skip
def test_wrong_content_type(webhook: Webhook, content_type: str) -> None:
    headers = {**good_headers(), "Content-Type": content_type}
    assert_refused(webhook, _payloads.encode(valid_bundle()), headers, {415})
