"""Auth modes: static bearer, SMART backend services (discovery, signed assertion, caching, 401 refresh)."""

from __future__ import annotations

import base64
from pathlib import Path
from urllib.parse import parse_qs, unquote_plus

import jwt
import pytest
import requests
import responses
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from fhir_smartflow.config import (
    CLIENT_SECRET_AUTH_METHODS,
    FHIR_AUTH_MODES,
    SCOPE_SYNTAXES,
    ConfigError,
    load_settings,
)
from fhir_smartflow.fhir.auth import AUTH_MODES, build_auth
from fhir_smartflow.fhir.client import FhirClient
from fhir_smartflow.fhir.errors import FhirUnauthorized, FhirUnavailable, TokenRefused
from fhir_smartflow.fhir.oauth import (
    CLIENT_SECRET_METHODS,
    ClientCredentialsTokenProvider,
    ClientSecretBasic,
    ClientSecretPost,
    TokenRequest,
    post_token,
)
from fhir_smartflow.fhir.scopes import ScopeSyntax
from fhir_smartflow.fhir.smart import (
    CLIENT_ASSERTION_TYPE,
    OAUTH_URIS,
    PrivateKeyJwt,
    discover_smart_configuration,
    smart_backend_services,
)
from fhir_smartflow.fhir.transport import Transport
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


def backend_services(
    base: str,
    client_id: str,
    key: bytes,
    *,
    alg: str = "RS384",
    kid: str = "",
    scopes: str = "",
    clock=None,
    token_endpoint: str | None = None,
    refresh_margin: float = 60.0,
) -> ClientCredentialsTokenProvider:
    """SMART backend services as build_auth makes it: private_key_jwt client auth, discovered endpoint."""
    client = PrivateKeyJwt(client_id, key, kid=kid, alg=alg, **({"clock": clock} if clock else {}))
    return smart_backend_services(
        base, client, scopes=scopes, token_endpoint=token_endpoint, refresh_margin=refresh_margin
    )


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
    provider = backend_services(
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
    provider = backend_services(BASE, "c", _pem(key), alg="ES384", token_endpoint=TOKEN_URL)
    a, b = provider.client.assertion(TOKEN_URL), provider.client.assertion(TOKEN_URL)
    ca = jwt.decode(a, key.public_key(), algorithms=["ES384"], audience=TOKEN_URL)
    cb = jwt.decode(b, key.public_key(), algorithms=["ES384"], audience=TOKEN_URL)
    assert ca["jti"] != cb["jti"]


@responses.activate
def test_token_is_cached_until_shortly_before_expiry(rsa_key) -> None:
    clock = Clock()
    _register_smart([{"access_token": "tok-1", "expires_in": 300}, {"access_token": "tok-2", "expires_in": 300}])
    provider = backend_services(BASE, "c", _pem(rsa_key), clock=clock, refresh_margin=60)
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
    auth = backend_services(BASE, "c", _pem(rsa_key))
    client = FhirClient(BASE, auth=auth, retry=RetryPolicy(max_retries=0), sleep=lambda s: None)
    responses.get(f"{BASE}/Patient/1", status=401, json={"resourceType": "OperationOutcome", "issue": []})
    responses.get(f"{BASE}/Patient/1", json={"resourceType": "Patient", "id": "1"})
    assert client.read("Patient/1")["id"] == "1"
    fhir_calls = [c for c in responses.calls if c.request.url.startswith(f"{BASE}/Patient")]
    assert [c.request.headers["Authorization"] for c in fhir_calls] == ["Bearer old", "Bearer new"]


@responses.activate
def test_token_refusal_is_a_clear_error(rsa_key) -> None:
    responses.post(TOKEN_URL, status=401, json={"error": "invalid_client", "error_description": "unknown kid"})
    provider = backend_services(BASE, "c", _pem(rsa_key), token_endpoint=TOKEN_URL)
    with pytest.raises(FhirUnauthorized, match="unknown kid"):
        provider.token()


@responses.activate
def test_plain_http_token_endpoint_is_refused(rsa_key) -> None:
    responses.get(f"{BASE}/.well-known/smart-configuration", json={"token_endpoint": "http://auth.example.org/t"})
    provider = backend_services(BASE, "c", _pem(rsa_key))
    with pytest.raises(FhirUnauthorized, match="not https"):
        provider.token()
    assert len(responses.calls) == 1


def test_build_auth_modes(tmp_path: Path, rsa_key) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[fhir]\nauth = "bearer"\ntoken_env = "MY_TOKEN"\n')
    settings = load_settings(cfg, env={})
    auth = build_auth(settings, BASE, env={"MY_TOKEN": "s3cret"})
    assert auth is not None and auth.token() == "s3cret"
    with pytest.raises(ConfigError, match="MY_TOKEN"):
        build_auth(settings, BASE, env={})

    key_file = tmp_path / "key.pem"
    key_file.write_bytes(_pem(rsa_key))
    cfg.write_text(
        f'[fhir]\nauth = "smart-backend"\nclient_id = "abc"\nprivate_key_file = "{key_file}"\nkey_id = "k1"\n'
    )
    auth = build_auth(load_settings(cfg, env={}), BASE)
    assert isinstance(auth, ClientCredentialsTokenProvider) and auth.client.kid == "k1"
    cfg.write_text('[fhir]\nauth = "smart-backend"\nclient_id = "abc"\nprivate_key_file = "/nonexistent.pem"\n')
    with pytest.raises(ConfigError, match="private_key_file"):
        build_auth(load_settings(cfg, env={}), BASE)
    assert build_auth(load_settings(None, env={}), BASE) is None


@responses.activate
def test_token_endpoint_from_the_capability_statement_when_there_is_no_smart_configuration(rsa_key) -> None:
    responses.get(f"{BASE}/.well-known/smart-configuration", status=404)
    oauth_uris = {
        "url": OAUTH_URIS,
        "extension": [{"url": "token", "valueUri": TOKEN_URL}, {"url": "authorize", "valueUri": f"{TOKEN_URL}/a"}],
    }
    statement = {
        "resourceType": "CapabilityStatement",
        "rest": [{"mode": "server", "security": {"extension": [oauth_uris]}}],
    }
    responses.get(f"{BASE}/metadata", json=statement)
    responses.post(TOKEN_URL, json={"access_token": "tok", "expires_in": 300})
    assert backend_services(BASE, "c", _pem(rsa_key)).token() == "tok"
    config = discover_smart_configuration(Transport(BASE, media_type="application/json"))
    assert (config.token_endpoint, config.authorization_endpoint) == (TOKEN_URL, f"{TOKEN_URL}/a")
    assert config.source == f"{BASE}/metadata"


@responses.activate
def test_smart_configuration_fields_are_read_and_nested_scope_lists_flattened() -> None:
    responses.get(
        f"{BASE}/.well-known/smart-configuration",
        json={
            "token_endpoint": TOKEN_URL,
            "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic"],
            "scopes_supported": [["system/Patient.rs", "system/Task.cu"], "openid"],
            "capabilities": ["permission-v2", "client-confidential-asymmetric"],
        },
    )
    config = discover_smart_configuration(Transport(BASE, media_type="application/json"))
    assert config.scopes_supported == ("system/Patient.rs", "system/Task.cu", "openid")
    assert config.token_endpoint_auth_methods == ("private_key_jwt", "client_secret_basic")
    assert "permission-v2" in config.capabilities


