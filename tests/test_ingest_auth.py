"""auth.py: header secrets, HMAC-SHA256 signatures, missing vs invalid (both 401), insecure-dev."""

from __future__ import annotations

import pytest

from fhir_smartflow.config import ConfigError, SubscriptionConfig
from fhir_smartflow.ingest.auth import INSECURE_DEV_SUBSCRIPTION, Authenticator, AuthError, hmac_hex

SUBS = [
    SubscriptionConfig(id="backport", auth="header", header="X-Smartflow-Secret", secret_env="S_BACKPORT"),
    SubscriptionConfig(id="medplum", auth="hmac", header="X-Signature", secret_env="S_MEDPLUM"),
]
ENV = {"S_BACKPORT": "header-secret", "S_MEDPLUM": "hmac-secret"}
BODY = b'{"resourceType": "Patient", "id": "p1"}'


@pytest.fixture
def auth() -> Authenticator:
    return Authenticator.from_config(SUBS, ENV)


def test_header_secret_identifies_subscription(auth: Authenticator) -> None:
    assert auth.identify({"x-smartflow-secret": "header-secret"}, BODY) == "backport"


def test_hmac_identifies_subscription(auth: Authenticator) -> None:
    signature = hmac_hex(b"hmac-secret", BODY)
    assert auth.identify({"X-Signature": signature}, BODY) == "medplum"
    assert auth.identify({"X-Signature": "sha256=" + signature.upper()}, BODY) == "medplum"


def test_hmac_of_another_body_is_refused(auth: Authenticator) -> None:
    with pytest.raises(AuthError) as err:
        auth.identify({"X-Signature": hmac_hex(b"hmac-secret", b"{}")}, BODY)
    assert err.value.status == 401


def test_missing_and_wrong_credentials(auth: Authenticator) -> None:
    with pytest.raises(AuthError) as missing:
        auth.identify({"Content-Type": "application/fhir+json"}, BODY)
    assert (missing.value.status, missing.value.reason) == (401, "missing")
    assert "X-Signature" in missing.value.message and "X-Smartflow-Secret" in missing.value.message
    with pytest.raises(AuthError) as wrong:
        auth.identify({"X-Smartflow-Secret": "guess"}, BODY)
    assert (wrong.value.status, wrong.value.reason) == (401, "invalid")


def test_missing_secret_env_fails_at_start() -> None:
    with pytest.raises(ConfigError) as err:
        Authenticator.from_config(SUBS, {"S_BACKPORT": "x"})
    assert "S_MEDPLUM" in str(err.value)


def test_no_subscriptions_needs_insecure_dev() -> None:
    with pytest.raises(ConfigError) as err:
        Authenticator.from_config([], {})
    assert "--insecure-dev" in str(err.value)
    dev = Authenticator.from_config([], {}, insecure_dev=True)
    assert dev.identify({}, BODY) == INSECURE_DEV_SUBSCRIPTION


def test_insecure_dev_is_ignored_when_subscriptions_exist() -> None:
    auth = Authenticator.from_config(SUBS, ENV, insecure_dev=True)
    with pytest.raises(AuthError):
        auth.identify({}, BODY)
