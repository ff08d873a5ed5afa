"""transport.Session: requests' environment settings (proxies, CA bundle), read once per host."""

from __future__ import annotations

import pytest
import requests
import responses

from fhir_smartflow.config import FhirConfig, Settings
from fhir_smartflow.fhir.client import FhirClient
from fhir_smartflow.fhir.transport import Session

BASE = "https://ehr.example.org/fhir"


@pytest.fixture
def proxied(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "local.example.org")


def settings(url: str) -> dict:
    return Session().merge_environment_settings(url, {}, None, None, None)


@pytest.mark.usefixtures("proxied")
def test_the_same_settings_as_requests_for_each_host() -> None:
    plain = requests.Session()
    for url in (f"{BASE}/Patient/1", "https://local.example.org/fhir/Patient/1", "http://other.example.org/x"):
        assert settings(url) == plain.merge_environment_settings(url, {}, None, None, None)
    assert settings(f"{BASE}/Patient")["proxies"]["https"] == "http://proxy.internal:3128"
    assert "https" not in settings("https://local.example.org/fhir")["proxies"]


@pytest.mark.usefixtures("proxied")
def test_read_once_per_host_and_explicit_proxies_win(monkeypatch: pytest.MonkeyPatch) -> None:
    session = Session()
    first = session.merge_environment_settings(f"{BASE}/Patient/1", {}, None, None, None)
    monkeypatch.setenv("HTTPS_PROXY", "http://changed.internal:3128")
    again = session.merge_environment_settings(f"{BASE}/Task", {}, None, None, None)
    assert again == first and again["proxies"] is not first["proxies"]  # a copy: requests may change it
    explicit = session.merge_environment_settings(f"{BASE}/Task", {"https": "http://mine:1"}, None, None, None)
    assert explicit["proxies"]["https"] == "http://mine:1"
    session.trust_env = False
    assert session.merge_environment_settings(f"{BASE}/Task", {}, None, None, None)["proxies"] == {}


@responses.activate
def test_the_client_built_from_settings_sends_through_it() -> None:
    responses.get(f"{BASE}/Patient/1", json={"resourceType": "Patient", "id": "1"})
    client = FhirClient.from_settings(Settings(fhir=FhirConfig(base_url=BASE)))
    assert isinstance(client.session, Session)
    assert client.read("Patient/1") == {"resourceType": "Patient", "id": "1"}
    assert client.read("Patient/1") == {"resourceType": "Patient", "id": "1"}
