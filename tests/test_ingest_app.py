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
