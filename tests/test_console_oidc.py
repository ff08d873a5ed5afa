"""Login through the EHR's OpenID Connect server: a real `serve` and a real provider over HTTP; only the
users `[console] oidc_users` names get in, with the role given there."""

from __future__ import annotations

import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from tests.support.console import ConsoleClient, start_console_serve
from tests.support.oidc import OidcProvider

pytestmark = pytest.mark.integration


def _through_the_ehr(client: ConsoleClient) -> requests.Response:
    """Click "Log in with the EHR", let the EHR's server send the browser back; the console's answer."""
    start = client.get("/login/oidc?next=/console/")
    assert start.status_code == 302, start.text
    back = requests.get(start.headers["Location"], allow_redirects=False, timeout=10)
    assert back.status_code == 302, back.text
    target = urlsplit(back.headers["Location"])
    return client.get(target.path.removeprefix("/console") + f"?{target.query}")


def test_only_configured_ehr_users_log_in_with_their_role(processes, serve_app, tmp_path: Path, redis_url: str) -> None:
    provider = OidcProvider("smartflow-console", "oidc-client-secret")
    server = serve_app(provider.app())
    provider.issuer = server.url
    console = {
        "oidc_issuer": server.url,
        "oidc_client_id": "smartflow-console",
        "oidc_client_secret_env": "CONSOLE_OIDC_SECRET",
        "oidc_users": {"Practitioner/123": "admin", "Practitioner/456": "viewer"},
    }
    started = start_console_serve(
        processes,
        tmp_path,
        redis_url=redis_url,
        prefix=f"t{uuid.uuid4().hex[:8]}:",
        extra={"console": console},
        env={"CONSOLE_OIDC_SECRET": "oidc-client-secret"},
    )
    client = ConsoleClient(started.base)
    assert "Log in with the EHR" in client.get("/login").text
    done = _through_the_ehr(client)
    assert done.status_code == 302 and done.headers["Location"].endswith("/console/"), done.text
    assert client.logged_in() and "Practitioner/123 (admin)" in client.page("/").text

    provider.user = "Practitioner/999"  # known to the EHR, not to the console
    stranger = ConsoleClient(started.base)
    refused = _through_the_ehr(stranger)
    assert refused.status_code == 403 and "not a user of this console" in refused.text
    assert not stranger.logged_in()

    forged = ConsoleClient(started.base)
    assert forged.get("/login/oidc/done?code=abc&state=forged").status_code == 400
    assert not forged.logged_in()
