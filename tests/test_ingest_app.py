"""create_app: extra WSGI mounts, the catch-all error handler, readiness (Flask test client, unit level)."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from fhir_smartflow.app import create_app
from fhir_smartflow.config import ConfigError, RedisConfig, Settings
from fhir_smartflow.connections import WEBHOOK, connect

pytestmark = pytest.mark.integration

FHIR = "application/fhir+json"


def hello_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"sandbox saw {environ['PATH_INFO']}".encode()]


class BrokenConnection(redis.Redis):
    """A Redis client whose pipelines fail with a bug-like error (not a Redis error)."""

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("bug")


def test_extra_wsgi_mounts_are_served_beside_the_webhook(redis_url: str, redis_conn: redis.Redis) -> None:
    settings = Settings(redis=RedisConfig(url=redis_url))
    app = create_app(settings, redis_conn, insecure_dev=True, extra_wsgi_mounts={"/sandbox/fhir": hello_app})
    client = app.test_client()
    assert client.get("/sandbox/fhir/Patient/1").data == b"sandbox saw /Patient/1"
    assert client.get("/readyz").status_code == 200


def test_unexpected_errors_are_500_with_an_operation_outcome(redis_url: str) -> None:
    settings = Settings(redis=RedisConfig(url=redis_url))
    app = create_app(settings, BrokenConnection.from_url(redis_url), insecure_dev=True)
    response = app.test_client().post("/fhir/notify", data=b"", headers={"Content-Type": FHIR})
    assert response.status_code == 500
    assert response.content_type.startswith(FHIR)
    assert response.json["issue"][0]["code"] == "exception"


def test_readyz_is_503_when_redis_does_not_answer() -> None:
    settings = Settings(redis=RedisConfig(url="redis://127.0.0.1:1/0"))
    app = create_app(settings, connect(settings, WEBHOOK), insecure_dev=True)
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    response = client.get("/readyz")
    assert response.status_code == 503 and response.json["issue"][0]["code"] == "transient"


def test_create_app_refuses_without_subscriptions_unless_insecure_dev() -> None:
    with pytest.raises(ConfigError):
        create_app(Settings(redis=RedisConfig(url="redis://127.0.0.1:1/0")), redis.Redis(port=1))


def test_the_webhook_paths_answer_other_methods_with_405_and_allow(redis_url: str, redis_conn: redis.Redis) -> None:
    client = create_app(Settings(redis=RedisConfig(url=redis_url)), redis_conn, insecure_dev=True).test_client()
    for method, path, allowed in (
        ("GET", "/fhir/notify", "POST"),
        ("PUT", "/fhir/notify/", "POST"),
        ("GET", "/fhir/notify/Patient/1", "DELETE, POST, PUT"),
    ):
        response = client.open(path, method=method)
        assert response.status_code == 405, (method, path)
        assert response.headers["Allow"] == allowed
        assert response.content_type.startswith(FHIR)
        assert response.json["issue"][0]["code"] == "not-supported"
    assert redis_conn.dbsize() == 0  # nothing queued, nothing counted


def test_the_webhook_accepts_a_trailing_slash_and_only_type_and_id_after_the_path(
    redis_url: str, redis_conn: redis.Redis
) -> None:
    client = create_app(Settings(redis=RedisConfig(url=redis_url)), redis_conn, insecure_dev=True).test_client()
    patient = b'{"resourceType": "Patient", "id": "p1"}'
    assert client.post("/fhir/notify/", data=patient, headers={"Content-Type": FHIR}).status_code == 200
    assert client.put("/fhir/notify/Patient/p1", data=patient, headers={"Content-Type": FHIR}).status_code == 200
    for path in ("/fhir/notify/Patient", "/fhir/notify/Patient/p1/", "/fhir/notify/Patient/p1/_history/2"):
        response = client.post(path, data=patient, headers={"Content-Type": FHIR})
        assert response.status_code == 404, path
        assert response.json["issue"][0]["code"] == "not-found"


def test_a_redis_error_answers_503_with_retry_after(redis_url: str) -> None:
    settings = Settings(redis=RedisConfig(url="redis://127.0.0.1:1/0"))
    app = create_app(settings, connect(settings, WEBHOOK), insecure_dev=True)
    response = app.test_client().post("/fhir/notify", data=b"", headers={"Content-Type": FHIR})
    assert response.status_code == 503
    assert response.headers["Retry-After"] == str(settings.server.retry_after_seconds)
    assert response.json["issue"][0]["code"] == "transient"
