"""The CDS Hooks service in tests: the sandbox as the EHR (its FHIR store, JWK Set and CDS client), `serve`
with ``[cds]`` enabled on the test's Redis, and JWTs signed with the sandbox's own key."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fhir_smartflow.sandbox.cds_client import PATH as CLIENT_PATH
from fhir_smartflow.sandbox.cds_client import public_jwk
from tests.support.net import free_port
from tests.support.procs import Process, smartflow_cmd
from tests.support.service import SandboxProcess, start_sandbox
from tests.support.toml import write_config

SECRET = ("CDS_TEST_WEBHOOK_SECRET", "webhook-secret-for-cds-tests")
WORKLIST = "https://worklist.example.org/launch"


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass
class CdsStack:
    ehr: SandboxProcess  # the sandbox as the EHR: FHIR store, JWK Set, CDS client
    serve_url: str
    serve: Process
    key: ec.EllipticCurvePrivateKey  # the EHR's signing key (the sandbox signs with the same)
    config: Path
    env: dict[str, str]

    @property
    def service_url(self) -> str:
        return f"{self.serve_url}/cds-services/patient-view"

    @property
    def jwks_url(self) -> str:
        return f"{self.ehr.base}{CLIENT_PATH}/jwks"

    def token(
        self, key: ec.EllipticCurvePrivateKey | None = None, header: dict[str, Any] | None = None, **claims: Any
    ) -> str:
        """A JWT as the EHR signs it (``claims`` override iss / aud / iat / exp / jti; ``header`` kid / jku)."""
        now = int(time.time())
        body = {"iss": self.ehr.base, "aud": self.service_url, "iat": now, "exp": now + 60, "jti": str(uuid.uuid4())}
        body.update(claims)
        kid = public_jwk(self.key)["kid"]
        return jwt.encode(
            body, key or self.key, algorithm="ES384", headers={"kid": kid, "typ": "JWT", **(header or {})}
        )

    def call(self, body: dict[str, Any], token: str | None = None) -> requests.Response:
        """A patient-view call straight to the service (as an EHR sends it)."""
        return requests.post(
            self.service_url, json=body, headers={"Authorization": f"Bearer {token or self.token()}"}, timeout=10
        )

    def through_ehr(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        """The sandbox's CDS client does the call (discovery, prefetch, signed JWT); its ``{status, body}``."""
        resp = requests.post(
            f"{self.ehr.base}{CLIENT_PATH}/{route}", json={"service_base": self.serve_url, **body}, timeout=20
        )
        assert resp.status_code == 200, resp.text
        return resp.json()

    def put(self, resource: dict[str, Any]) -> None:
        url = f"{self.ehr.base}/{resource['resourceType']}/{resource['id']}"
        resp = requests.put(url, json=resource, headers={"Content-Type": "application/fhir+json"}, timeout=10)
        assert resp.status_code in (200, 201), resp.text


def start_cds_stack(
    processes: Callable[..., Process],
    tmp_path: Path,
    *,
    redis_url: str,
    prefix: str,
    fhir_base: str | None = None,
    cds: dict[str, Any] | None = None,
) -> CdsStack:
    """The EHR sandbox (configured to call this `serve` and sign with a key written here) and `serve` with the
    CDS service trusting it through its JWK Set URL. ``fhir_base``: `serve`'s ``[fhir] base_url`` (default the
    EHR sandbox); ``cds``: more ``[cds]`` keys."""
    key = ec_key()
    key_file = tmp_path / "ehr-key.pem"
    key_file.write_bytes(pem(key))
    serve_port = free_port()
    serve_url = f"http://127.0.0.1:{serve_port}"
    ehr_config = write_config(
        tmp_path / "ehr.toml", {"sandbox": {"cds_services": [serve_url], "cds_key_file": str(key_file)}}
    )
    ehr = start_sandbox(processes, config=ehr_config)
    sections = {
        "server": {"port": serve_port},
        "redis": {"url": redis_url, "key_prefix": prefix},
        "fhir": {"base_url": fhir_base or ehr.base},
        "cds": {
            "enabled": True,
            "public_url": serve_url,
            "issuers": [ehr.base],
            "jwks_urls": [f"{ehr.base}{CLIENT_PATH}/jwks"],
            "worklist_url": WORKLIST,
            **(cds or {}),
        },
    }
    subscription = {"id": "sandbox", "header": "X-Smartflow-Secret", "secret_env": SECRET[0], "criteria": "Patient?"}
    config = write_config(tmp_path / "smartflow.toml", sections, [subscription])
    env = {SECRET[0]: SECRET[1], "SMARTFLOW_CONFIG": str(config)}
    serve = processes(smartflow_cmd("serve"), env, "serve")
    serve.wait_http(f"{serve_url}/healthz")
    return CdsStack(ehr, serve_url, serve, key, config, env)
