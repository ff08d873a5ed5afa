"""[poll] and [openemr] configuration, and strategy selection from a CapabilityStatement (no I/O)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fhir_smartflow import shipped
from fhir_smartflow.config import ConfigError, load_settings
from fhir_smartflow.ingest.poll import DATE_WINDOW, LAST_UPDATED, UNSUPPORTED, plan_strategies

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_CONFIG = Path(str(shipped.locate(shipped.EXAMPLE_CONFIG)))


def test_example_config_documents_poll_and_openemr() -> None:
    s = load_settings(EXAMPLE_CONFIG, env={})
    assert s.poll.date_window_types == ["Appointment"] and s.poll.initial_lookback_hours == 0
    assert s.openemr.user_scopes == "auto" and s.openemr.users["record-prompt"] == "admin"
    assert s.openemr.client_auth == "auto" and s.poll.full_scan_max == 2000


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[poll]\npage_size = 0\n", "[poll] page_size"),
        ("[poll]\nintervals = { Patient = 0.0 }\n", "[poll] interval_seconds"),
        ('[fhir]\nwriteback = "openemr"\n', "[openemr] base_url"),
        ('[openemr]\nbase_url = "emr.example.org"\n', "[openemr] base_url"),
        ("[openemr]\nunknown = 1\n", "[openemr] unknown"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, env={})
    assert err.value.key == key


def test_urls_derive_from_the_site() -> None:
    s = load_settings(
        None, env={"SMARTFLOW_OPENEMR_BASE_URL": "https://emr.example.org/", "SMARTFLOW_OPENEMR_SITE": "clinic2"}
    )
    assert s.openemr.api_base == "https://emr.example.org/apis/clinic2/api"
    assert s.openemr.oauth_base == "https://emr.example.org/oauth2/clinic2"


def test_strategies_for_a_versioned_server_with_subscriptions_missing() -> None:
    capability = {
        "rest": [
            {
                "mode": "server",
                "resource": [
                    {
                        "type": "Patient",
                        "versioning": "versioned-update",
                        "interaction": [{"code": "search-type"}],
                        "searchParam": [{"name": "_lastUpdated"}],
                    },
                    {
                        "type": "Appointment",
                        "interaction": [{"code": "search-type"}],
                        "searchParam": [{"name": "_lastUpdated"}, {"name": "date"}],
                    },
                    {"type": "Encounter", "interaction": [{"code": "read"}], "searchParam": [{"name": "_lastUpdated"}]},
                    {
                        "type": "CarePlan",
                        "interaction": [{"code": "search-type"}],
                        "searchParam": [{"name": "patient"}],
                    },
                ],
            }
        ]
    }
    plans = {
        p.resource_type: p
        for p in plan_strategies(capability, ["Patient", "Appointment", "Encounter", "CarePlan"], ["Appointment"])
    }
    assert plans["Patient"].strategy == LAST_UPDATED and plans["Patient"].versioned
    assert plans["Appointment"].strategy == DATE_WINDOW and not plans["Appointment"].versioned
    assert plans["Encounter"].strategy == UNSUPPORTED  # read only, no search
    assert plans["CarePlan"].strategy == UNSUPPORTED
    no_window = plan_strategies(capability, ["Appointment"], [])
    assert no_window[0].strategy == LAST_UPDATED  # a server whose _lastUpdated follows every change


def test_poll_types_default_to_what_the_enabled_flows_need() -> None:
    from fhir_smartflow.ingest.poll import poll_types

    env = {
        "SMARTFLOW_ENGINE_MAPPINGS": str(ROOT / "mappings"),
        "SMARTFLOW_ENGINE_FLOWS": str(ROOT / "flows/examples"),
        "SMARTFLOW_ENGINE_TEMPLATES": str(ROOT / "templates"),
    }
    types = poll_types(load_settings(None, env=env))
    assert {"Patient", "Appointment", "Encounter", "Task"} <= set(types)
    explicit = load_settings(None, env={**env, "SMARTFLOW_POLL_TYPES": "Patient"})
    assert poll_types(explicit) == ["Patient"]
