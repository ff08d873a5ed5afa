"""The channel and action-type registries: the built-ins keep the vocabulary the docs promise, and a
channel added through the registry (``[delivery] plugins``) is checked like a built-in."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from fhir_smartflow.channels import (
    BUILTIN_CHANNELS,
    channel_classes,
    channel_options,
    channel_specs,
    resolve_channel_class,
)
from fhir_smartflow.config import ConfigError, DeliveryConfig, Settings, load_settings
from fhir_smartflow.engine.action_types import ACTION_TYPES, task_types
from fhir_smartflow.flowfiles import load_paths
from tests.fax_channel import FaxOptions

ROOT = Path(__file__).resolve().parent.parent
FAX = "fax=tests.fax_channel:FaxChannel"


def with_fax(**channels: dict) -> Settings:
    return Settings(delivery=replace(DeliveryConfig(), plugins=[FAX]), channels=channels)


def test_builtin_action_types_allow_the_documented_methods() -> None:
    specs = channel_specs(Settings())
    allowed = {name: spec.allowed_methods(specs) for name, spec in ACTION_TYPES.items()}
    assert allowed == {
        "send-form": ("sms", "email", "voice", "portal", "webhook"),
        "patient-message": ("sms", "email", "voice", "portal", "webhook"),
        "notify": ("staff-message", "sms", "email", "voice", "webhook"),
        "staff-message": ("staff-message", "sms", "email"),
        "staff-task": (),
        "patient-note": ("patient-note",),
        "record-prompt": (),
    }
    assert set(task_types()) == {"send-form", "staff-task", "staff-message"}
    assert list(specs) == list(BUILTIN_CHANNELS)
    assert {name for name, spec in specs.items() if spec.fhir_only} == {"portal", "staff-message", "patient-note"}


def test_a_plugin_channel_fits_the_types_by_what_it_reaches() -> None:
    specs = channel_specs(with_fax())
    assert specs["fax"].medium is not None and specs["fax"].medium.code == "FAXWRIT"
    assert ACTION_TYPES["patient-message"].allowed_methods(specs)[-1] == "fax"
    assert ACTION_TYPES["staff-message"].allowed_methods(specs) == ("staff-message", "sms", "email", "fax")
    assert "fax" not in ACTION_TYPES["patient-note"].allowed_methods(specs)


def test_channels_table_reaches_the_plugin_options(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = with_fax(fax={"url": "http://127.0.0.1:9/fax", "timeout_seconds": 2})
    fax = channel_classes(settings)["fax"]
    assert channel_options(settings, "fax", fax) == FaxOptions(url="http://127.0.0.1:9/fax", timeout_seconds=2.0)
    monkeypatch.setenv("SMARTFLOW_CHANNELS_FAX_URL", "http://127.0.0.1:9/other")
    assert channel_options(settings, "fax", fax).url == "http://127.0.0.1:9/other"


@pytest.mark.parametrize(
    ("settings", "key", "reason"),
    [
        (with_fax(fax={"uri": "x"}), "[channels.fax] uri", "unknown key"),
        (with_fax(fax={"timeout_seconds": "soon"}), "[channels.fax] timeout_seconds", "expected a number"),
        (with_fax(pager={}), "[channels.pager]", "no channel named 'pager' (known: sms, email,"),
        (with_fax(sms={"from_number": "+1"}), "[channels.sms]", "takes no settings table; its settings are in [sms]"),
        (
            Settings(delivery=replace(DeliveryConfig(), plugins=["fax=tests.no_such_module:FaxChannel"])),
            "[delivery] plugins",
            "cannot import 'tests.no_such_module:FaxChannel' for channel 'fax'",
        ),
        (
            Settings(delivery=replace(DeliveryConfig(), plugins=["telefax=tests.fax_channel:FaxChannel"])),
            "[delivery] plugins 'telefax=tests.fax_channel:FaxChannel'",
            "registered as 'telefax' but the class is the 'fax' channel",
        ),
        (
            Settings(delivery=replace(DeliveryConfig(), plugins=["fax=tests.fax_channel:FaxOptions"])),
            "[delivery] plugins 'fax=tests.fax_channel:FaxOptions'",
            "is not a channel class",
        ),
    ],
)
def test_registry_problems_are_config_errors(settings: Settings, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        channel_specs(settings)
    assert info.value.key == key and reason in info.value.reason


def test_config_file_channels_tables_and_rate_limits(tmp_path: Path) -> None:
    config = tmp_path / "smartflow.toml"
    config.write_text(
        f'[delivery]\nplugins = ["{FAX}"]\nsms_per_minute = 5\nper_minute = {{ fax = 3, email = 7 }}\n'
        '[channels.fax]\nurl = "http://127.0.0.1:9/fax"\n'
    )
    settings = load_settings(config, env={})
    assert settings.channels == {"fax": {"url": "http://127.0.0.1:9/fax"}}
    rates = {name: settings.delivery.rate_per_minute(name) for name in ("sms", "voice", "email", "fax", "portal")}
    assert rates == {"sms": 5, "voice": 10, "email": 7, "fax": 3, "portal": 0}
    config.write_text("[delivery]\nper_minute = { fax = -1 }\n")
    with pytest.raises(ConfigError, match=r"per_minute.fax: must not be negative"):
        load_settings(config, env={})


FLOW = """
id = "fax-test"
name = "Fax test"
trigger = "patient.registered"
[[actions]]
name = "Fax the welcome letter"
category = "smartflow"
type = "patient-message"
item = "welcome-fax"
template = "welcome-fax"
methods = ["fax"]
"""


TEMPLATE = 'id = "welcome-fax"\nname = "Welcome fax"\nmethods = ["fax"]\nbody = "Welcome, {{ patient.first_name }}."\n'


def load_fax_flow(tmp_path: Path, settings: Settings) -> list[str]:
    (tmp_path / "flow.toml").write_text(FLOW)
    (tmp_path / "template.toml").write_text(TEMPLATE)
    flow, template = str(tmp_path / "flow.toml"), str(tmp_path / "template.toml")
    engine, errors = load_paths([str(ROOT / "mappings")], [flow], [template], settings)
    assert (engine is None) == bool(errors)
    return [str(e) for e in errors]


def test_fax_is_a_method_once_its_plugin_is_registered(tmp_path: Path) -> None:
    assert load_fax_flow(tmp_path, with_fax()) == []
    errors = load_fax_flow(tmp_path, Settings())
    assert f"{tmp_path / 'template.toml'}:3: methods: unknown method 'fax'" in errors[0]
    assert any(
        e.startswith(f"{tmp_path / 'flow.toml'}:11: actions[1].methods: 'fax' cannot be used: there is no channel")
        and "(known channels: sms, email, voice, portal, staff-message, patient-note, webhook)" in e
        for e in errors
    ), errors


def test_a_registry_problem_is_a_load_error_on_the_config(tmp_path: Path) -> None:
    settings = replace(with_fax(pager={}), source="smartflow.toml")
    assert load_fax_flow(tmp_path, settings) == [
        "smartflow.toml: [channels.pager]: no channel named 'pager' (known: "
        "sms, email, voice, portal, staff-message, patient-note, webhook, fax)"
    ]


def test_an_installed_package_registers_a_channel_by_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # What `pip install clinic-fax` leaves on sys.path: a dist-info with the entry point.
    dist = tmp_path / "clinic_fax-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: clinic-fax\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[smartflow.channels]\nfax = tests.fax_channel:FaxChannel\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert channel_specs(Settings())["fax"].address == "fax"
    assert resolve_channel_class("fax").name == "fax"
    assert load_fax_flow(tmp_path, Settings()) == []
