"""Safe by default: embedded mode only on `--embedded`, a production `serve` names what it lacks and never
mounts the unauthenticated sandbox FHIR store."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from tests.support.net import free_port, wait_for
from tests.support.procs import Process, smartflow_cmd

pytestmark = pytest.mark.integration

SECRET = {"CLINIC_SECRET": "s3cret-for-tests"}
SUBSCRIPTION = (
    '[[subscriptions]]\nid = "ehr"\nheader = "X-Smartflow-Secret"\nsecret_env = "CLINIC_SECRET"\n'
    'resource_types = ["Patient"]\n'
)


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "smartflow.toml"
    path.write_text(text)
    return path


def _exit_or_serve(processes, config: Path | None, port: int) -> tuple[Process, bool]:
    """Start `serve` and wait until it exits or its port answers: (the process, whether it is serving)."""
    args = (["--config", str(config)] if config else []) + ["serve", "--port", str(port)]
    proc = processes(smartflow_cmd(*args), SECRET, "serve")

    def settled() -> bool:
        if not proc.alive():
            return True
        try:
            requests.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5)
        except requests.ConnectionError:
            return False
        return True

    wait_for(settled, "serve to exit or answer", log=proc.output)
    return proc, proc.alive()


def test_serve_without_config_or_embedded_refuses_naming_what_is_missing(processes, tmp_path: Path) -> None:
    proc, serving = _exit_or_serve(processes, None, free_port())
    assert not serving, "serve started with no configuration"
    assert proc.proc.returncode == 2
    lines = [line for line in proc.output().splitlines() if line.strip()]
    assert len(lines) == 1, proc.output()
    for key in ("[redis] url", "[fhir] base_url", "[[subscriptions]]", "serve --embedded"):
        assert key in lines[0], lines[0]


def test_a_redis_url_and_subscriptions_without_a_fhir_base_never_serve_the_sandbox(
    processes, tmp_path: Path, redis_url: str
) -> None:
    config = _config(tmp_path, f'[redis]\nurl = "{redis_url}"\n\n{SUBSCRIPTION}')
    port = free_port()
    proc, serving = _exit_or_serve(processes, config, port)
    if serving:  # what it used to do: the sandbox store, with the webhook's secret in channel.header
        sandbox = requests.get(f"http://127.0.0.1:{port}/sandbox/fhir/Subscription", timeout=5)
        pytest.fail(f"serve started without [fhir] base_url; GET /sandbox/fhir/Subscription -> {sandbox.status_code}")
    assert proc.proc.returncode == 2
    assert "configuration error: [fhir] base_url: required by `serve`" in proc.output()
    assert "[redis] url" not in proc.output().split("required by")[0]  # only what is missing is named


def test_a_production_serve_mounts_no_sandbox(processes, tmp_path: Path, redis_url: str) -> None:
    config = _config(tmp_path, f'[redis]\nurl = "{redis_url}"\n\n[fhir]\nbase_url = "http://127.0.0.1:9/fhir"\n\n'
                               f'[engine]\ndispatch = "record"\n\n{SUBSCRIPTION}')  # fmt: skip
    port = free_port()
    proc, serving = _exit_or_serve(processes, config, port)
    assert serving, proc.output()
    base = f"http://127.0.0.1:{port}"
    for path in ("/sandbox/fhir/Subscription", "/sandbox/fhir/metadata", "/sandbox/fhir/Patient"):
        assert requests.get(base + path, timeout=5).status_code == 404, path
    assert requests.post(f"{base}/sandbox/fhir/Patient", json={"resourceType": "Patient"}, timeout=5).status_code in (
        404,
        405,
    )
    assert "sandbox" not in proc.output().lower()


def test_worker_without_a_fhir_base_refuses(processes, tmp_path: Path, redis_url: str) -> None:
    config = _config(tmp_path, f'[redis]\nurl = "{redis_url}"\n')
    proc = processes(smartflow_cmd("--config", str(config), "worker", "--burst"), {}, "worker")
    wait_for(lambda: not proc.alive(), "worker to exit", log=proc.output)
    assert proc.proc.returncode == 2
    assert "configuration error: [fhir] base_url: required by `worker`" in proc.output()
