"""The worklist in tests: the sandbox as the EHR (its SMART authorization server, users and launch page), and
`serve` with the worklist mounted (plus `worker` processes and the test clock when the flows must run).

Users: ``alice`` (Practitioner/alice, holding PractitionerRole/alice-cm, a case manager) and ``bob``
(Practitioner/bob, no role). Passwords and the client secret come from the environment, as in production.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import jwt
import redis
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from fhir_smartflow.connections import Keys
from fhir_smartflow.fhir.backport import TOPIC_FOR_TYPE
from fhir_smartflow.scheduling.clock import RedisClock
from tests.support.lifecycle import PREFIX, SECRET, Stack
from tests.support.net import free_port
from tests.support.procs import ROOT, Process, smartflow_cmd
from tests.support.service import SECRET_HEADER, SandboxProcess, Service, merged, start_sandbox
from tests.support.toml import write_config

FHIR = {"Content-Type": "application/fhir+json"}
CLIENT_ID = "worklist"
CLIENT_SECRET = "worklist-client-secret-for-tests"
PASSWORDS = {"alice": "alice-password-1", "bob": "bob-password-22"}
# The case-manager role of the shipped [roles] (the flows' performerType for `owner = { role = "case-manager" }`).
ROLE_SYSTEM, ROLE_CODE = "http://snomed.info/sct", "768832004"
ENV = {
    "WL_CLIENT_SECRET": CLIENT_SECRET,
    "WL_ALICE_PASSWORD": PASSWORDS["alice"],
    "WL_BOB_PASSWORD": PASSWORDS["bob"],
    "WL_PUBLIC_SECRET": "",
}
# What the sandbox registers the worklist for: the scopes it asks (v2) and the v1 forms of them.
APP_SCOPES = "launch launch/patient openid fhirUser online_access offline_access user/*.cruds user/*.read user/*.write"


def sandbox_sections(
    serve_port: int, app_scopes: str = APP_SCOPES, jwks_file: Path | None = None
) -> dict[str, dict[str, Any]]:
    root = f"http://127.0.0.1:{serve_port}/worklist"
    sections: dict[str, dict[str, Any]] = {
        "sandbox": {
            "apps": {
                CLIENT_ID: {
                    "launch_url": f"{root}/launch",
                    "redirect_uris": f"{root}/callback",
                    "scopes": app_scopes,
                    "secret_env": "WL_CLIENT_SECRET",
                },
                "worklist-public": {  # the worklist as a public client (PKCE alone)
                    "launch_url": f"{root}/launch",
                    "redirect_uris": f"{root}/callback",
                    "scopes": app_scopes,
                },
                "reader": {  # a public client allowed to read Tasks only
                    "launch_url": f"{root}/launch",
                    "redirect_uris": "http://127.0.0.1:9/cb",
                    "scopes": "launch openid fhirUser user/Task.rs",
                },
            },
            "users": {
                "alice": {"fhir_user": "Practitioner/alice", "password_env": "WL_ALICE_PASSWORD"},
                "bob": {"fhir_user": "Practitioner/bob", "password_env": "WL_BOB_PASSWORD"},
            },
        }
    }
    if jwks_file is not None:  # the worklist as a confidential client signing private_key_jwt assertions
        app = {"launch_url": f"{root}/launch", "redirect_uris": f"{root}/callback", "scopes": app_scopes}
        sections["sandbox"]["apps"]["worklist-keys"] = {**app, "jwks_file": str(jwks_file)}
    return sections


def key_pair(tmp_path: Path, kid: str = "wl-key-1") -> tuple[Path, Path]:
    """An RSA private key (PEM) and the JWKS of its public half, written under ``tmp_path``."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "worklist-key.pem"
    pem.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwks = tmp_path / "worklist-jwks.json"
    jwks.write_text(json.dumps({"keys": [{**public, "kid": kid, "alg": "RS384", "use": "sig"}]}))
    return pem, jwks


def start_ehr(
    processes: Callable[..., Process], tmp_path: Path, serve_port: int, jwks_file: Path | None = None
) -> SandboxProcess:
    config = write_config(tmp_path / "sandbox.toml", sandbox_sections(serve_port, jwks_file=jwks_file))
    return start_sandbox(processes, config=config, env=ENV)


def put(base: str, resource: dict[str, Any]) -> dict[str, Any]:
    answer = requests.put(
        f"{base}/{resource['resourceType']}/{resource['id']}", json=resource, headers=FHIR, timeout=10
    )
    assert answer.status_code in (200, 201), answer.text
    return answer.json()


