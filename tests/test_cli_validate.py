"""`fhir-smartflow validate` through the installed console script (a real subprocess)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from conftest import ROOT, smartflow_cmd


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTFLOW_")}
    return subprocess.run(
        smartflow_cmd("validate", *args), cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def test_examples_are_valid():
    result = run("flows/examples")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("OK: ") and "7 flows" in result.stdout


def test_broken_copy_reports_file_field_reason(tmp_path):
    broken = tmp_path / "flows"
    shutil.copytree(ROOT / "flows" / "examples", broken)
    intake = broken / "intake-forms.toml"
    intake.write_text(intake.read_text().replace('unit = "days", direction', 'unit = "fortnights", direction'))
    careplan = broken / "careplan-updated.toml"
    careplan.write_text(careplan.read_text().replace('template = "careplan-updated"', 'template = "no-such-template"'))
    shutil.copy(broken / "weekly-checkin.toml", broken / "weekly-copy.toml")
    copy = broken / "weekly-copy.toml"
    copy.write_text(copy.read_text().replace('id = "weekly-checkin"', 'id = "weekly-checkin-copy"'))
    result = run(str(broken))
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert f"{intake}:20: actions[1].due.unit: unknown unit 'fortnights' (use minutes, hours, days, weeks)" in lines
    assert f"{careplan}:12: actions[1].template: unknown template 'no-such-template'" in lines
    assert any(line.startswith(f"{copy}:") and "duplicate automation" in line for line in lines)
    assert len(lines) == 3
    as_json = json.loads(run("--json", str(broken)).stdout)
    assert as_json["valid"] is False and len(as_json["errors"]) == 3
    assert {"file", "line", "field", "reason"} == set(as_json["errors"][0])


def test_usage_errors_exit_2(tmp_path):
    result = run(str(tmp_path / "missing"))
    assert result.returncode == 2 and "no such file or directory" in result.stderr
    help_text = run("--help")
    assert help_text.returncode == 0 and "Exits 0 when everything is valid" in help_text.stdout