@responses.activate
def test_short_lived_tokens_are_renewed_a_quarter_of_their_life_early(rsa_key) -> None:
    clock = Clock()
    _register_smart([{"access_token": "a", "expires_in": 60}, {"access_token": "b", "expires_in": 60}])
    provider = backend_services(BASE, "c", _pem(rsa_key), clock=clock, refresh_margin=60)
    assert provider.token() == "a"
    clock.now += 44
    assert provider.token() == "a"  # 16 s left: a 60 s margin would fetch a token on every request
    clock.now += 2
    assert provider.token() == "b"


@responses.activate
def test_invalidating_a_token_that_was_already_replaced_keeps_the_new_one(rsa_key) -> None:
    _register_smart([{"access_token": "old", "expires_in": 3600}, {"access_token": "new", "expires_in": 3600}])
    provider = backend_services(BASE, "c", _pem(rsa_key))
    assert provider.token() == "old"
    provider.invalidate("old")  # first thread saw a 401
    assert provider.token() == "new"
    provider.invalidate("old")  # a second thread saw a 401 with the same old token
    assert provider.token() == "new"
    assert sum(1 for c in responses.calls if c.request.url == TOKEN_URL) == 2


@responses.activate
def test_token_endpoint_overload_is_transient_and_a_refusal_keeps_the_oauth_error() -> None:
    session = requests.Session()
    responses.post(TOKEN_URL, status=429)
    with pytest.raises(FhirUnavailable) as busy:
        post_token(session, TokenRequest(TOKEN_URL, {"grant_type": "client_credentials"}), 5)
    assert busy.value.transient and busy.value.status == 429
    responses.post(TOKEN_URL, status=400, json={"error": "invalid_scope", "error_description": "system/Task.cu"})
    with pytest.raises(TokenRefused) as refused:
        post_token(session, TokenRequest(TOKEN_URL, {"grant_type": "client_credentials"}), 5)
    assert (refused.value.error, refused.value.description, refused.value.status) == (
        "invalid_scope",
        "system/Task.cu",
        400,
    )
    assert not refused.value.transient


