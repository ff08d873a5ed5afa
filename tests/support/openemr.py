"""The OpenEMR bridge tests' setup: an RSA key + JWKS, the emulator served over HTTP, settings."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from fhir_smartflow.config import FhirConfig, OpenEmrConfig, PollConfig, RedisConfig, Settings
from tests.support.net import ThreadedWsgiServer
from tests.support.openemr_emulator import OpenEmrEmulator

CLIENT_ID = "smartflow-client"
KEY_ID = "k1"
REDIRECT_URI = "http://127.0.0.1:8765/callback"
READ_SCOPES = "system/Patient.rs system/Appointment.rs system/Encounter.rs system/QuestionnaireResponse.rs"
TOKEN_KEY = Fernet.generate_key().decode()


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


def serve_emulator(
    serve: Callable[[Any], ThreadedWsgiServer], private_pem: bytes, redirect_uri: str = REDIRECT_URI
) -> OpenEmrEmulator:
    """The emulator over real HTTP (``serve``: the ``serve_app`` fixture, which stops it)."""
    emu = OpenEmrEmulator(CLIENT_ID, jwks_of(private_pem), redirect_uri)
    emu.base_url = serve(emu.app).url
    return emu


@pytest.fixture
def emulator(serve_app: Callable[[Any], ThreadedWsgiServer], private_pem: bytes) -> OpenEmrEmulator:
    return serve_emulator(serve_app, private_pem)


def make_settings(emu: OpenEmrEmulator, redis_url: str, key_file: Path, **poll: Any) -> Settings:
    poll_cfg = PollConfig(
        types=["Appointment", "Encounter", "Patient", "QuestionnaireResponse"],
        page_size=2,
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
            scopes=READ_SCOPES,
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
        ),
    )
