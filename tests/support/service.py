"""The whole service in tests: its config file (the shipped flows, mappings and templates on the test's Redis
and FHIR store), and the service as real processes: the `sandbox` FHIR store, `serve` notified by it and
`worker` processes, all through the CLI as an operator runs them (logs under the test's tmp_path)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fhir_smartflow.fhir.backport import TOPIC_FOR_TYPE
from tests.support.net import free_port
from tests.support.procs import ROOT, Process, smartflow_cmd
from tests.support.toml import write_config

SECRET_HEADER = "X-Smartflow-Secret"


@dataclass
class Service:
    store: str  # the sandbox's FHIR base
    serve_url: str
    config: Path
    env: dict[str, str]  # what each process of the service gets (config path, secrets)
    serve: Process
    start: Callable[..., Process] = field(repr=False)  # the `processes` fixture
    workers: list[Process] = field(default_factory=list)

    @property
    def notify(self) -> str:
        return f"{self.serve_url}/fhir/notify"

    def start_worker(self) -> Process:
        worker = self.start(smartflow_cmd("worker"), self.env, f"worker{len(self.workers)}")
        self.workers.append(worker)
        return worker

    def logs(self) -> str:
        return "\n".join(p.output() for p in [self.serve, *self.workers])


@dataclass
class SandboxProcess:
    """A `fhir-smartflow sandbox` process: ``base`` is where clients reach it (127.0.0.1, with the path of
    ``public``), ``public`` the base URL it writes into links (``public_base_url``, else the same)."""

    base: str
    public: str
    profile: str
    process: Process


def start_sandbox(
    processes: Callable[..., Process],
    *,
    profile: str = "lenient",
    faults: bool = False,
    public_base_url: str | None = None,
    database: Path | None = None,
    config: Path | None = None,
    env: dict[str, str] | None = None,
    port: int | None = None,
    clients: dict[str, tuple[str, str]] | None = None,
    workdir: Path | None = None,
) -> SandboxProcess:
    """Start the sandbox with the server behaviours of ``profile`` (lenient | medplum | hapi) and wait until
    it answers. ``public_base_url`` may use ``{port}`` (``"http://localhost:{port}/fhir"``); ``config``: its
    ``SMARTFLOW_CONFIG``; ``clients``: OAuth clients of its token endpoint, id → (secret, granted scopes),
    written to a config in ``workdir`` (strict profiles then want tokens)."""
    port = port or free_port()
    if clients:
        assert workdir is not None and config is None, "clients are written to a config of their own in workdir"
        config, env = _clients_config(workdir / f"sandbox-{port}.toml", clients, env)
    base = f"http://127.0.0.1:{port}"
    args = ["--port", str(port), "--profile", profile, *(["--faults"] if faults else [])]
    public = public_base_url.format(port=port) if public_base_url else base
    if public_base_url:
        args += ["--public-base-url", public]
        base += urlsplit(public).path.rstrip("/")  # the same path, under the address clients use
    if database is not None:
        args += ["--database", str(database)]
    process_env = {**(env or {}), **({"SMARTFLOW_CONFIG": str(config)} if config else {})}
    process = processes(smartflow_cmd("sandbox", *args), process_env or None, f"sandbox-{profile}")
    process.wait_http(f"{base}/metadata")
    return SandboxProcess(base, public, profile, process)


def _clients_config(
    path: Path, clients: dict[str, tuple[str, str]], env: dict[str, str] | None
) -> tuple[Path, dict[str, str]]:
    secrets = dict(env or {})
    lines = []
    for n, (client_id, (secret, scopes)) in enumerate(sorted(clients.items())):
        name = f"SANDBOX_CLIENT_SECRET_{n}"
        secrets[name] = secret
        lines += [f'[sandbox.clients."{client_id}"]', f'secret_env = "{name}"', f'scopes = "{scopes}"', ""]
    path.write_text("\n".join(lines))
    return path, secrets


def merged(base: dict[str, dict[str, Any]], more: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Config sections: ``more``'s keys added to (or replacing) ``base``'s, table by table."""
    return {name: {**base.get(name, {}), **more.get(name, {})} for name in {**base, **more}}


def start_service(
    processes: Callable[..., Process],
    tmp_path: Path,
    *,
    redis_url: str,
    prefix: str,
    secret: tuple[str, str],
    sections: dict[str, dict[str, Any]] | None = None,
    workers: int = 1,
    faults: bool = False,
    env: dict[str, str] | None = None,
    profile: str = "lenient",
    sandbox_clients: dict[str, tuple[str, str]] | None = None,
) -> Service:
    """Start the sandbox (``faults``: with ``/$faults``; ``profile``: the server behaviours it reproduces),
    `serve` subscribed for Patients with the secret (``secret``: environment variable, value) and ``workers``
    workers; return once the store and `serve` answer. ``sections`` adds to the config (``[fhir]`` retries,
    ``[scheduler]``, ``[sms]``, ...); ``sandbox_clients``: OAuth clients of the sandbox (`start_sandbox`),
    for which ``sections`` then gives ``[fhir]`` its auth."""
    serve_port = free_port()
    store = start_sandbox(processes, profile=profile, faults=faults, clients=sandbox_clients, workdir=tmp_path).base
    base = {
        "server": {"port": serve_port},
        "redis": {"url": redis_url, "key_prefix": prefix},
        "fhir": {"base_url": store},
    }
    # Patient for the empty-payload re-query; the tests subscribe the types of the shipped topics.
    subscription = {
        "id": "sandbox",
        "header": SECRET_HEADER,
        "secret_env": secret[0],
        "criteria": "Patient?",
        "resource_types": sorted(TOPIC_FOR_TYPE),
    }
    config = write_config(tmp_path / "smartflow.toml", merged(base, sections or {}), [subscription])
    service_env = {secret[0]: secret[1], "SMARTFLOW_CONFIG": str(config), **(env or {})}
    serve = processes(smartflow_cmd("serve"), service_env, "serve")
    service = Service(store, f"http://127.0.0.1:{serve_port}", config, service_env, serve, processes)
    for _ in range(workers):
        service.start_worker()
    serve.wait_http(f"{service.serve_url}/healthz")
    return service


def write_service_config(
    tmp_path: Path, *, prefix: str, redis_url: str = "", fhir_base: str = "", extra: str = ""
) -> Path:
    """``smartflow.toml`` in ``tmp_path``; no ``redis_url`` leaves ``[redis] url`` unset (embedded queue).
    ``extra`` follows the ``[redis]`` keys: more of them, then any other tables."""
    url = f'url = "{redis_url}"\n' if redis_url else ""
    fhir = f'[fhir]\nbase_url = "{fhir_base}"\n' if fhir_base else ""
    path = tmp_path / "smartflow.toml"
    path.write_text(
        f"""
[redis]
{url}key_prefix = "{prefix}"
{extra}
{fhir}
[engine]
flows = ["{ROOT / "flows/examples"}"]
mappings = ["{ROOT / "mappings"}"]
templates = ["{ROOT / "templates"}"]
"""
    )
    return path
