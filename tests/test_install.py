"""Installs like real software: the shipped data is read from the package, config paths resolve against
the config file, and the defaults work from any directory."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import yaml

from fhir_smartflow import shipped
from fhir_smartflow.config import Settings, load_settings
from fhir_smartflow.flowfiles import load_engine
from fhir_smartflow.tooling.site import schema_text
from tests.support.procs import ROOT, run_cli


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with nothing of the project in it."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def test_the_defaults_are_the_shipped_files_from_any_directory(elsewhere: Path) -> None:
    settings = Settings()
    assert settings.engine.flows == ["shipped:flows/examples"]
    engine = load_engine(settings)
    assert len(engine.flows) == 7 and "intake-forms" in engine.flows and engine.templates and engine.mappings
    # ... read from the package, not from the working directory
    assert all(Path(f.file).is_relative_to(Path(str(shipped.root()))) for f in engine.flows.values())


def test_engine_paths_in_a_config_file_resolve_against_its_directory(tmp_path: Path, elsewhere: Path) -> None:
    site = tmp_path / "site"
    (site / "flows").mkdir(parents=True)
    (site / "flows" / "intake.toml").write_bytes(shipped.locate("flows/examples/intake-forms.toml").read_bytes())
    config = site / "smartflow.toml"
    config.write_text(
        '[engine]\nflows = ["flows"]\nmappings = ["shipped:mappings", "/abs/mappings"]\ntemplates = ["../t"]\n'
    )
    settings = load_settings(config, env={})
    assert settings.engine.flows == [str(site / "flows")]
    assert settings.engine.mappings == ["shipped:mappings", "/abs/mappings"]  # shipped and absolute: as written
    assert settings.engine.templates == [str(tmp_path / "t")]
    # An environment override is the operator's own value, relative to where the command runs.
    env = load_settings(config, env={"SMARTFLOW_ENGINE_FLOWS": "here"})
    assert env.engine.flows == ["here"]
    relative = load_settings(Path("..") / "site" / "smartflow.toml", env={})  # a relative --config
    assert Path(relative.engine.flows[0]).resolve() == site / "flows"
    shipped_rest = {"SMARTFLOW_ENGINE_TEMPLATES": "shipped:templates", "SMARTFLOW_ENGINE_MAPPINGS": "shipped:mappings"}
    engine = load_engine(load_settings(config, env=shipped_rest))
    assert list(engine.flows) == ["intake-forms"]


@pytest.mark.integration
def test_init_makes_a_site_that_validates_from_its_own_directory(tmp_path: Path) -> None:
    site = tmp_path / "site"
    made = run_cli("init", str(site), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    for name in ("smartflow.toml", "README.md", "flows/intake-forms.toml", "templates/intake-forms.toml",
                 "mappings/patient.toml", "samples/appointment-noshow.json"):  # fmt: skip
        assert (site / name).is_file(), name
    example = tomllib.loads(shipped.read_text(shipped.EXAMPLE_CONFIG))
    config = tomllib.loads((site / "smartflow.toml").read_text())
    # Every key of the example config, documented (its comments kept); the subscriptions wait for going live.
    assert {k: v for k, v in example.items() if k not in ("engine", "subscriptions")} == {
        k: v for k, v in config.items() if k != "engine"
    }
    assert "# [[subscriptions]]" in (site / "smartflow.toml").read_text()
    settings = load_settings(site / "smartflow.toml", env={})
    assert settings.engine.flows == [str(site / "flows")] and not settings.subscriptions

    for kind in ("flow", "template", "mapping"):  # editors: the schemas and their taplo association
        assert (site / "schema" / f"{kind}.schema.json").read_text() == schema_text(kind)
    rules = tomllib.loads((site / ".taplo.toml").read_text())["rule"]
    assert {r["include"][0]: r["schema"]["path"] for r in rules} == {
        "flows/**/*.toml": "schema/flow.schema.json",
        "templates/**/*.toml": "schema/template.schema.json",
        "mappings/**/*.toml": "schema/mapping.schema.json",
    }

    ok = run_cli("validate", cwd=site)  # no --config: the site's smartflow.toml
    assert ok.returncode == 0 and ok.stdout.startswith("OK: ") and "7 flows" in ok.stdout, ok.stdout + ok.stderr
    for hook in yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text()):  # what pre-commit runs there
        assert hook["language"] == "python" and hook["pass_filenames"] is False and hook["files"] == r"\.toml$"
        exe, *args = hook["entry"].split()
        assert exe == "fhir-smartflow" and args[0] in ("validate", "lint")
        result = run_cli(*args, cwd=site)
        assert result.returncode == 0, (hook["id"], result.stdout, result.stderr)
    flow = site / "flows" / "intake-forms.toml"
    flow.write_text(flow.read_text().replace('unit = "days"', 'unit = "fortnights"', 1))
    broken = run_cli("validate", cwd=site)  # the site's copies are what is checked
    assert broken.returncode == 1 and "flows/intake-forms.toml" in broken.stdout, broken.stdout
    again = run_cli("init", str(site), cwd=tmp_path)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "not an empty directory" in again.stderr


def test_version_and_license_metadata() -> None:
    from importlib.metadata import version

    from click.testing import CliRunner

    import fhir_smartflow
    from fhir_smartflow.cli import main

    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and fhir_smartflow.__version__ in result.output
    assert version("fhir-smartflow") == fhir_smartflow.__version__  # one source: pyproject reads __version__
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    # An SPDX expression and the license file (not the deprecated `license = { text = ... }` table).
    assert project["project"]["license"] == "Apache-2.0"
    assert all((ROOT / f).is_file() for f in project["project"]["license-files"])
    assert "Apache License" in (ROOT / "LICENSE").read_text()
    assert any(r.startswith("setuptools>=77") for r in project["build-system"]["requires"])
    assert project["project"]["dynamic"] == ["version"]
    data = project["tool"]["setuptools"]["package-data"]["fhir_smartflow"]
    assert {"data/**/*.toml", "data/**/*.json", "data/**/*.md"} <= set(data)
