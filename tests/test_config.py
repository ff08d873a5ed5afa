from pathlib import Path

import pytest

from fhir_smartflow import shipped
from fhir_smartflow.config import ConfigError, load_settings

EXAMPLE_CONFIG = Path(str(shipped.locate(shipped.EXAMPLE_CONFIG)))


def test_defaults_are_embedded() -> None:
    s = load_settings(None, env={})
    assert s.embedded_queue and s.sandbox_fhir
    assert s.clinic.timezone == "America/New_York"


def test_example_config_loads() -> None:
    s = load_settings(EXAMPLE_CONFIG, env={})
    assert s.server.notify_path == "/fhir/notify"
    assert s.subscriptions and s.subscriptions[0].secret_env


def test_env_overrides_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[server]\nport = 9000\n[engine]\nflows = ["a"]\n')
    s = load_settings(cfg, env={"SMARTFLOW_SERVER_PORT": "9100", "SMARTFLOW_ENGINE_FLOWS": "x, y"})
    assert s.server.port == 9100
    assert s.engine.flows == ["x", "y"]


@pytest.mark.parametrize(
    ("text", "env", "key", "reason"),
    [
        ("[server]\nprot = 1\n", {}, "[server] prot", "unknown key"),
        ("[servr]\n", {}, "[servr]", "unknown section"),
        ('[server]\nport = "x"\n', {}, "[server] port", "whole number"),
        ("", {"SMARTFLOW_SERVER_PORT": "eighty"}, "SMARTFLOW_SERVER_PORT", "whole number"),
        ('[clinic]\ntimezone = "Mars/Olympus"\n', {}, "[clinic] timezone", "time zone"),
        ('[[subscriptions]]\nid = "a"\n', {}, "[[subscriptions]] #1 secret_env", "required"),
        ('[[subscriptions]]\nid = "a"\nauth = "basic"\nsecret_env = "S"\n', {}, "[[subscriptions]] #1 auth", "hmac"),
    ],
)
def test_bad_config_names_key_and_reason(tmp_path: Path, text: str, env: dict, key: str, reason: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, env=env)
    assert err.value.key == key
    assert reason in err.value.reason