def seed_staff(base: str) -> None:
    """alice (a case manager, through PractitionerRole/alice-cm) and bob (no role)."""
    for pid in ("alice", "bob"):
        put(base, {"resourceType": "Practitioner", "id": pid, "active": True, "name": [{"family": pid.title()}]})
    put(
        base,
        {
            "resourceType": "PractitionerRole",
            "id": "alice-cm",
            "active": True,
            "practitioner": {"reference": "Practitioner/alice"},
            "code": [{"coding": [{"system": ROLE_SYSTEM, "code": ROLE_CODE}]}],
        },
    )


@dataclass
class Launch:
    """One browser-less walk through a launch (requests follows the redirects like a browser)."""

    http: requests.Session
    page: requests.Response  # the last page


def login_form(page: requests.Response) -> tuple[str, dict[str, str]]:
    action = re.search(r'<form method="post" action="([^"]+)"', page.text)
    assert action, page.text
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page.text))
    return action.group(1).replace("&amp;", "&"), {k: v.replace("&amp;", "&") for k, v in fields.items()}


def ehr_launch(ehr: str, patient: str, user: str, password: str | None = None, app: str = CLIENT_ID) -> Launch:
    http = requests.Session()
    page = http.get(f"{ehr}/launch", params={"app": app, "patient": patient}, timeout=15)
    assert page.status_code == 200, page.text
    action, fields = login_form(page)
    signed = http.post(action, data={**fields, "username": user, "password": password or PASSWORDS[user]}, timeout=15)
    return Launch(http, signed)


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    return verifier, base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def code_from(answer: requests.Response) -> dict[str, str]:
    assert answer.status_code == 302, answer.text
    return {k: v[0] for k, v in parse_qs(urlparse(answer.headers["Location"]).query).items()}


@dataclass
class WorklistStack:
    stack: Stack
    ehr: SandboxProcess

    @property
    def worklist(self) -> str:
        return f"{self.stack.service.serve_url}/worklist"


def start_worklist_stack(
    processes: Callable[..., Process],
    run_cli: Callable[..., Any],
    redis_url: str,
    redis_conn: redis.Redis,
    tmp_path: Path,
    *,
    workers: int = 1,
    flows: tuple[Path, ...] = (),
    worklist: dict[str, Any] | None = None,
    jwks_file: Path | None = None,
) -> WorklistStack:
    """The sandbox as the EHR, `serve` with the worklist (confidential client) and ``workers`` workers."""
    serve_port = free_port()
    ehr = start_ehr(processes, tmp_path, serve_port, jwks_file)
    seed_staff(ehr.base)
    clock = RedisClock(redis_conn, Keys(PREFIX))
    clock.set(datetime.now(UTC).replace(microsecond=0))
    sections = {
        "server": {"port": serve_port},
        "redis": {"url": redis_url, "key_prefix": PREFIX},
        "fhir": {"base_url": ehr.base, "max_retries": 4, "backoff_base_seconds": 0.05, "backoff_max_seconds": 0.5},
        "engine": {
            "flows": [str(f) for f in flows] or [str(ROOT / "flows/examples")],
            "mappings": [str(ROOT / "mappings")],
            "templates": [str(ROOT / "templates")],
        },
        "scheduler": {"interval_seconds": 0.1, "lock_ttl_seconds": 2.0, "test_clock": True},
        "worklist": {"client_id": CLIENT_ID, "client_secret_env": "WL_CLIENT_SECRET", **(worklist or {})},
    }
    subscription = {
        "id": "sandbox",
        "header": SECRET_HEADER,
        "secret_env": "LC_SECRET",
        "criteria": "Patient?",
        "resource_types": sorted(TOPIC_FOR_TYPE),
    }
    config = write_config(tmp_path / "smartflow.toml", merged(sections, {}), [subscription])
    env = {**ENV, "LC_SECRET": SECRET, "SMARTFLOW_CONFIG": str(config)}
    serve = processes(smartflow_cmd("serve"), env, "serve")
    service = Service(ehr.base, f"http://127.0.0.1:{serve_port}", config, env, serve, processes)
    for _ in range(workers):
        service.start_worker()
    serve.wait_http(f"{service.serve_url}/healthz")
    return WorklistStack(Stack(service, redis_conn, clock, run_cli), ehr)
