"""Unit tests of the worklist's HTTP edge and pure rules (the FHIR server replaced by `responses`)."""

from __future__ import annotations

import pytest
import requests
import responses

from fhir_smartflow.worklist.fhir import FhirError, UserFhir
from fhir_smartflow.worklist.smart_client import Client, SmartError
from fhir_smartflow.worklist.tasks import Identity, is_mine, local

BASE = "https://ehr.example/fhir"


@responses.activate
def test_a_next_page_link_off_the_base_never_gets_the_token() -> None:
    page = {"resourceType": "Bundle", "type": "searchset", "link": [{"relation": "next", "url": "https://evil.example/p2"}],
            "entry": [{"resource": {"resourceType": "Task", "id": "t1"}}]}  # fmt: skip
    responses.get(f"{BASE}/Task", json=page)
    responses.get("https://evil.example/p2", json={"resourceType": "Bundle", "type": "searchset"})
    fhir = UserFhir(BASE, "secret-token", requests.Session())
    with pytest.raises(FhirError):
        list(fhir.search("Task", {}))
    assert [c.request.url.split("?")[0] for c in responses.calls] == [f"{BASE}/Task"]


def test_an_ehr_launch_is_accepted_from_the_configured_iss_only() -> None:
    client = Client(BASE, "wl", None, requests.Session())
    assert client.same_server(BASE) and client.same_server(BASE + "/")
    assert not client.same_server("https://ehr.example/fhir2")
    assert not client.same_server("https://evil.example/fhir")


def test_whose_task_it_is() -> None:
    who = Identity("Practitioner/a", ("PractitionerRole/r1",), frozenset({("http://snomed.info/sct", "768832004")}))
    assert local("https://ehr.example/fhir/Practitioner/a/_history/3") == "Practitioner/a"
    assert is_mine({"owner": {"reference": "Practitioner/a"}}, who)
    assert is_mine({"owner": {"reference": f"{BASE}/PractitionerRole/r1"}}, who)
    assert is_mine({"performerType": [{"coding": [{"system": "http://snomed.info/sct", "code": "768832004"}]}]}, who)
    assert not is_mine({"performerType": [{"coding": [{"system": "other", "code": "768832004"}]}]}, who)
    assert not is_mine({"owner": {"reference": "Practitioner/b"}}, who)
    assert not is_mine({}, who)


@responses.activate
def test_discovery_refuses_plain_http_endpoints_off_loopback() -> None:
    config = {"authorization_endpoint": "http://ehr.example/auth", "token_endpoint": "https://ehr.example/token",
              "code_challenge_methods_supported": ["S256"]}  # fmt: skip
    responses.get(f"{BASE}/.well-known/smart-configuration", json=config)
    with pytest.raises(SmartError, match="authorization_endpoint is not https"):
        Client(BASE, "wl", None, requests.Session()).discover()
