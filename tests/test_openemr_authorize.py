"""`fhir-smartflow openemr authorize` / `status` as real processes against the emulator."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis
import requests
from click.testing import CliRunner

from fhir_smartflow.cli import main
from tests.support.net import free_port, wait_for
from tests.support.openemr import CLIENT_ID, CLIENT_SECRET, KEY_ID, SECRET_ENV, TOKEN_KEY, serve_emulator
from tests.support.openemr_emulator_scopes import CURRENT, DEV, MODES
from tests.support.procs import smartflow_cmd

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("mode", MODES)
def test_authorize_listens_for_the_redirect_and_stores_an_encrypted_refresh_token(
    mode: str,
    private_pem: bytes,
    key_file: Path,
    redis_url: str,
    redis_conn: redis.Redis,
    tmp_path: Path,
    processes,
    serve_app,
) -> None:
    redirect = f"http://127.0.0.1:{free_port()}/callback"
    emu = serve_emulator(serve_app, private_pem, redirect, mode=mode)
    config = tmp_path / "smartflow.toml"
    config.write_text(f"""
[redis]
url = "{redis_url}"
key_prefix = "t:"
[fhir]
base_url = "{emu.fhir_base}"
client_id = "{CLIENT_ID}"
private_key_file = "{key_file}"
key_id = "{KEY_ID}"
[openemr]
base_url = "{emu.base_url}"
redirect_uri = "{redirect}"
token_key_env = "T_OPENEMR_KEY"
client_secret_env = "{SECRET_ENV}"
""")
    env = {"PATH": os.environ.get("PATH", ""), "T_OPENEMR_KEY": TOKEN_KEY, SECRET_ENV: CLIENT_SECRET}
    runner = CliRunner()
    status = runner.invoke(main, ["--config", str(config), "openemr", "status"], env=env)
    assert status.exit_code == 1 and "refresh token stored: no" in status.output

    proc = processes(
        smartflow_cmd("--config", str(config), "openemr", "authorize", "--timeout", "20"), env=env, name="authorize"
    )
    output = proc.wait_output("code_challenge=")
    url = next(line for line in output.splitlines() if line.startswith("http"))
    assert "code_challenge_method=S256" in url and "offline_access" in url and "api%3Afhir" in url
    # the scopes the server knows: SMART v1 on the dev build, v2 on a current release
    expected = {DEV: "user%2Fmessage.write", CURRENT: "user%2Fmessage.c"}[mode]
    assert expected in url, url
    # The browser: OpenEMR (the emulator) logs the user in and redirects to the command's listener.
    page = wait_for(lambda: _visit(url), "the command's redirect listener", timeout=10)[0]
    assert "authorization received" in page.text
    assert proc.proc.wait(timeout=20) == 0, proc.output()
    assert "stored the OpenEMR refresh token" in proc.output()
    [refresh] = list(emu.refresh)
    assert refresh.encode() not in redis_conn.get("t:openemr:refresh")

    status = runner.invoke(main, ["--config", str(config), "openemr", "status"], env=env)
    assert status.exit_code == 0 and "writes: ok" in status.output, status.output


def _visit(url: str) -> list[requests.Response] | None:
    """The browser following the redirect, once the command's one-shot listener is up."""
    try:
        return [requests.get(url, timeout=5)]
    except requests.ConnectionError:  # the listener is not up yet
        return None
