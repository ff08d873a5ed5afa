"""`fhir-smartflow health ROLE`: each role's health check, against the real processes of that role."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.net import free_port, wait_for
from tests.support.procs import run_cli, smartflow_cmd

pytestmark = pytest.mark.integration

SECRET = {"CLINIC_SECRET": "s3cret-for-tests"}


def _config(tmp_path: Path, redis_url: str, fhir_base: str, port: int) -> dict[str, str]:
    path = tmp_path / "smartflow.toml"
    path.write_text(
        f'[server]\nport = {port}\n\n[redis]\nurl = "{redis_url}"\n\n[fhir]\nbase_url = "{fhir_base}"\n\n'
        '[[subscriptions]]\nid = "ehr"\nsecret_env = "CLINIC_SECRET"\ncriteria = "Patient?"\n'
    )
    return {"SMARTFLOW_CONFIG": str(path), **SECRET}


def health(env: dict[str, str], *role: str) -> tuple[int, str]:
    result = run_cli("health", *role, env=env)
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and not result.stderr.strip(), result.stdout + result.stderr
    return result.returncode, lines[0]


def test_worker_scheduler_and_serve_health(processes, tmp_path: Path, redis_url: str, sandbox_server) -> None:
    env = _config(tmp_path, redis_url, str(sandbox_server), free_port())
    for role in ("worker", "scheduler", "poller", "serve", "auto"):  # nothing runs yet
        code, line = health(env, role)
        assert code == 1 and line.startswith("unhealthy: "), (role, line)

    worker = processes(smartflow_cmd("worker"), env, "worker")
    worker.wait_output("on queue")
    code, line = wait_for(lambda: (r := health(env, "worker"))[0] == 0 and r, "worker healthy", log=worker.output)
    assert line.startswith("healthy: worker: 1 alive on "), line
    code, line = health(env, "scheduler")  # the worker's --with-scheduler loop
    assert code == 0 and "scheduler" in line, line
    assert health(env, "poller")[0] == 1
    assert health(env)[0] == 0  # auto: some role of ours is alive on this host

    serve = processes(smartflow_cmd("serve"), env, "serve")
    serve.wait_output("serving webhook")
    code, line = wait_for(lambda: (r := health(env, "serve"))[0] == 0 and r, "serve healthy", log=serve.output)
    assert "/healthz answered 200" in line
    # The port comes from the environment, as in the image (SMARTFLOW_SERVER_PORT).
    assert health({**env, "SMARTFLOW_SERVER_PORT": str(free_port())}, "serve")[0] == 1


def test_standby_scheduler_and_poller_health(processes, tmp_path: Path, redis_url: str, sandbox_server) -> None:
    env = _config(tmp_path, redis_url, str(sandbox_server), free_port())
    first = processes(smartflow_cmd("scheduler"), env, "scheduler-a")
    first.wait_output("is active")
    second = processes(smartflow_cmd("scheduler"), env, "scheduler-b")
    second.wait_output("stands by")
    code, line = health(env, "scheduler")
    assert code == 0 and "active" in line, line
    first.stop()  # the standby is alive too (and takes over)
    code, line = health(env, "scheduler")
    assert code == 0, line

    poller = processes(smartflow_cmd("poll"), env, "poller")
    poller.wait_output("polling")
    code, line = wait_for(lambda: (r := health(env, "poller"))[0] == 0 and r, "poller healthy", log=poller.output)
    assert line.startswith("healthy: poller: "), line
    poller.stop()
    assert health(env, "poller")[0] == 1  # a stopped poller removes its record


def test_health_is_exit_1_for_configuration_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[nope]\n")
    code, line = health({"SMARTFLOW_CONFIG": str(bad)}, "worker")
    assert code == 1 and line.startswith("unhealthy: configuration error: [nope]"), line
    code, line = health({}, "worker")
    assert code == 1 and line == "unhealthy: worker: no [redis] url configured", line
