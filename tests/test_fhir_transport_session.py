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


def _prepared(session: requests.Session, **kwargs: object) -> requests.PreparedRequest:
    return session.prepare_request(requests.Request(**kwargs))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"method": "get", "url": f"{BASE}/Patient", "params": {"_id": "1", "name": None}, "data": {}},
        {
            "method": "POST",
            "url": BASE,
            "json": {"resourceType": "Bundle", "type": "transaction"},
            "headers": {"accept": "application/fhir+json", "User-Agent": None, "Authorization": "Bearer t"},
            "params": {},
            "data": {},
        },
    ],
)
def test_prepares_the_request_requests_would(kwargs: dict) -> None:
    ours, plain = _prepared(Session(), **kwargs), _prepared(requests.Session(), **kwargs)
    assert (ours.method, ours.url, ours.body) == (plain.method, plain.url, plain.body)
    assert dict(ours.headers) == dict(plain.headers)
    assert ("User-Agent" in ours.headers) == ("User-Agent" not in kwargs.get("headers", {}))  # None removes it
    assert ours.hooks == plain.hooks


def test_netrc_is_read_once_per_host(monkeypatch: pytest.MonkeyPatch) -> None:
    looked: list[str] = []

    def netrc(url: str, raise_errors: bool = False) -> tuple[str, str]:
        looked.append(url)
        return ("user", "secret")

    monkeypatch.setattr(requests.utils, "get_netrc_auth", netrc)
    session = Session()
    first = _prepared(session, method="GET", url=f"{BASE}/Patient/1", params={}, data={})
    _prepared(session, method="GET", url=f"{BASE}/Task", params={}, data={})
    assert looked == [f"{BASE}/Patient/1"]
    assert first.headers["Authorization"].startswith("Basic ")
    session.trust_env = False
    assert "Authorization" not in _prepared(session, method="GET", url=f"{BASE}/Task", params={}, data={}).headers


def test_session_cookies_go_through_requests() -> None:
    session = Session()
    session.cookies.set("route", "a", domain="ehr.example.org", path="/")
    prepared = _prepared(session, method="GET", url=f"{BASE}/Patient/1", params={}, data={})
    assert prepared.headers["Cookie"] == "route=a"
