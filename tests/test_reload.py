"""`kill -HUP` on a running worker reloads the flow files; a broken file leaves the running flows in place."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import pytest
from conftest import ROOT, smartflow_cmd

pytestmark = pytest.mark.integration


def _wait_for(proc, text: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in proc.output():
        assert proc.proc.poll() is None, proc.output()
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{proc.output()}"
        time.sleep(0.05)


def test_sighup_reloads_flows_and_refuses_broken_ones(processes, redis_url: str, tmp_path: Path) -> None:
    flows = tmp_path / "flows"
    flows.mkdir()
    shutil.copy(ROOT / "flows/examples/intake-forms.toml", flows)
    config = tmp_path / "smartflow.toml"
    config.write_text(
        f'[redis]\nurl = "{redis_url}"\n[fhir]\nbase_url = "http://127.0.0.1:9/fhir"\n[engine]\nflows = ["{flows}"]\n'
    )
    worker = processes(smartflow_cmd("--config", str(config), "worker"), name="worker")
    _wait_for(worker, "is active")  # the follow-up scheduler thread starts after the SIGHUP handler is set

    shutil.copy(ROOT / "flows/examples/missed-appointment.toml", flows)
    worker.proc.send_signal(signal.SIGHUP)
    _wait_for(worker, "reload: 2 flow(s) loaded")

    (flows / "broken.toml").write_text('id = "broken"\nname = "Broken"\ntrigger = "no.such.trigger"\n')
    worker.proc.send_signal(signal.SIGHUP)
    _wait_for(worker, "reload refused")
    assert "broken.toml" in worker.output()
    assert worker.proc.poll() is None  # still running, on the two good flows
