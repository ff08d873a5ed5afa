"""The deployment files, checked by parsing them (there is no container engine here): the Dockerfile, the
compose file and the systemd units run real commands, give every role a health check, keep secrets out."""

from __future__ import annotations

import configparser
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from fhir_smartflow.cli import COMMANDS
from fhir_smartflow.commands.health import ROLES
from tests.support.net import free_port, wait_for
from tests.support.procs import ROOT, smartflow_cmd

DEPLOY = ROOT / "deploy"
SECRETISH = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|KEY)", re.IGNORECASE)
ROLE_OF = {"serve": "serve", "worker": "worker", "scheduler": "scheduler", "poll": "poller"}  # command -> health


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_dockerfile_roles_health_and_defaults() -> None:
    instructions = dockerfile()
    by = {name: [args for n, args in instructions if n == name] for name, _ in instructions}
    assert json.loads(by["ENTRYPOINT"][-1]) == ["fhir-smartflow"]
    assert json.loads(by["CMD"][-1]) == ["serve"]  # no --embedded, no --insecure-dev
    assert by["USER"][-1] not in ("root", "0")
    (health,) = by["HEALTHCHECK"]
    command = json.loads(health.split(" CMD ", 1)[1])
    assert command == ["fhir-smartflow", "health"]  # every role (auto); the port comes from the environment
    assert "8080" not in health
    env = dict(re.findall(r"(SMARTFLOW_\w+)=(\S+)", " ".join(by["ENV"])))
    assert env["SMARTFLOW_SERVER_PORT"] == "8080" and "SMARTFLOW_CONFIG" not in env
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()}
    for args in by["COPY"]:
        *sources, _dest = args.split()
        for source in sources:
            assert (ROOT / source).exists(), source
            assert source.split("/")[0] not in ignored, source
            assert source.split("/")[0] not in {"flows", "mappings", "templates"}, "package data, not copied"


@pytest.mark.integration
def test_the_images_default_command_does_not_serve_unauthenticated(processes, tmp_path: Path) -> None:
    """The image's CMD with its ENV and no configuration refuses to start; its try-out stays on loopback."""
    env = dict(re.findall(r"(SMARTFLOW_\w+)=(\S+)", " ".join(a for n, a in dockerfile() if n == "ENV")))
    port = str(free_port())
    default = processes(smartflow_cmd("serve"), {**env, "SMARTFLOW_SERVER_PORT": port}, "image-default")
    wait_for(lambda: not default.alive(), "the default command to exit", log=default.output)
    assert default.proc.returncode == 2 and "required by `serve`" in default.output()
    embedded = processes(smartflow_cmd("serve", "--embedded"), {**env, "SMARTFLOW_SERVER_PORT": port}, "image-try")
    out = embedded.wait_output("serving webhook on", timeout=60)
    assert f"serving webhook on http://127.0.0.1:{port}/" in out, out  # not 0.0.0.0


def test_compose_services_commands_health_checks_and_volumes() -> None:
    spec = compose()
    services = spec["services"]
    assert set(services) == {"redis", "serve", "worker", "scheduler", "poller"}
    redis = services["redis"]
    assert "--appendonly" in redis["command"] and redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") and v.split(":")[0] in spec["volumes"] for v in redis["volumes"])
    assert redis["healthcheck"]["test"][:2] == ["CMD", "redis-cli"]
    commands = set(COMMANDS)
    for name in ("serve", "worker", "scheduler", "poller"):
        service = services[name]
        (command, *_args) = service["command"]
        assert command in commands, (name, command)
        assert service["healthcheck"]["test"] == ["CMD", "fhir-smartflow", "health", ROLE_OF[command]]
        assert ROLE_OF[command] in ROLES
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "secrets.env" in service["env_file"]
        config = service["environment"]["SMARTFLOW_CONFIG"]
        assert any(config.startswith(v.split(":")[1] + "/") and v.endswith(":ro") for v in service["volumes"])
        assert service["environment"]["SMARTFLOW_REDIS_URL"].startswith("redis://redis:")
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["poller"]["profiles"] == ["poller"]  # optional
    assert all("profiles" not in services[n] for n in ("redis", "serve", "worker", "scheduler"))
    assert all(p.startswith("127.0.0.1:") for p in services["serve"]["ports"])


def test_no_secret_is_written_in_the_deploy_files() -> None:
    for name, service in compose()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            assert not SECRETISH.search(key), (name, key)
            assert "@" not in str(value) or "://" not in str(value), (name, key)  # no credentials in URLs
    for example in DEPLOY.glob("*.env.example"):
        for line in example.read_text().splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                assert not (SECRETISH.search(key) and value), f"{example.name}: {key} has a value"
    for unit in (DEPLOY / "systemd").glob("*.service"):
        for line in unit.read_text().splitlines():
            if line.startswith("Environment="):
                assert not SECRETISH.search(line), f"{unit.name}: {line}"


@pytest.mark.parametrize("unit", sorted((DEPLOY / "systemd").glob("*.service")), ids=lambda p: p.name)
def test_systemd_units_run_a_role_with_secrets_from_a_file(unit: Path) -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(unit.read_text())
    service = parser["Service"]
    exe, *args = service["ExecStart"].split()
    assert exe.endswith("/bin/fhir-smartflow") and args
    assert args[0] in {"%i"} | set(COMMANDS), args
    assert service["EnvironmentFile"].startswith("/etc/fhir-smartflow/")
    assert service["User"] != "root" and service["Restart"] == "on-failure"
    assert parser["Install"]["WantedBy"] == "multi-user.target"
