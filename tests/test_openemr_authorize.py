"""`fhir-smartflow openemr authorize` / `status` as real processes against the emulator."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import pytest
import redis
import requests
from click.testing import CliRunner
from openemr_emulator import OpenEmrEmulator, running
from openemr_support import CLIENT_ID, KEY_ID, TOKEN_KEY, jwks_of

from fhir_smartflow.cli import main

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_authorize_listens_for_the_redirect_and_stores_an_encrypted_refresh_token(
    private_pem: bytes, key_file: Path, redis_url: str, redis_conn: redis.Redis, tmp_path: Path, processes
) -> None:
    redirect = f"http://127.0.0.1:{free_port()}/callback"
    with running(OpenEmrEmulator(CLIENT_ID, jwks_of(private_pem), redirect)) as emu:
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
""")
        cli = str(Path(sys.executable).with_name("fhir-smartflow"))
        env = {"PATH": os.environ.get("PATH", ""), "T_OPENEMR_KEY": TOKEN_KEY}
        runner = CliRunner()
        status = runner.invoke(main, ["--config", str(config), "openemr", "status"], env=env)
        assert status.exit_code == 1 and "refresh token stored: no" in status.output

        proc = processes(
            [cli, "--config", str(config), "openemr", "authorize", "--timeout", "20"], env=env, name="authorize"
        )
        deadline = time.monotonic() + 20
        while "code_challenge=" not in proc.output() and time.monotonic() < deadline:
            time.sleep(0.05)
        url = next(line for line in proc.output().splitlines() if line.startswith("http"))
        assert "code_challenge_method=S256" in url and "offline_access" in url
        # The browser: OpenEMR (the emulator) logs the user in and redirects to the command's listener.
        deadline = time.monotonic() + 10
        while True:
            try:
                page = requests.get(url, timeout=5)
                break
            except requests.ConnectionError:  # the listener is not up yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert "authorization received" in page.text
        assert proc.proc.wait(timeout=20) == 0, proc.output()
        assert "stored the OpenEMR refresh token" in proc.output()
        [refresh] = list(emu.refresh)
        assert refresh.encode() not in redis_conn.get("t:openemr:refresh")

        status = runner.invoke(main, ["--config", str(config), "openemr", "status"], env=env)
        assert status.exit_code == 0 and "writes: ok" in status.output, status.output