@responses.activate
def test_client_secret_basic_form_urlencodes_id_and_secret_before_base64() -> None:
    responses.post(TOKEN_URL, json={"access_token": "tok", "expires_in": 3600})
    client = ClientSecretBasic("app id", "s3:cr+t%")
    provider = ClientCredentialsTokenProvider(client, TOKEN_URL, scopes="system/Task.cu")
    assert provider.token() == "tok"
    request = responses.calls[0].request
    scheme, encoded = request.headers["Authorization"].split(" ")
    assert scheme == "Basic"
    user, password = base64.b64decode(encoded).decode().split(":")
    assert (unquote_plus(user), unquote_plus(password)) == ("app id", "s3:cr+t%")  # RFC 6749 2.3.1
    form = parse_qs(request.body)
    assert form == {"grant_type": ["client_credentials"], "scope": ["system/Task.cu"]}  # no secret in the body
    assert "s3:cr" not in repr(client)


@responses.activate
def test_client_secret_post_sends_id_and_secret_in_the_form() -> None:
    responses.post(TOKEN_URL, json={"access_token": "tok", "expires_in": 3600})
    client = CLIENT_SECRET_METHODS["client_secret_post"]("app", "s3cret")
    assert isinstance(client, ClientSecretPost)
    assert ClientCredentialsTokenProvider(client, TOKEN_URL).token() == "tok"
    request = responses.calls[0].request
    assert "Authorization" not in request.headers
    form = {k: v[0] for k, v in parse_qs(request.body).items()}
    assert (form["client_id"], form["client_secret"]) == ("app", "s3cret")
    assert "s3cret" not in repr(client)
    with pytest.raises(ValueError, match="client secret"):
        ClientSecretPost("app", "")


def test_client_credentials_config_is_checked_and_every_mode_has_a_builder(tmp_path: Path) -> None:
    # config.py (below the fhir layer) names the modes, client auth methods and syntaxes it accepts.
    assert set(AUTH_MODES) == set(FHIR_AUTH_MODES)
    assert set(CLIENT_SECRET_METHODS) == set(CLIENT_SECRET_AUTH_METHODS)
    assert {s.value for s in ScopeSyntax} | {"auto"} == set(SCOPE_SYNTAXES)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[fhir]\nauth = "client-credentials"\nclient_id = "app"\nclient_secret_env = "APP_SECRET"\n')
    settings = load_settings(cfg, env={})
    with pytest.raises(ConfigError, match="APP_SECRET"):
        build_auth(settings, BASE, env={})
    auth = build_auth(settings, BASE, env={"APP_SECRET": "pw"})
    assert isinstance(auth, ClientCredentialsTokenProvider) and isinstance(auth.client, ClientSecretBasic)
    cfg.write_text('[fhir]\nauth = "client-credentials"\nclient_auth = "client_secret_jwt"\n')
    with pytest.raises(ConfigError, match=r"client_auth.*client_secret_basic, client_secret_post"):
        load_settings(cfg, env={})
    cfg.write_text('[fhir]\nscope_syntax = "v3"\n')
    with pytest.raises(ConfigError, match="scope_syntax"):
        load_settings(cfg, env={})
    cfg.write_text('[fhir]\nauth = "client-credentials"\nclient_secret_env = "APP_SECRET"\n')
    with pytest.raises(ConfigError, match="client_id"):
        build_auth(load_settings(cfg, env={}), BASE, env={"APP_SECRET": "pw"})


def test_a_configured_token_endpoint_must_be_https_and_credentials_stay_out_of_reprs(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    text = '[fhir]\nauth = "client-credentials"\nclient_id = "app"\ntoken_endpoint = "{}"\n'
    cfg.write_text(text.format("http://auth.example.org/token"))
    with pytest.raises(ConfigError, match=r"token_endpoint.*https"):
        build_auth(load_settings(cfg, env={}), BASE, env={"SMARTFLOW_FHIR_CLIENT_SECRET": "pw"})
    cfg.write_text(text.format("http://127.0.0.1:8103/oauth2/token"))  # loopback: development
    auth = build_auth(load_settings(cfg, env={}), BASE, env={"SMARTFLOW_FHIR_CLIENT_SECRET": "pw"})
    assert isinstance(auth, ClientCredentialsTokenProvider) and auth.token_endpoint().startswith("http://127.0.0.1")
    request = TokenRequest(TOKEN_URL, {"client_secret": "pw"})
    ClientSecretBasic("app", "pw").authenticate(request)
    assert "pw" not in repr(request) and "Basic" not in repr(request)
