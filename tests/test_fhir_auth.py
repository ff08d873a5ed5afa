"""Auth modes: static bearer, SMART backend services (discovery, signed assertion, caching, 401 refresh)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs

import jwt
import pytest
import responses
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from fhir_smartflow.config import ConfigError, load_settings
from fhir_smartflow.fhir.auth import (
    CLIENT_ASSERTION_TYPE,
    BearerAuth,
    SmartBackendTokenProvider,
    build_auth,
)
from fhir_smartflow.fhir.client import FhirClient
from fhir_smartflow.fhir.errors import FhirUnauthorized
from fhir_smartflow.retry import RetryPolicy

BASE = "https://ehr.example.org/fhir"
TOKEN_URL = "https://auth.example.org/oauth2/token"


def _pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _register_smart(token_responses: list[dict]) -> None:
    responses.get(f"{BASE}/.well-known/smart-configuration", json={"token_endpoint": TOKEN_URL})
    for body in token_responses:
        responses.post(TOKEN_URL, json=body)


def _assertion_of(call) -> tuple[dict, dict]:
    form = parse_qs(call.request.body)
    return {k: v[0] for k, v in form.items()}, jwt.get_unverified_header(form["client_assertion"][0])


@responses.activate
def test_smart_backend_assertion_is_signed_with_the_key_and_has_the_right_claims(rsa_key) -> None:
    clock = Clock()
    _register_smart([{"access_token": "tok-1", "expires_in": 300, "token_type": "bearer"}])
    provider = SmartBackendTokenProvider(
        BASE, "client-123", _pem(rsa_key), alg="RS384", kid="key-1", scopes="system/Task.cu", clock=clock
    )
    assert provider.token() == "tok-1"
    form, header = _assertion_of(responses.calls[1])
    assert form["grant_type"] == "client_credentials"
    assert form["scope"] == "system/Task.cu"
    assert form["client_assertion_type"] == CLIENT_ASSERTION_TYPE
    assert header["alg"] == "RS384" and header["kid"] == "key-1"
    claims = jwt.decode(
        form["client_assertion"],
        rsa_key.public_key(),
        algorithms=["RS384"],
        audience=TOKEN_URL,
        options={"verify_exp": False},
    )
    assert claims["iss"] == claims["sub"] == "client-123"
    assert claims["aud"] == TOKEN_URL
    assert 0 < claims["exp"] - clock.now <= 300
    assert len(claims["jti"]) >= 16
    # A different key does not verify: the signature is real.
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(form["client_assertion"], other.public_key(), algorithms=["RS384"], audience=TOKEN_URL)


@responses.activate
def test_es384_keys_work_and_jti_is_unique() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    provider = SmartBackendTokenProvider(BASE, "c", _pem(key), alg="ES384", token_endpoint=TOKEN_URL)
    a, b = provider.client_assertion(TOKEN_URL), provider.client_assertion(TOKEN_URL)
    ca = jwt.decode(a, key.public_key(), algorithms=["ES384"], audience=TOKEN_URL)
    cb = jwt.decode(b, key.public_key(), algorithms=["ES384"], audience=TOKEN_URL)
    assert ca["jti"] != cb["jti"]


@responses.activate
def test_token_is_cached_until_shortly_before_expiry(rsa_key) -> None:
    clock = Clock()
    _register_smart([{"access_token": "tok-1", "expires_in": 300}, {"access_token": "tok-2", "expires_in": 300}])
    provider = SmartBackendTokenProvider(BASE, "c", _pem(rsa_key), clock=clock, refresh_margin=60)
    assert provider.token() == "tok-1"
    clock.now += 200
    assert provider.token() == "tok-1"  # still 100 s left, more than the margin
    clock.now += 50
    assert provider.token() == "tok-2"  # within 60 s of expiry: refreshed
    assert sum(1 for c in responses.calls if c.request.url == TOKEN_URL) == 2
    assert sum(1 for c in responses.calls if "smart-configuration" in c.request.url) == 1


@responses.activate
def test_client_refetches_token_once_on_401(rsa_key) -> None:
    _register_smart([{"access_token": "old", "expires_in": 3600}, {"access_token": "new", "expires_in": 3600}])
    auth = BearerAuth(SmartBackendTokenProvider(BASE, "c", _pem(rsa_key)))
    client = FhirClient(BASE, auth=auth, retry=RetryPolicy(max_retries=0), sleep=lambda s: None)
    responses.get(f"{BASE}/Patient/1", status=401, json={"resourceType": "OperationOutcome", "issue": []})
    responses.get(f"{BASE}/Patient/1", json={"resourceType": "Patient", "id": "1"})
    assert client.read("Patient/1")["id"] == "1"
    fhir_calls = [c for c in responses.calls if c.request.url.startswith(f"{BASE}/Patient")]
    assert [c.request.headers["Authorization"] for c in fhir_calls] == ["Bearer old", "Bearer new"]


@responses.activate
def test_token_refusal_is_a_clear_error(rsa_key) -> None:
    responses.post(TOKEN_URL, status=401, json={"error": "invalid_client", "error_description": "unknown kid"})
    provider = SmartBackendTokenProvider(BASE, "c", _pem(rsa_key), token_endpoint=TOKEN_URL)
    with pytest.raises(FhirUnauthorized, match="unknown kid"):
        provider.token()


@responses.activate
def test_plain_http_token_endpoint_is_refused(rsa_key) -> None:
    responses.get(f"{BASE}/.well-known/smart-configuration", json={"token_endpoint": "http://auth.example.org/t"})
    provider = SmartBackendTokenProvider(BASE, "c", _pem(rsa_key))
    with pytest.raises(FhirUnauthorized, match="not https"):
        provider.token()
    assert len(responses.calls) == 1


def test_build_auth_modes(tmp_path: Path, rsa_key) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[fhir]\nauth = "bearer"\ntoken_env = "MY_TOKEN"\n')
    settings = load_settings(cfg, env={})
    auth = build_auth(settings, BASE, env={"MY_TOKEN": "s3cret"})
    assert auth is not None and auth.provider.token() == "s3cret"
    with pytest.raises(ConfigError, match="MY_TOKEN"):
        build_auth(settings, BASE, env={})

    key_file = tmp_path / "key.pem"
    key_file.write_bytes(_pem(rsa_key))
    cfg.write_text(
        f'[fhir]\nauth = "smart-backend"\nclient_id = "abc"\nprivate_key_file = "{key_file}"\nkey_id = "k1"\n'
    )
    auth = build_auth(load_settings(cfg, env={}), BASE)
    assert isinstance(auth.provider, SmartBackendTokenProvider) and auth.provider.kid == "k1"
    cfg.write_text('[fhir]\nauth = "smart-backend"\nclient_id = "abc"\nprivate_key_file = "/nonexistent.pem"\n')
    with pytest.raises(ConfigError, match="private_key_file"):
        build_auth(load_settings(cfg, env={}), BASE)
    assert build_auth(load_settings(None, env={}), BASE) is None
