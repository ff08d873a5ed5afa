"""/readyz against real redis-servers that answer PING but refuse writes: full (maxmemory + noeviction)
and a read-only replica. Ready means an enqueue would succeed; the answer shows no paths."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from fhir_smartflow.app import create_app
from fhir_smartflow.config import load_settings
from fhir_smartflow.connections import WEBHOOK, connect
from tests.support.procs import RedisServer
from tests.support.toml import write_config

pytestmark = pytest.mark.integration

SECRET_ENV, SECRET = "READYZ_TEST_SECRET", "readyz-secret"
MAX_BODY = 64 * 1024
PATIENT = json.dumps({"resourceType": "Patient", "id": "p1"}).encode()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[list[RedisServer]]:
    """redis-servers of this test alone (their configuration is changed): ``own_redis[i]``, started."""
    servers = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        servers.append(RedisServer(tmp_path / name).start())
    yield servers
    for server in servers:
        server.stop()


def webhook(serve_app, tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    config = write_config(
        tmp_path / "readyz.toml",
        {"redis": {"url": url}, "server": {"retry_after_seconds": 3, "max_body_bytes": MAX_BODY}},
        [{"id": "ehr", "secret_env": SECRET_ENV, "criteria": "Patient?"}],
    )
    settings = load_settings(config, env={})
    return serve_app(create_app(settings, connect(settings, WEBHOOK))).url, config


def ready(url: str) -> requests.Response:
    response = requests.get(f"{url}/readyz", timeout=10)
    assert response.json()["resourceType"] == "OperationOutcome"
    return response


def notify(url: str) -> requests.Response:
    headers = {"Content-Type": "application/fhir+json", "X-Smartflow-Secret": SECRET}
    return requests.post(f"{url}/fhir/notify", data=PATIENT, headers=headers, timeout=10)


def test_readyz_discloses_no_paths(serve_app, own_redis, tmp_path: Path, monkeypatch) -> None:
    url, config = webhook(serve_app, tmp_path, own_redis[0].url, monkeypatch)
    response = ready(url)
    assert response.status_code == 200, response.text
    assert str(config) not in response.text and str(tmp_path) not in response.text, response.text


def test_readyz_is_not_ready_while_redis_is_full(serve_app, own_redis, tmp_path: Path, monkeypatch) -> None:
    server = own_redis[0]
    url, _ = webhook(serve_app, tmp_path, server.url, monkeypatch)
    assert ready(url).status_code == 200  # the control
    conn = server.client()
    used = int(conn.info("memory")["used_memory"])
    conn.config_set("maxmemory-policy", "noeviction")
    conn.config_set("maxmemory", max(1024 * 1024, used + 1024 * 1024))
    assert ready(url).status_code == 200  # room for more than one delivery
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        for i in range(10_000):  # fill it up: each SET is refused once used memory is over the limit
            conn.set(f"fill:{i}", "x" * 16_384)
    assert conn.ping()  # PING still answers (and a tiny SET may fit): neither says whether an enqueue would
    not_ready = ready(url)
    assert not_ready.status_code == 503 and "OOM" in not_ready.text, not_ready.text
    # Over the limit for good (as after fragmentation): every write, tiny or not, is refused.
    conn.config_set("maxmemory", int(conn.info("memory")["used_memory"]) - 64 * 1024)
    not_ready = ready(url)
    assert not_ready.status_code == 503, not_ready.text
    issue = not_ready.json()["issue"][0]
    assert issue["code"] == "transient" and "OOM" in issue["diagnostics"], issue
    assert not_ready.headers["Retry-After"] == "3"
    refused = notify(url)
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "3", refused.text
    assert conn.llen("rq:queue:smartflow") == 0
    conn.config_set("maxmemory", 0)
    assert ready(url).status_code == 200 and notify(url).status_code == 200


def test_readyz_is_not_ready_on_a_read_only_replica(serve_app, own_redis, tmp_path: Path, monkeypatch) -> None:
    primary, replica = own_redis
    url, _ = webhook(serve_app, tmp_path, replica.url, monkeypatch)
    assert ready(url).status_code == 200  # the control
    conn = replica.client()
    conn.replicaof("127.0.0.1", primary.port)
    assert conn.config_get("replica-read-only")["replica-read-only"] == "yes"
    not_ready = ready(url)
    assert not_ready.status_code == 503, not_ready.text
    assert "READONLY" in not_ready.json()["issue"][0]["diagnostics"]
    assert notify(url).status_code == 503
    conn.replicaof("NO", "ONE")
    assert ready(url).status_code == 200
