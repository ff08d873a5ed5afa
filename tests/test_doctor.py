"""``fhir-smartflow doctor``: one line per check, exit 0 when all pass, 1 when one fails, --json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from fhir_smartflow.cli import main
from tests.support.net import free_port
from tests.support.toml import write_config

pytestmark = pytest.mark.integration


def doctor(config: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--config", str(config), "doctor", *args])
    return result.exit_code, result.output


def test_doctor_passes_against_a_reachable_server_and_redis(
    tmp_path: Path, sandbox_server: str, redis_url: str
) -> None:
    config = write_config(tmp_path / "c.toml", {"redis": {"url": redis_url}, "fhir": {"base_url": sandbox_server}})
    code, out = doctor(config, "--check", "redis", "--check", "fhir-base")
    assert code == 0, out
    lines = out.strip().splitlines()
    assert lines[0] == "OK   redis: reachable and writable"
    assert lines[1].startswith("OK   fhir-base: fhir-smartflow sandbox")


def test_doctor_names_the_broken_piece_and_exits_1(tmp_path: Path, redis_url: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}/fhir"
    config = write_config(
        tmp_path / "c.toml",
        {"redis": {"url": redis_url}, "fhir": {"base_url": dead, "max_retries": 0}},
    )
    code, out = doctor(config, "--check", "fhir-base", "--json")
    assert code == 1
    (finding,) = json.loads(out)
    assert finding["check"] == "fhir-base" and finding["status"] == "fail"
    assert dead in finding["detail"] and finding["fix"]


def test_unknown_check_is_a_usage_error(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", {})
    code, out = doctor(config, "--check", "nope")
    assert code == 2
    assert "unknown check nope" in out
