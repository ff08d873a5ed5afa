"""The OpenEMR bridge tests' setup: an RSA key + JWKS, the emulator served over HTTP, settings."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from fhir_smartflow.config import FhirConfig, OpenEmrConfig, PollConfig, RedisConfig, Settings
from tests.support.net import ThreadedWsgiServer
from tests.support.openemr_emulator import OpenEmrEmulator
from tests.support.openemr_emulator_scopes import CURRENT, DEV, MODES

CLIENT_ID = "smartflow-client"
CLIENT_SECRET = "s3cret+with:odd/chars"  # what registration returns for a private app
SECRET_ENV = "T_OPENEMR_CLIENT_SECRET"
KEY_ID = "k1"
REDIRECT_URI = "http://127.0.0.1:8765/callback"
# The read scopes `openemr register` prints for each version (the dev build knows v1 only and serves no
# Appointment or QuestionnaireResponse; a current release has no v2 scope for Appointment).
READ_SCOPES = {
    DEV: "system/Encounter.read system/Patient.read",
    CURRENT: "system/Appointment.read system/Encounter.rs system/Patient.rs system/QuestionnaireResponse.rs",
}
TOKEN_KEY = Fernet.generate_key().decode()
ENV = {"T_OPENEMR_KEY": TOKEN_KEY, SECRET_ENV: CLIENT_SECRET}


def rsa_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def jwks_of(pem: bytes) -> dict[str, Any]:
    public = serialization.load_pem_private_key(pem, None).public_key()
    jwk = json.loads(RSAAlgorithm.to_jwk(public))
    return {"keys": [{**jwk, "kid": KEY_ID, "alg": "RS384", "use": "sig"}]}


@pytest.fixture(scope="session")
def private_pem() -> bytes:
    return rsa_pem()


@pytest.fixture
def key_file(tmp_path: Path, private_pem: bytes) -> Path:
    path = tmp_path / "client.pem"
    path.write_bytes(private_pem)
    return path


# Every scope the bridge may ask for, in both syntaxes: a pre-registered client (the registration itself is
# tested on its own) is granted whatever of these a token request names.
REGISTERED_SCOPES = " ".join(
    [
        "openid offline_access api:oemr api:fhir",
        *(
            f"system/{t}.read system/{t}.rs"
            for t in (
                "Patient",
                "Appointment",
                "Encounter",
                "QuestionnaireResponse",
                "Questionnaire",
                "Practitioner",
                "Organization",
                "Coverage",
            )
        ),
        "user/patient.read user/patient.rs user/message.write user/message.c user/document.read user/document.write",
        "user/document.crs user/appointment.read user/appointment.rs",
    ]
)


def serve_emulator(
    serve: Callable[[Any], ThreadedWsgiServer],
    private_pem: bytes,
    redirect_uri: str = REDIRECT_URI,
    mode: str = DEV,
) -> OpenEmrEmulator:
    """The emulator over real HTTP (``serve``: the ``serve_app`` fixture, which stops it), with the client
    registered and enabled."""
    emu = OpenEmrEmulator(mode)
    emu.preregister(CLIENT_ID, CLIENT_SECRET, jwks_of(private_pem), redirect_uri, REGISTERED_SCOPES)
    emu.add_category("Smart Flows")
    emu.base_url = serve(emu.app).url
    return emu


@pytest.fixture(params=MODES)
def any_emulator(request, serve_app: Callable[[Any], ThreadedWsgiServer], private_pem: bytes) -> OpenEmrEmulator:
    """The emulator in each modelled OpenEMR version."""
    return serve_emulator(serve_app, private_pem, mode=request.param)


@pytest.fixture
def emulator(serve_app: Callable[[Any], ThreadedWsgiServer], private_pem: bytes) -> OpenEmrEmulator:
    """The emulator as the 7.0.0 development build (the stricter of the two)."""
    return serve_emulator(serve_app, private_pem)


def make_settings(emu: OpenEmrEmulator, redis_url: str, key_file: Path, **poll: Any) -> Settings:
    poll_cfg = PollConfig(
        types=["Appointment", "Encounter", "Patient", "QuestionnaireResponse"],
        page_size=2,
        intervals={},
        overlap_seconds=5,
        jitter_seconds=0,
        initial_lookback_hours=24,
    )
    return Settings(
        redis=RedisConfig(url=redis_url, key_prefix="t:"),
        fhir=FhirConfig(
            base_url=emu.fhir_base,
            auth="smart-backend",
            client_id=CLIENT_ID,
            private_key_file=str(key_file),
            key_id=KEY_ID,
            scopes=READ_SCOPES[emu.mode],
            writeback="openemr",
        ),
        poll=dataclasses.replace(poll_cfg, **poll),
        openemr=OpenEmrConfig(
            base_url=emu.base_url,
            redirect_uri=REDIRECT_URI,
            from_user="smartflow",
            users={"Practitioner/p1": "drsmith", "record-prompt": "drsmith,nurse1"},
            portal_messages_to="frontdesk",
            token_key_env="T_OPENEMR_KEY",
            client_secret_env=SECRET_ENV,
        ),
    )


def authorize(settings: Settings, conn: Any, scopes: str | None = None, env: dict[str, str] | None = None) -> dict:
    """`openemr authorize` without the browser: the emulator's /authorize stands in for login + consent."""
    import requests

    from fhir_smartflow.openemr.factory import authorize_scopes, fhir_base, user_token_store
    from fhir_smartflow.openemr.tokens import build_authorization_request, exchange_code, parse_redirect

    store = user_token_store(settings, conn, env=env or ENV)
    emr = settings.openemr
    req = build_authorization_request(
        f"{emr.oauth_base}/authorize",
        store.client_id,
        emr.redirect_uri,
        scopes or authorize_scopes(settings),
        fhir_base(settings),
    )
    resp = requests.get(req.url, allow_redirects=False, timeout=5)
    assert resp.status_code == 302, resp.text
    code, state = parse_redirect(resp.headers["Location"])
    return exchange_code(store, req, code, state)


def book_appointment(emulator: OpenEmrEmulator, headers: dict[str, str], pid: int = 1) -> requests.Response:
    """The front desk books an office visit for tomorrow 10:00 through the Standard API (status ``*``)."""
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%d")
    return requests.post(
        f"{emulator.api_base}/patient/{pid}/appointment",
        headers=headers,
        timeout=5,
        json={
            "pc_catid": "5",
            "pc_title": "Office Visit",
            "pc_duration": "900",
            "pc_hometext": "",
            "pc_apptstatus": "*",
            "pc_eventDate": tomorrow,
            "pc_startTime": "10:00",
            "pc_facility": "3",
            "pc_billing_location": "3",
        },
    )
