"""Redis through Sentinel: a primary, a replica and three sentinels of our own (real redis-servers).

- the configuration keys and their checks;
- the one connection factory follows the primary across a failover;
- the webhook acknowledges only once the replica has the enqueue (``WAIT``): with the replica down
  it answers 503 and nothing is acknowledged;
- the service (``serve`` + a ``worker``, the sandbox FHIR store) through the sentinels while the
  primary is killed mid-run and the replica promoted: every accepted notification's flow result is
  written exactly once.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from benchmarks._stack import Stack, patient_ref
from fhir_smartflow.app import create_app
from fhir_smartflow.config import ConfigError, load_settings
from fhir_smartflow.connections import WEBHOOK, connect
from tests.chaos.test_exactly_once import Sender, duplicates, ours, settle
from tests.support.net import free_port, wait_for
from tests.support.sentinel import SentinelGroup, start_sentinel_group
from tests.support.toml import write_config

N_PATIENTS = 80  # each notified twice: 160 deliveries, the failover a third of the way in
SECRET_ENV, SECRET = "SENTINEL_TEST_SECRET", "sentinel-test-secret"


@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[SentinelGroup]:
    group = start_sentinel_group(tmp_path / "redis")
    yield group
    group.stop()


def sentinel_config(group: SentinelGroup, **extra: object) -> dict[str, object]:
    return {"sentinels": group.addresses, "sentinel_service": group.service, **extra}


# -- configuration (no servers) -------------------------------------------------------------------


def test_sentinels_come_from_the_file_or_the_environment(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.toml", {"redis": {"sentinels": ["10.0.0.5:26379"], "sentinel_service": "q"}})
    settings = load_settings(path, env={})
    assert settings.redis.sentinels == ["10.0.0.5:26379"] and settings.redis.sentinel_service == "q"
    assert settings.redis.shared and not settings.embedded_queue
    assert settings.redis.replicas_to_wait == 1  # the default with sentinels
    env = {"SMARTFLOW_REDIS_SENTINELS": "a:1, b:2", "SMARTFLOW_REDIS_WAIT_REPLICAS": "2"}
    settings = load_settings(None, env=env)
    assert settings.redis.sentinels == ["a:1", "b:2"] and settings.redis.replicas_to_wait == 2
    assert load_settings(None, env={"SMARTFLOW_REDIS_URL": "redis://x/0"}).redis.replicas_to_wait == 0


@pytest.mark.parametrize(
    ("redis_section", "key"),
    [
        ({"sentinels": ["nohost"]}, "[redis] sentinels[0]"),
        ({"sentinels": ["h:99999"]}, "[redis] sentinels[0]"),
        ({"sentinels": ["h:1"], "url": "redis://h/0"}, "[redis] sentinels"),
        ({"sentinels": ["h:1"], "sentinel_service": ""}, "[redis] sentinel_service"),
        ({"wait_replicas": -2}, "[redis] wait_replicas"),
        ({"wait_timeout_ms": 0}, "[redis] wait_timeout_ms"),
        ({"wait_replicas": 1}, "[redis] wait_replicas"),  # the embedded queue has no replica
    ],
)
def test_bad_sentinel_settings_name_the_key(tmp_path: Path, redis_section: dict[str, object], key: str) -> None:
    path = write_config(tmp_path / "c.toml", {"redis": redis_section})
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert info.value.key == key


# -- real sentinels ---------------------------------------------------------------------------------


@pytest.mark.integration
def test_the_client_follows_the_primary_across_a_failover(tmp_path: Path, sentinel_group: SentinelGroup) -> None:
    settings = load_settings(write_config(tmp_path / "c.toml", {"redis": sentinel_config(sentinel_group)}), env={})
    conn = connect(settings)
    conn.set("before", "1")
    # A forced failover keeps only what the replica already has (the webhook WAITs for the same reason).
    assert conn.wait(1, 5000) == 1
    assert conn.info("server")["tcp_port"] == sentinel_group.primary.port
    sentinel_group.failover()
    wait_for(lambda: sentinel_group.current_primary_port() == sentinel_group.replica.port, "the replica promoted")

    def on_the_new_primary() -> bool:
        # Until the old primary is demoted a pooled connection may still write there (the window WAIT
        # closes for the webhook); once demoted it answers READONLY and the client asks the sentinels again.
        try:
            conn.set("after", "2")
            return conn.info("server")["tcp_port"] == sentinel_group.replica.port
        except Exception:
            return False

    wait_for(on_the_new_primary, "a write through the sentinels reaching the new primary", timeout=20)
    assert conn.get("before") == b"1" and conn.get("after") == b"2"


@pytest.mark.integration
def test_the_webhook_acknowledges_only_what_the_replica_has(
    tmp_path: Path, sentinel_group: SentinelGroup, serve_app, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    config = write_config(
        tmp_path / "c.toml",
        {"redis": sentinel_config(sentinel_group, wait_timeout_ms=300), "server": {"retry_after_seconds": 2}},
        [{"id": "ehr", "secret_env": SECRET_ENV, "criteria": "Patient?"}],
    )
    settings = load_settings(config, env={})
    url = serve_app(create_app(settings, connect(settings, WEBHOOK))).url
    headers = {"Content-Type": "application/fhir+json", "X-Smartflow-Secret": SECRET}

    def notify(pid: str) -> requests.Response:
        body = f'{{"resourceType": "Patient", "id": "{pid}"}}'
        return requests.post(f"{url}/fhir/notify", data=body, headers=headers, timeout=10)

    assert notify("p1").status_code == 200
    sentinel_group.replica.kill9()  # the primary alone: an enqueue there would not survive its loss
    refused = notify("p2")
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "2", refused.text
    sentinel_group.replica.start()
    wait_for(lambda: notify("p3").status_code == 200, "acknowledgements again once the replica is back", timeout=20)


@pytest.mark.integration
def test_a_failover_mid_run_loses_no_acknowledged_notification(tmp_path: Path, sentinel_group: SentinelGroup) -> None:
    started = time.monotonic()
    group = sentinel_group
    stack = Stack(
        tmp_path,
        "",  # no url: the sentinels
        extra_config={
            # Short gap grace: the sweep a shuffled run schedules fires soon after the run, not 31 s later.
            "redis": {**sentinel_config(group), "job_timeout_seconds": 15, "gap_grace_seconds": 2},
            "fhir": {"max_retries": 10, "backoff_base_seconds": 0.05, "backoff_max_seconds": 0.25},
        },
    )
    try:
        stack.start_sandbox()
        stack.start_serve()
        stack.start_worker("w1", "simple")
        settings = load_settings(stack.config_path, env={})
        patients = stack.create_patients(N_PATIENTS)
        bodies = {i: stack.notify_body(p, i + 1) for i, p in enumerate(patients)}
        deliveries = [i for i in range(N_PATIENTS) for _ in range(2)]
        random.Random(7).shuffle(deliveries)
        sender = Sender(f"{stack.serve_url}/fhir/notify", stack.headers(), give_up_after=60)
        old_primary = group.primary

        def fail_over() -> None:  # kill -9 the primary a third of the way in; it comes back as a replica
            wait_for(lambda: sender.statuses[200] >= len(deliveries) // 3, "a third of the deliveries", timeout=60)
            old_primary.kill9()
            wait_for(lambda: group.current_primary_port() == group.replica.port, "the replica promoted", timeout=20)
            # Back as a replica of the new primary at once (the sentinels would convert it too, but only
            # after seeing it as a primary for ~8 s, while the acknowledgements wait for a replica).
            old_primary.extra += ["--replicaof", "127.0.0.1", str(group.replica.port)]
            old_primary.start()

        crash = threading.Thread(target=fail_over, name="failover")
        crash.start()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: sender.deliver(bodies[i]), deliveries))
        crash.join(30)
        assert not crash.is_alive() and old_primary.starts == 2, "the primary was not killed mid-run"
        print(f"delivered at {time.monotonic() - started:.1f}s: {dict(sender.statuses)}")

        conn = connect(settings)
        # The failover itself was waited for above; under load the sentinels may fail over once more
        # (back to the old primary), so only ask that the connection reaches whichever is primary now.
        assert conn.info("replication")["role"] == "master"
        state = settle(stack, conn, cap=60)
        assert not any(state.values()), f"jobs left or failed: { {k: len(v) for k, v in state.items()} }"
        system = settings.fhir.identifier_system
        tasks = ours(stack.search_all("Task"), system)
        comms = ours(stack.search_all("Communication"), system)
        assert not duplicates(tasks) and not duplicates(comms), (duplicates(tasks), duplicates(comms))
        sent = {f"Patient/{p['id']}" for p in patients}
        task_patients = Counter(patient_ref(t[0]["for"]["reference"]) for t in tasks.values())
        comm_patients = Counter(patient_ref(c[0]["subject"]["reference"]) for c in comms.values())
        assert set(task_patients) == sent, f"acknowledged but lost: {sorted(sent - set(task_patients))[:20]}"
        assert set(comm_patients) == sent and set(task_patients.values()) | set(comm_patients.values()) == {1}
        assert 500 not in sender.statuses, f"serve answered 500: {sender.statuses}"
        print(f"sentinel failover run: {time.monotonic() - started:.1f}s, webhook statuses {dict(sender.statuses)}")
    except BaseException:
        print(group.logs()[-4000:])
        print(stack.service_logs()[-6000:])
        raise
    finally:
        for worker in stack.workers.values():
            worker.stop(kill=True)  # nothing left for it to finish: no warm shutdown to wait for
        stack.stop()


@pytest.mark.integration
def test_cli_failures_through_sentinels_are_one_line(run_cli) -> None:
    env = {"SMARTFLOW_REDIS_SENTINELS": f"127.0.0.1:{free_port()}", "SMARTFLOW_FHIR_BASE_URL": "http://127.0.0.1:9"}
    unreachable = run_cli("history", env=env)
    assert unreachable.returncode == 2, unreachable.stderr
    assert unreachable.stderr.strip().splitlines() == [unreachable.stderr.strip()]
    assert "through the sentinels" in unreachable.stderr and "Traceback" not in unreachable.stderr
    assert "ConnectionPool" not in unreachable.stderr  # not redis-py's whole client description
    fork = run_cli("worker", "--worker-class", "fork", env=env)
    assert fork.returncode == 2 and "--worker-class fork: not with [redis] sentinels" in fork.stderr, fork.stderr


@pytest.mark.integration
def test_the_poller_and_the_scheduler_reach_redis_through_the_sentinels(
    tmp_path: Path, sentinel_group: SentinelGroup, sandbox_server, run_cli
) -> None:
    created = requests.post(f"{sandbox_server}/Patient", json={"resourceType": "Patient", "active": True}, timeout=10)
    assert created.status_code == 201, created.text
    config = write_config(
        tmp_path / "c.toml",
        {
            "redis": sentinel_config(sentinel_group),
            "fhir": {"base_url": sandbox_server},
            "poll": {"types": ["Patient"], "initial_lookback_hours": 1},
        },
    )
    polled = run_cli("--config", str(config), "poll", "--once")
    assert polled.returncode == 0 and "Patient: found 1, queued 1" in polled.stdout, polled.stdout + polled.stderr
    scheduled = run_cli("--config", str(config), "scheduler", "--once", "--json")
    assert scheduled.returncode == 0, scheduled.stderr
    settings = load_settings(config, env={})
    primary = sentinel_group.primary.client()
    assert primary.llen(f"rq:queue:{settings.redis.queue}") == 1  # the polled event, on the primary
