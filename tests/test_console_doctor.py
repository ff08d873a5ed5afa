"""`doctor --check console`: the console's signing key and where its saves go."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from fhir_smartflow.cli import main
from tests.support.console import CONSOLE_SECRET, copy_site
from tests.support.toml import write_config


def _doctor(config: Path, env: dict[str, str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--config", str(config), "doctor", "--check", "console"], env=env)
    return result.exit_code, result.output.strip()


def test_console_check_names_a_missing_key_and_read_only_flows(tmp_path: Path) -> None:
    site = copy_site(tmp_path)
    shipped_only = write_config(tmp_path / "shipped.toml", {})
    code, out = _doctor(shipped_only, {"SMARTFLOW_CONSOLE_SECRET": ""})
    assert code == 0 and out.startswith("WARN console: not mounted: $SMARTFLOW_CONSOLE_SECRET is not set"), out
    code, out = _doctor(shipped_only, {"SMARTFLOW_CONSOLE_SECRET": "short"})
    assert code == 1 and "shorter than 32 characters" in out
    code, out = _doctor(shipped_only, {"SMARTFLOW_CONSOLE_SECRET": CONSOLE_SECRET})
    assert code == 0 and "flows are read-only" in out
    site_config = write_config(tmp_path / "site.toml", {"engine": site.engine_section()})
    code, out = _doctor(site_config, {"SMARTFLOW_CONSOLE_SECRET": CONSOLE_SECRET})
    assert code == 0 and out.startswith("OK   console: mounted at /console; saves to"), out
    assert str(tmp_path / "site" / ".console-history") in out
