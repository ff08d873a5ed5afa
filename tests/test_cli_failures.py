"""Ordinary failures are answered in one line with the exit code docs/cli.md promises, never a traceback."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import rq
from click.testing import CliRunner, Result

from fhir_smartflow import shipped
from fhir_smartflow.cli import main
from fhir_smartflow.config import load_settings
from fhir_smartflow.queueing import queue_for
from fhir_smartflow.worker.embedded import worker_connection
from tests.support.net import free_port
from tests.support.procs import run_cli


@pytest.fixture(autouse=True)
def _keep_logging() -> Iterator[None]:
    """A command configures logging for its process; in-process it must not leak into other tests."""
    loggers = [logging.getLogger(), logging.getLogger("rq.worker")]
    saved = [(lg, lg.handlers[:], lg.level) for lg in loggers]
    yield
    for lg, handlers, level in saved:
        lg.handlers[:] = handlers
        lg.setLevel(level)


def invoke(*args: str, env: dict[str, str | None] | None = None) -> Result:
    """The command in-process; an exception it did not turn into a line fails the test (no catching)."""
    return CliRunner().invoke(main, list(args), env={"SMARTFLOW_CONFIG": None, **(env or {})}, catch_exceptions=False)


def one_line(result: Result) -> str:
    lines = result.stderr.strip().splitlines() if result.stderr_bytes else result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


def config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "smartflow.toml"
    path.write_text(text)
    return str(path)


@pytest.fixture
def unreachable_redis(tmp_path: Path) -> str:
    """A config whose [redis] url is a port nothing listens on."""
    return config(tmp_path, f'[redis]\nurl = "redis://:hunter2@127.0.0.1:{free_port()}/0"\n')


@pytest.mark.parametrize(
    "args",
    [("history",), ("scheduler", "--status"), ("replay",)],
    ids=["history", "scheduler-status", "replay"],
)
def test_redis_unreachable_is_one_line_and_exit_2(unreachable_redis: str, args: tuple[str, ...]) -> None:
    result = invoke("--config", unreachable_redis, *args)
    assert result.exit_code == 2
    line = one_line(result)
    assert line.startswith("Redis unreachable at redis://:***@127.0.0.1:") and "[redis] url" in line, line
    assert "hunter2" not in result.output  # the password is not printed


def test_history_through_the_console_script(unreachable_redis: str, tmp_path: Path) -> None:
    result = run_cli("--config", unreachable_redis, "history", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "Redis unreachable" in result.stderr, result.stderr


def test_sync_with_bearer_auth_and_no_token_is_exit_2(tmp_path: Path) -> None:
    path = config(
        tmp_path,
        '[fhir]\nbase_url = "http://127.0.0.1:9/fhir"\nauth = "bearer"\ntoken_env = "CLINIC_TOKEN"\n\n'
        '[[subscriptions]]\nid = "ehr"\nsecret_env = "CLINIC_SECRET"\n',
    )
    result = invoke("--config", path, "subscriptions", "sync", env={"CLINIC_SECRET": "s3cret", "CLINIC_TOKEN": None})
    assert result.exit_code == 2
    assert one_line(result) == "configuration error: [fhir] token_env: auth = 'bearer' but $CLINIC_TOKEN is not set"


def test_print_show_secrets_with_the_secret_unset_is_exit_2(tmp_path: Path) -> None:
    path = config(tmp_path, '[[subscriptions]]\nid = "ehr"\nsecret_env = "CLINIC_SECRET"\n')
    result = invoke("--config", path, "subscriptions", "print", "--show-secrets", env={"CLINIC_SECRET": None})
    assert result.exit_code == 2
    line = one_line(result)
    assert line.startswith("configuration error: [[subscriptions]] secret_env: not set: $CLINIC_SECRET (ehr)"), line
    shown = invoke("--config", path, "subscriptions", "print", "--show-secrets", "--json", env={"CLINIC_SECRET": "s3"})
    assert shown.exit_code == 0 and "X-Smartflow-Secret: s3" in shown.stdout
    masked = invoke("--config", path, "subscriptions", "print", "--json", env={"CLINIC_SECRET": None})
    assert masked.exit_code == 0 and "********" in masked.stdout  # masked output needs no secret


@pytest.mark.parametrize("command", ["validate", "lint", "simulate"])
def test_a_missing_configured_path_is_exit_2(tmp_path: Path, command: str) -> None:
    path = config(tmp_path, '[engine]\nflows = ["no-such-flows"]\n')
    sample = Path(str(shipped.locate(shipped.SAMPLES))) / "patient.json"
    args = ["--resource", str(sample)] if command == "simulate" else []
    result = invoke("--config", path, command, *args)
    assert result.exit_code == 2
    missing = tmp_path / "no-such-flows"
    assert one_line(result) == f"configuration error: [engine] flows: no such file or directory: {missing}"


def test_lint_without_paths_reports_no_unused_template() -> None:
    # The shipped templates include one no shipped flow uses (a discharge note for a site's own flow).
    result = invoke("lint", "--json")
    assert result.exit_code == 0, result.output
    assert "unused-template" not in result.stdout
    given = invoke("lint", "--json", str(shipped.locate(shipped.FLOWS)), str(shipped.locate(shipped.TEMPLATES)))
    assert "unused-template" in given.stdout  # templates given as PATHs: asked for


def test_validate_one_template_checks_it_alone(tmp_path: Path) -> None:
    template = tmp_path / "reminder.toml"
    template.write_text('id = "reminder"\nname = "Reminder"\nmethods = ["sms"]\nbody = "Hi {{ patient.first_name }}"\n')
    result = invoke("validate", str(template))
    assert result.exit_code == 0, result.output
    assert result.stdout == "OK: 0 mappings, 1 templates, 0 flows (0 enabled)\n"
    assert "note:" not in result.stderr  # nothing was combined with it
    broken = tmp_path / "broken.toml"
    broken.write_text('id = "broken"\nname = "Broken"\nmethods = ["sms"]\nbody = "{{ patient.first_name "\n')
    bad = invoke("validate", str(broken))
    assert bad.exit_code == 1 and bad.stdout.count("\n") == 1 and "unknown template" not in bad.stdout, bad.stdout
    flow = invoke("validate", str(shipped.locate("flows/examples/intake-forms.toml")))
    assert flow.exit_code == 0 and "note: checked with the configured [engine] mappings and templates" in flow.stderr


@pytest.mark.integration
def test_an_idle_worker_connection_outlasts_the_blocking_dequeue(redis_url: str, redis_conn: redis.Redis) -> None:
    """rq's idle dequeue (BLMOVE for worker_ttl - 15 s) on our worker client, made and used before the rq
    Worker exists as the `worker` command does, must not time out after redis-py's 5 s default."""
    settings = load_settings(env={"SMARTFLOW_REDIS_URL": redis_url})
    conn = worker_connection(settings)
    conn.ping()  # a pooled connection made before the Worker (wait_for_redis, the runtime)
    worker = rq.SimpleWorker([queue_for(conn, settings.redis)], connection=conn)
    pooled: Any = conn.connection_pool.get_connection()
    try:
        assert pooled.socket_timeout is not None and pooled.socket_timeout > worker.dequeue_timeout
    finally:
        conn.connection_pool.release(pooled)
    # The symptom itself: an idle blocking read longer than 5 s returns empty instead of a timeout error.
    assert conn.blmove("smartflow-test:empty", "smartflow-test:other", 6) is None
