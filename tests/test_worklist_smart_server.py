"""The sandbox as a SMART App Launch authorization server (a real `sandbox` process over HTTP): discovery,
the EHR-launch page, authorize with a login and a launch context, the token endpoint (PKCE S256, refresh,
``patient``, an ``id_token`` with ``fhirUser``) and the user token's scopes enforced on the FHIR API."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlparse

import jwt
import pytest
import requests

from tests.support.worklist import CLIENT_ID, CLIENT_SECRET, FHIR, PASSWORDS, key_pair, login_form, pkce, put, start_ehr

pytestmark = pytest.mark.integration

SCOPES = "launch openid fhirUser online_access user/Task.rus user/Patient.r"


@pytest.fixture
def ehr(processes, tmp_path) -> str:
    base = start_ehr(processes, tmp_path, serve_port=9).base
    put(base, {"resourceType": "Patient", "id": "p1", "active": True})
    put(base, {"resourceType": "Task", "id": "t1", "status": "requested", "intent": "order"})
    return base


def authorize(ehr: str, *, client: str = CLIENT_ID, redirect: str = "", scope: str = SCOPES, **extra: str):
    verifier, challenge = pkce()
    launch = urlparse(requests.get(f"{ehr}/launch", params={"app": CLIENT_ID, "patient": "p1"},
                                   allow_redirects=False, timeout=10).headers["Location"])  # fmt: skip
    params = {
        "response_type": "code",
        "client_id": client,
        "redirect_uri": redirect or "http://127.0.0.1:9/worklist/callback",
        "launch": parse_qs(launch.query)["launch"][0],
        "scope": scope,
        "state": "st-1",
        "aud": ehr,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        **extra,
    }
    return verifier, params, requests.get(f"{ehr}/auth/authorize", params=params, allow_redirects=False, timeout=10)


def sign_in(page: requests.Response, user: str = "alice", password: str | None = None) -> requests.Response:
    action, fields = login_form(page)
    data = {**fields, "username": user, "password": password or PASSWORDS[user]}
    return requests.post(action, data=data, allow_redirects=False, timeout=10)


def query(answer: requests.Response) -> dict[str, str]:
    assert answer.status_code == 302, answer.text
    return {k: v[0] for k, v in parse_qs(urlparse(answer.headers["Location"]).query).items()}


def token(
    ehr: str, form: dict[str, str], auth: tuple[str, str] | None = (CLIENT_ID, CLIENT_SECRET)
) -> requests.Response:
    return requests.post(f"{ehr}/auth/token", data=form, auth=auth, timeout=10)


def test_discovery_names_the_endpoints_and_capabilities(ehr: str) -> None:
    config = requests.get(f"{ehr}/.well-known/smart-configuration", timeout=10).json()
    assert config["authorization_endpoint"] == f"{ehr}/auth/authorize"
    assert config["token_endpoint"] == f"{ehr}/auth/token"
    assert config["code_challenge_methods_supported"] == ["S256"]
    for capability in ("launch-ehr", "launch-standalone", "client-confidential-symmetric", "client-public",
                       "context-ehr-patient", "sso-openid-connect", "permission-v2"):  # fmt: skip
        assert capability in config["capabilities"]
    assert requests.get(config["jwks_uri"], timeout=10).json()["keys"][0]["kty"] == "RSA"


def test_ehr_launch_page_opens_the_app_with_iss_and_launch(ehr: str) -> None:
    answer = requests.get(
        f"{ehr}/launch", params={"app": CLIENT_ID, "patient": "p1"}, allow_redirects=False, timeout=10
    )
    assert answer.status_code == 302
    target = urlparse(answer.headers["Location"])
    assert target.path == "/worklist/launch"
    params = parse_qs(target.query)
    assert params["iss"] == [ehr] and params["launch"][0]


def test_code_flow_with_pkce_gives_patient_fhir_user_and_refresh(ehr: str) -> None:
    verifier, params, page = authorize(ehr)
    assert page.status_code == 200 and "Sign in" in page.text
    assert sign_in(page, password="wrong").status_code == 401
    got = query(sign_in(page))
    assert got["state"] == "st-1"
    form = {"grant_type": "authorization_code", "code": got["code"], "redirect_uri": params["redirect_uri"]}
    answer = token(ehr, {**form, "code_verifier": verifier})
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    assert body["patient"] == "p1" and body["token_type"] == "Bearer"
    assert set(body["scope"].split()) == set(SCOPES.split())
    keys = jwt.PyJWKSet.from_dict(requests.get(f"{ehr}/auth/jwks", timeout=10).json())
    claims = jwt.decode(body["id_token"], keys.keys[0].key, algorithms=["RS256"], audience=CLIENT_ID)
    assert claims["fhirUser"] == f"{ehr}/Practitioner/alice"
    assert token(ehr, {**form, "code_verifier": verifier}).status_code == 400  # a code is used once
    refreshed = token(ehr, {"grant_type": "refresh_token", "refresh_token": body["refresh_token"]})
    assert refreshed.status_code == 200 and refreshed.json()["access_token"] != body["access_token"]
    again = token(ehr, {"grant_type": "refresh_token", "refresh_token": body["refresh_token"]})
    assert again.json()["error"] == "invalid_grant"  # refresh tokens rotate
    new = refreshed.json()["access_token"]
    assert requests.get(f"{ehr}/Task/t1", headers={"Authorization": f"Bearer {new}"}, timeout=10).status_code == 200


def test_pkce_verifier_client_secret_and_aud_are_checked(ehr: str) -> None:
    verifier, params, page = authorize(ehr)
    got = query(sign_in(page))
    form = {"grant_type": "authorization_code", "code": got["code"], "redirect_uri": params["redirect_uri"]}
    assert token(ehr, {**form, "code_verifier": verifier}, auth=(CLIENT_ID, "not-the-secret")).status_code == 401
    assert token(ehr, {**form, "code_verifier": "x" * 50}).json()["error"] == "invalid_grant"
    _, _, no_pkce = authorize(ehr, code_challenge="", code_challenge_method="")
    assert query(no_pkce)["error"] == "invalid_request"
    _, _, plain = authorize(ehr, code_challenge_method="plain")
    assert query(plain)["error"] == "invalid_request"
    _, _, other_aud = authorize(ehr, aud="http://elsewhere.example/fhir")
    assert query(other_aud)["error"] == "invalid_request"
    _, _, wrong_redirect = authorize(ehr, redirect="http://attacker.example/cb")
    assert wrong_redirect.status_code == 400 and "Location" not in wrong_redirect.headers


def test_user_token_scopes_are_enforced_on_the_fhir_api(ehr: str) -> None:
    verifier, params, page = authorize(ehr, client="reader", redirect="http://127.0.0.1:9/cb",
                                       scope="launch openid fhirUser user/Task.rs user/Patient.r")  # fmt: skip
    got = query(sign_in(page))
    form = {"grant_type": "authorization_code", "code": got["code"], "redirect_uri": params["redirect_uri"],
            "code_verifier": verifier, "client_id": "reader"}  # fmt: skip
    body = token(ehr, form, auth=None).json()
    assert body["scope"].split() == ["launch", "openid", "fhirUser", "user/Task.rs"]  # Patient.r not allowed
    bearer = {"Authorization": f"Bearer {body['access_token']}"}
    assert requests.get(f"{ehr}/Task", headers=bearer, timeout=10).status_code == 200
    assert requests.get(f"{ehr}/Patient/p1", headers=bearer, timeout=10).status_code == 403
    task = requests.get(f"{ehr}/Task/t1", headers=bearer, timeout=10).json()
    refused = requests.put(
        f"{ehr}/Task/t1", json={**task, "status": "completed"}, headers={**bearer, **FHIR}, timeout=10
    )
    assert refused.status_code == 403
    assert requests.get(f"{ehr}/Task/t1", timeout=10).json()["status"] == "requested"


def test_a_smart_client_library_completes_an_ehr_launch(ehr: str) -> None:
    from fhirclient import client as smart_client

    launch = requests.get(
        f"{ehr}/launch", params={"app": CLIENT_ID, "patient": "p1"}, allow_redirects=False, timeout=10
    )
    launched = parse_qs(urlparse(launch.headers["Location"]).query)
    settings = {
        "app_id": CLIENT_ID,
        "app_secret": CLIENT_SECRET,
        "api_base": launched["iss"][0],
        "redirect_uri": "http://127.0.0.1:9/worklist/callback",
        "scope": "openid fhirUser user/Task.rs user/Patient.r",
        "launch_token": launched["launch"][0],
    }
    smart = smart_client.FHIRClient(settings=settings, save_func=lambda state: None)
    page = requests.get(smart.authorize_url, timeout=10)
    assert page.status_code == 200, page.text
    redirect = sign_in(page).headers["Location"]
    smart.handle_callback(redirect)
    assert smart.ready and smart.patient_id == "p1"
    assert smart.server.request_json("Task/t1")["id"] == "t1"


def test_private_key_jwt_assertions_are_verified_and_used_once(processes, tmp_path) -> None:
    from fhir_smartflow.fhir.smart import CLIENT_ASSERTION_TYPE, client_assertion

    pem, jwks = key_pair(tmp_path)
    ehr = start_ehr(processes, tmp_path, serve_port=9, jwks_file=jwks).base
    verifier, params, page = authorize(ehr, client="worklist-keys")
    got = query(sign_in(page))
    form = {"grant_type": "authorization_code", "code": got["code"], "redirect_uri": params["redirect_uri"],
            "code_verifier": verifier, "client_assertion_type": CLIENT_ASSERTION_TYPE}  # fmt: skip
    key = pem.read_bytes()
    wrong_aud = client_assertion("worklist-keys", "http://elsewhere.example/token", key, "wl-key-1")
    assert token(ehr, {**form, "client_assertion": wrong_aud}, auth=None).status_code == 401
    good = client_assertion("worklist-keys", f"{ehr}/auth/token", key, "wl-key-1")
    assert token(ehr, {**form, "client_assertion": good}, auth=None).status_code == 200
    verifier, params, page = authorize(ehr, client="worklist-keys")
    again = {**form, "code": query(sign_in(page))["code"], "code_verifier": verifier, "client_assertion": good}
    assert token(ehr, again, auth=None).status_code == 401  # the same jti replayed
    secret_instead = {k: v for k, v in again.items() if not k.startswith("client_assertion")}
    assert token(ehr, {**secret_instead, "client_id": "worklist-keys"}, auth=None).status_code == 401
