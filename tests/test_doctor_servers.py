"""``doctor`` against the real sandbox over HTTP after ``subscriptions sync``: passes, then names the broken
piece (a deleted Subscription, a wrong secret, a missing Device, a base URL the server does not use)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import redis
import requests
from click.testing import CliRunner

from fhir_smartflow.cli import main
from tests.support.procs import ROOT, child_env, smartflow_cmd
from tests.support.service import start_sandbox
from tests.support.toml import write_config

pytestmark = pytest.mark.integration
ENV = {"DOC_SECRET": "s3cret-value", "DOC_HMAC": "hmac-value"}
SUBSCRIPTIONS = [
    {"id": "appointments", "header": "X-Smartflow-Secret", "secret_env": "DOC_SECRET", "criteria": "Appointment?"},
    {
        "id": "everything-else",
        "auth": "hmac",
        "header": "X-Signature",
        "secret_env": "DOC_HMAC",
        "criteria": "Patient?",
    },
]
SERVER_CHECKS = ("fhir-base-url", "fhir-auth", "service-device", "subscriptions")


def _run(config: Path, *args: str) -> tuple[int, str]:
    """Exit code and stdout (log lines go to stderr, kept apart)."""
    result = CliRunner().invoke(main, ["--config", str(config), *args], env=ENV)
    return result.exit_code, result.stdout


def _doctor(config: Path) -> tuple[int, list[dict[str, str]]]:
    checks = [a for name in SERVER_CHECKS for a in ("--check", name)]
    code, out = _run(config, "doctor", *checks, "--json")
    return code, json.loads(out)


def _failing(findings: list[dict[str, str]]) -> list[dict[str, str]]:
    return [f for f in findings if f["status"] == "fail"]


def _subscriptions(base: str) -> list[dict]:
    return [e["resource"] for e in requests.get(f"{base}/Subscription", timeout=5).json().get("entry") or []]


def test_doctor_after_sync_passes_and_names_each_broken_piece(
    tmp_path: Path, sandbox_server: str, redis_url: str
) -> None:
    sections = {"redis": {"url": redis_url}, "fhir": {"base_url": sandbox_server, "max_retries": 0}}
    config = write_config(tmp_path / "c.toml", sections, SUBSCRIPTIONS)
    code, out = _run(config, "subscriptions", "sync", "--endpoint", "http://127.0.0.1:9/fhir/notify")
    assert code == 0, out
    code, findings = _doctor(config)
    assert code == 0, findings
    assert {f["check"] for f in findings} == set(SERVER_CHECKS)
    code, out = _run(config, "subscriptions", "sync", "--endpoint", "http://127.0.0.1:9/fhir/notify")
    assert code == 0 and out.startswith("nothing changed"), out
    assert "s3cret-value" not in out and "hmac-value" not in out

    # A wrong secret on the server (its header).
    subs = _subscriptions(sandbox_server)
    appointment = next(s for s in subs if s["criteria"] == "Appointment?status=noshow")
    appointment["channel"]["header"] = ["X-Smartflow-Secret: stale"]
    requests.put(f"{sandbox_server}/Subscription/{appointment['id']}", json=appointment, timeout=5)
    code, findings = _doctor(config)
    (bad,) = _failing(findings)
    assert code == 1 and bad["check"] == "subscriptions"
    assert "does not carry the secret the webhook expects" in bad["detail"] and "sync" in bad["fix"]
    assert "stale" not in json.dumps(findings) and "s3cret-value" not in json.dumps(findings)

    # A deleted Subscription.
    requests.delete(f"{sandbox_server}/Subscription/{appointment['id']}", timeout=5)
    code, findings = _doctor(config)
    (bad,) = _failing(findings)
    assert code == 1 and "Appointment?status=noshow: no Subscription" in bad["detail"]

    # The Device missing.
    (device,) = [e["resource"] for e in requests.get(f"{sandbox_server}/Device", timeout=5).json()["entry"]]
    requests.delete(f"{sandbox_server}/Device/{device['id']}", timeout=5)
    code, findings = _doctor(config)
    assert code == 1 and "service-device" in {f["check"] for f in _failing(findings)}


def test_doctor_says_which_base_url_to_set(tmp_path: Path, sandbox_server: str, redis_url: str) -> None:
    # The sandbox names itself on 127.0.0.1; reached as localhost, its links would be refused.
    elsewhere = sandbox_server.replace("127.0.0.1", "localhost")
    config = write_config(tmp_path / "c.toml", {"redis": {"url": redis_url}, "fhir": {"base_url": elsewhere}})
    code, out = _run(config, "doctor", "--check", "fhir-base-url")
    assert code == 1, out
    assert f'set [fhir] base_url = "{sandbox_server}"' in out


def test_worker_start_says_which_base_url_to_set(tmp_path: Path, sandbox_server: str, redis_url: str) -> None:
    elsewhere = sandbox_server.replace("127.0.0.1", "localhost")
    config = write_config(tmp_path / "c.toml", {"redis": {"url": redis_url}, "fhir": {"base_url": elsewhere}})
    cmd = smartflow_cmd("--config", str(config), "worker", "--burst", "--without-scheduler")
    done = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f'set [fhir] base_url = "{sandbox_server}"' in done.stderr, done.stderr


def test_backport_is_refused_on_a_server_without_topic_subscriptions(tmp_path: Path, sandbox_server: str) -> None:
    config = write_config(tmp_path / "c.toml", {"fhir": {"base_url": sandbox_server}}, SUBSCRIPTIONS)
    result = CliRunner().invoke(
        main, ["--config", str(config), "subscriptions", "sync", "--style", "backport", "--server", "medplum"], env=ENV
    )
    assert result.exit_code == 1
    assert "does not support topic-based subscriptions" in result.stderr and "--style classic" in result.stderr
    assert requests.get(f"{sandbox_server}/Subscription", timeout=5).json().get("entry") is None  # nothing written


def test_sync_for_medplum_writes_active_and_warns_of_an_hmac_entry_not_reading_x_signature(
    tmp_path: Path, processes
) -> None:
    sandbox_server = start_sandbox(processes, profile="medplum").base  # only what the client writes is active
    entries = [{**SUBSCRIPTIONS[0]}, {**SUBSCRIPTIONS[1], "header": "X-Smartflow-Secret"}]
    config = write_config(tmp_path / "c.toml", {"fhir": {"base_url": sandbox_server}}, entries)
    args = [
        "--config",
        str(config),
        "subscriptions",
        "sync",
        "--server",
        "medplum",
        "--endpoint",
        "http://x/fhir/notify",
    ]
    result = CliRunner().invoke(main, args, env=ENV)
    assert result.exit_code == 0, result.output
    assert "everything-else: Medplum sends its signature in X-Signature" in result.stderr
    assert {s["status"] for s in _subscriptions(sandbox_server)} == {"active"}


def test_doctor_reports_each_subscriptions_last_activity_and_gaps(tmp_path: Path, redis_url: str) -> None:
    conn = redis.Redis.from_url(redis_url)
    prefix = "act:"
    conn.hset(f"{prefix}sub:appointments", mapping={"last_seen": "2026-03-02T15:00:00+00:00", "status_at": 1772463600,
                                                     "last_status_type": "heartbeat"})  # fmt: skip
    conn.rpush(f"{prefix}gaps:appointments", '{"first": 4, "last": 5}')
    config = write_config(tmp_path / "c.toml", {"redis": {"url": redis_url, "key_prefix": prefix}}, SUBSCRIPTIONS)
    code, out = _run(config, "doctor", "--check", "subscription-activity", "--json")
    appointments, other = json.loads(out)
    assert code == 0  # warnings only
    assert appointments["status"] == "warn" and "1 gap(s) recorded" in appointments["detail"]
    assert "last notification 2026-03-02T15:00:00+00:00" in appointments["detail"]
    assert "last heartbeat 2026-03-02T15:00:00+00:00" in appointments["detail"]
    assert other["status"] == "warn" and "nothing received yet" in other["detail"]
