"""Authentication over real HTTP: an OAuth2 server with a token endpoint in front of the sandbox store
(tests/support/oauth.py), the FhirClient built from a config file as the service builds it."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote_plus

import pytest
from click.testing import CliRunner

from fhir_smartflow.cli import main
from fhir_smartflow.config import load_settings
from fhir_smartflow.fhir.client import FhirClient
from fhir_smartflow.fhir.errors import FhirForbidden, FhirUnauthorized
from fhir_smartflow.fhir.oauth import ClientSecretBasic, ClientSecretPost
from fhir_smartflow.fhir.scopes import ScopeSyntax
from fhir_smartflow.fhir.service_scopes import needed_scopes
from fhir_smartflow.fhir.smart import client_credentials_provider
from fhir_smartflow.fhir.tokens import BearerTokenRefused, StaticTokenProvider
from fhir_smartflow.retry import RetryPolicy
from tests.support.engine import shipped_engine
from tests.support.fhir import Sandbox, serve_sandbox
from tests.support.net import ThreadedWsgiServer
from tests.support.oauth import OAuthClient, OAuthGate
from tests.support.procs import ROOT
from tests.support.toml import write_config

pytestmark = pytest.mark.integration

SECRET = "s3:cr+t/%zz"  # characters Basic credentials must form-urlencode
TASK = {"resourceType": "Task", "status": "requested", "intent": "order", "for": {"reference": "Patient/p1"}}


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def guarded(serve_app: Callable[..., ThreadedWsgiServer], gate: OAuthGate) -> Sandbox:
    return serve_sandbox(serve_app, variant=gate.wrap)


def service_config(tmp_path: Path, base: str, **fhir: str) -> Path:
    engine = {"mappings": [str(ROOT / "mappings")], "flows": [str(ROOT / "flows/examples")]}
    engine["templates"] = [str(ROOT / "templates")]
    sections = {"fhir": {"base_url": base, "client_id": "smartflow", "max_retries": 0, **fhir}, "engine": engine}
    return write_config(tmp_path / "config.toml", sections, [{"id": "sub-1", "secret_env": "SUB_SECRET"}])


def test_client_credentials_with_basic_auth_discovers_the_endpoint_and_asks_for_exactly_the_needed_scopes(
    serve_app: Callable[..., ThreadedWsgiServer], tmp_path: Path
) -> None:
    gate = OAuthGate({"smartflow": OAuthClient(SECRET)})
    base = guarded(serve_app, gate)
    settings = load_settings(service_config(tmp_path, base, auth="client-credentials"), env={})
    client = FhirClient.from_settings(settings, env={"SMARTFLOW_FHIR_CLIENT_SECRET": SECRET})

    stored, created = client.create(TASK)
    assert created and client.read(f"Task/{stored['id']}")["id"] == stored["id"]
    [request] = gate.token_requests
    assert request["auth"] == "client_secret_basic" and request["grant_type"] == "client_credentials"
    wanted = needed_scopes(shipped_engine(), settings).render(ScopeSyntax.V2)
    assert request["scope"] == wanted  # v2: the server advertises permission-v2
    assert "system/Provenance.c" in wanted.split() and "system/Subscription.crus" in wanted.split()
    assert client.http.auth.granted_scopes() == wanted
    # The Basic credentials really were form-urlencoded: the server decoded the secret intact.
    token_call = next(r for r in base.log.requests if r.path.startswith("/oauth2/token"))
    user, _, password = base64.b64decode(token_call.headers["Authorization"][6:]).decode().partition(":")
    assert (unquote_plus(user), unquote_plus(password)) == ("smartflow", SECRET) and password != SECRET


def test_client_secret_post_against_a_server_that_knows_only_v1_scopes_and_lists_each_one(
    serve_app: Callable[..., ThreadedWsgiServer], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # An OpenEMR 7.0.0 development build: scopes_supported nested, only .read / .write, each scope listed
    # (anything else is invalid_scope), no Appointment or Questionnaire resource, no permission-v2.
    settings = load_settings(service_config(tmp_path, "http://x", auth="client-credentials"), env={})
    everything = needed_scopes(shipped_engine(), settings).render(ScopeSyntax.V1).split()
    absent = ("system/Appointment.read", "system/Questionnaire.read")
    listed = [["openid", "api:fhir"], [s for s in everything if s not in absent]]
    gate = OAuthGate(
        {"smartflow": OAuthClient("pw", method="client_secret_post", allowed="system/*.read system/*.write")},
        syntax="v1",
        scopes_supported=listed,
        enumerated=True,
        capabilities=["client-confidential-symmetric"],
        lifetime=300,
    )
    base = guarded(serve_app, gate)
    config = service_config(tmp_path, base, auth="client-credentials", client_auth="client_secret_post")
    client = FhirClient.from_settings(load_settings(config, env={}), env={"SMARTFLOW_FHIR_CLIENT_SECRET": "pw"})
    with caplog.at_level(logging.WARNING, logger="fhir_smartflow.fhir.auth"):
        client.create(TASK)
    [request] = gate.token_requests
    assert request["auth"] == "client_secret_post" and request["client_id"] == "smartflow"
    requested = request["scope"].split()
    assert "system/Provenance.write" in requested and "system/Task.read" in requested
    assert all(s.endswith((".read", ".write")) for s in requested)  # v1 only
    assert not set(absent) & set(requested)  # not offered: not asked for, so the grant is not refused
    assert "offers no scope for system/Appointment.read system/Questionnaire.read" in caplog.text

    # The same server refuses v2 scopes outright, which is why the syntax is chosen from what it advertises.
    forced = load_settings(
        service_config(tmp_path, base, auth="client-credentials", client_auth="client_secret_post", scope_syntax="v2"),
        env={},
    )
    with pytest.raises(FhirUnauthorized, match="invalid_scope"):
        FhirClient.from_settings(forced, env={"SMARTFLOW_FHIR_CLIENT_SECRET": "pw"}).create(TASK)


def test_tokens_are_renewed_before_they_expire_and_once_more_after_a_401(
    serve_app: Callable[..., ThreadedWsgiServer],
) -> None:
    clock = Clock()
    gate = OAuthGate({"app": OAuthClient("pw")}, lifetime=3600, clock=clock)  # Medplum's token lifetime
    base = guarded(serve_app, gate)
    auth = client_credentials_provider(base, ClientSecretBasic("app", "pw"), scopes="system/Task.crus", clock=clock)
    client = FhirClient(base, auth=auth, retry=RetryPolicy(max_retries=0))

    client.search("Task")
    clock.now += 3550  # 50 s left: within the 60 s renewal margin
    client.search("Task")
    assert len(gate.token_requests) == 2 and not gate.refused  # renewed before the server refused anything

    gate.revoke(auth.token())  # the server drops the token early (restart, rotation)
    client.search("Task")
    assert len(gate.token_requests) == 3 and gate.refused == [(401, "GET /Task")]


def test_a_static_bearer_token_that_is_refused_fails_at_once_and_is_not_sent_again(
    serve_app: Callable[..., ThreadedWsgiServer],
) -> None:
    clock = Clock()
    gate = OAuthGate({}, clock=clock)
    base = guarded(serve_app, gate)
    token = gate.issue("system/*.cruds", lifetime=3600)
    client = FhirClient(base, auth=StaticTokenProvider(token, "the bearer token in $MY_TOKEN"))
    client.search("Task")
    clock.now += 3600  # expired: nobody can renew a static token
    with pytest.raises(BearerTokenRefused, match=r"refused the bearer token in \$MY_TOKEN.*replace it") as refused:
        client.search("Task")
    assert not refused.value.transient
    assert refused.value.method == "GET" and refused.value.url == f"{base}/Task"
    assert gate.refused == [(401, "GET /Task")]  # one request, not resent


def test_a_403_on_a_write_names_the_scope_the_token_probably_lacks(
    serve_app: Callable[..., ThreadedWsgiServer], caplog: pytest.LogCaptureFixture
) -> None:
    gate = OAuthGate({"app": OAuthClient("pw", method="client_secret_post", allowed="system/*.rs system/Task.cu")})
    base = guarded(serve_app, gate)
    asked = "system/*.rs system/Task.cu system/Provenance.c"
    auth = client_credentials_provider(base, ClientSecretPost("app", "pw"), scopes=asked)
    client = FhirClient(base, auth=auth, retry=RetryPolicy(max_retries=0))
    with caplog.at_level(logging.WARNING, logger="fhir_smartflow.fhir.oauth"):
        client.create(TASK)
    # Told at the first token, before any write fails: the server granted less than asked.
    assert "granted less than asked for: without system/Provenance.c" in caplog.text
    provenance = {
        "resourceType": "Provenance",
        "target": [{"reference": "Task/1"}],
        "recorded": "2026-03-02T15:00:00Z",
        "agent": [{"who": {"reference": "Device/fhir-smartflow"}}],
    }
    with pytest.raises(FhirForbidden) as refused:
        client.create(provenance)
    message = str(refused.value)
    assert 'the token was granted "system/*.rs system/Task.cu"' in message  # the server left Provenance out
    assert "probably missing system/Provenance.c" in message
    assert "Forbidden: c on Provenance" in message  # the server's OperationOutcome text is kept
    assert refused.value.outcome["resourceType"] == "OperationOutcome"


def test_the_scopes_command_asks_the_server_for_its_syntax_and_what_it_offers(
    serve_app: Callable[..., ThreadedWsgiServer], tmp_path: Path
) -> None:
    listed = [["openid"], ["system/Patient.read", "system/Task.read", "system/Task.write"]]
    gate = OAuthGate({}, syntax="v1", scopes_supported=listed, enumerated=True, capabilities=[])
    base = guarded(serve_app, gate)
    result = CliRunner().invoke(main, ["--config", str(service_config(tmp_path, base)), "scopes"])
    assert result.exit_code == 0, result.output
    printed = result.stdout.split()
    assert "system/Patient.read" in printed and "system/Provenance.write" in printed  # all that is needed
    assert "note: the server offers no scope for" in result.stderr and "system/Provenance.write" in result.stderr
