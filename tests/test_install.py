"""Installs like real software: the shipped data is read from the package, config paths resolve against
the config file, and the defaults work from any directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from fhir_smartflow import shipped
from fhir_smartflow.config import Settings, load_settings
from fhir_smartflow.flowfiles import load_engine


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
