"""`kill -HUP` on a running worker reloads the flow files; a broken file leaves the running flows in place."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest

from tests.support.procs import ROOT, smartflow_cmd

pytestmark = pytest.mark.integration


def test_sighup_reloads_flows_and_refuses_broken_ones(processes, redis_url: str, tmp_path: Path) -> None:
    flows = tmp_path / "flows"
    flows.mkdir()
    shutil.copy(ROOT / "flows/examples/intake-forms.toml", flows)
    config = tmp_path / "smartflow.toml"
    config.write_text(
        f'[redis]\nurl = "{redis_url}"\n[fhir]\nbase_url = "http://127.0.0.1:9/fhir"\n[engine]\nflows = ["{flows}"]\n'
    )
    worker = processes(smartflow_cmd("--config", str(config), "worker"), name="worker")
    worker.wait_output("is active")  # the follow-up scheduler thread starts after the SIGHUP handler is set

    shutil.copy(ROOT / "flows/examples/missed-appointment.toml", flows)
    worker.proc.send_signal(signal.SIGHUP)
    worker.wait_output("reload: 2 flow(s) loaded")

    (flows / "broken.toml").write_text('id = "broken"\nname = "Broken"\ntrigger = "no.such.trigger"\n')
    worker.proc.send_signal(signal.SIGHUP)
    worker.wait_output("reload refused")
    assert "broken.toml" in worker.output()
    assert worker.proc.poll() is None  # still running, on the two good flows
