"""`fhir-smartflow validate` through the installed console script (a real subprocess)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable

import pytest

from tests.support.procs import ROOT

pytestmark = pytest.mark.integration


@pytest.fixture
def run(run_cli) -> Callable[..., subprocess.CompletedProcess[str]]:
    """`fhir-smartflow validate` with these arguments, in a child process."""
    return lambda *args, cwd=ROOT: run_cli("validate", *args, cwd=cwd)


def test_examples_are_valid(run):
    result = run("flows/examples")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("OK: ") and "7 flows" in result.stdout


def test_broken_copy_reports_file_field_reason(tmp_path, run):
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


def test_usage_errors_exit_2(tmp_path, run):
    result = run(str(tmp_path / "missing"))
    assert result.returncode == 2 and "no such file or directory" in result.stderr
    help_text = run("--help")
    assert help_text.returncode == 0 and "Exits 0 when everything is valid" in help_text.stdout


@pytest.mark.parametrize(
    ("source", "bound"),
    [
        ("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}", "range() of 100,000"),
        ("{% set l = range(9999)|list %}{% for a in l %}{% for b in l %}{% endfor %}{% endfor %}", "loop iterations"),
        ("{{ 'x' * 10**8 }}", "a repetition of 100,000,000 characters"),
    ],
)
def test_a_runaway_template_fails_validate_quickly_naming_itself(tmp_path, run, source, bound):
    (tmp_path / "runaway.toml").write_text(f'id = "runaway"\nname = "Runaway"\nbody = """{source}"""\n')
    result = run(str(tmp_path))
    assert result.returncode == 1, result.stdout + result.stderr
    [line] = result.stdout.splitlines()
    assert line.startswith(f"{tmp_path / 'runaway.toml'}") and "template runaway body: too costly" in line
    assert bound in line
