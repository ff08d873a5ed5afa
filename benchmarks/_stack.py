"""The whole service as real processes: sandbox FHIR store + ``serve`` + workers (+ scheduler).

Used by the end-to-end and worker benchmarks and by the chaos tests. Everything goes through the
CLI (``fhir-smartflow sandbox --port``, ``serve --port``, ``worker --worker-class simple|fork``)
and HTTP, so it exercises exactly what an operator runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from benchmarks import _payloads, _procs

DATA = Path(__file__).resolve().parent / "data"
SANDBOX_BASE_CANDIDATES = ("/sandbox/fhir", "/fhir", "")
FHIR_JSON = "application/fhir+json"


def stack_missing() -> str | None:
    """None when sandbox, serve and worker commands exist; else what is missing."""
    commands = _procs.cli_commands()
    missing = [c for c in ("sandbox", "serve", "worker") if c not in commands]
    if missing:
        return f"fhir-smartflow commands not available yet: {', '.join(missing)} (integrated main needed)"
    return None


def patient_ref(reference: str | None) -> str | None:
    """'Patient/12' from a relative or absolute reference."""
    if not reference:
        return None
    parts = reference.rstrip("/").split("/")
    return "/".join(parts[-2:]) if len(parts) >= 2 else None


class Stack:
    """Start and stop the service's processes against one Redis URL; all logs under ``tmp``."""

    def __init__(
        self,
        tmp: Path,
        redis_url: str,
        *,
        flows: Iterable[str | Path] = (DATA / "flows",),
        templates: Iterable[str | Path] = (DATA / "templates",),
        mappings: Iterable[str | Path] = (_procs.ROOT / "mappings",),
        log_level: str = "INFO",
        extra_config: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.tmp = tmp
        self.redis_url = redis_url
        self.flows = [str(p) for p in flows]
        self.templates = [str(p) for p in templates]
        self.mappings = [str(p) for p in mappings]
        self.log_level = log_level
        self.extra_config = extra_config or {}
        self.sandbox: _procs.Proc | None = None
        self.serve: _procs.Proc | None = None
        self.workers: dict[str, _procs.Proc] = {}
        self.worker_args: dict[str, list[str]] = {}
        self.scheduler: _procs.Proc | None = None
        self.fhir_base = ""
        self.sandbox_root = ""
        self.serve_url = ""
        self.config_path = tmp / "smartflow.toml"
        self.session = requests.Session()
        self._lock = threading.Lock()

    # -- processes ---------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        return {"SMARTFLOW_CONFIG": str(self.config_path), _procs.SECRET_ENV: _procs.SECRET}

    def start_sandbox(self, database: str | None = None, faults: bool = False) -> str:
        port = _procs.free_port()
        args = _procs.smartflow_cmd("sandbox", "--port", str(port))
        if faults and "--faults" in _procs.command_options("sandbox"):
            args.append("--faults")  # /$faults is off unless asked for
        if database:
            args += ["--database", database]
        self.sandbox = _procs.Proc(args, self.tmp / "sandbox.log")
        root = self.sandbox_root = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if not self.sandbox.alive():
                raise RuntimeError(f"sandbox exited:\n{self.sandbox.output()[-4000:]}")
            for path in SANDBOX_BASE_CANDIDATES:
                try:
                    r = self.session.get(f"{root}{path}/metadata", timeout=1)
                except requests.ConnectionError:
                    break
                if r.ok and r.headers.get("content-type", "").startswith(("application/fhir+json", "application/json")):
                    self.fhir_base = f"{root}{path}"
                    return self.fhir_base
            time.sleep(0.1)
        raise RuntimeError(
            f"sandbox has no /metadata under {SANDBOX_BASE_CANDIDATES}:\n{self.sandbox.output()[-4000:]}"
        )

    def write_config(self) -> Path:
        sections: dict[str, dict[str, Any]] = {
            "redis": {"url": self.redis_url},
            "fhir": {"base_url": self.fhir_base},
            "engine": {"mappings": self.mappings, "flows": self.flows, "templates": self.templates},
            "logging": {"level": self.log_level},
        }
        for name, values in self.extra_config.items():
            sections.setdefault(name, {}).update(values)
        return _procs.write_config(self.config_path, sections, [_procs.bench_subscription()])

    def start_serve(self) -> str:
        self.write_config()
        port = _procs.free_port()
        self.serve = _procs.Proc(_procs.smartflow_cmd("serve", "--port", str(port)), self.tmp / "serve.log", self.env())
        self.serve_url = f"http://127.0.0.1:{port}"
        self.serve.wait_http(self.serve_url + "/healthz")
        return self.serve_url

    def start_worker(
        self, name: str, worker_class: str = "simple", burst: bool = False, extra: Iterable[str] = ()
    ) -> _procs.Proc:
        args = _procs.smartflow_cmd("worker", "--worker-class", worker_class, *(["--burst"] if burst else []), *extra)
        self.worker_args[name] = args
        proc = _procs.Proc(args, self.tmp / f"worker-{name}.log", self.env())
        self.workers[name] = proc
        return proc

    def restart_worker(self, name: str, kill: bool = True) -> _procs.Proc:
        old = self.workers[name]
        old.stop(kill=kill)
        proc = _procs.Proc(self.worker_args[name], self.tmp / f"worker-{name}.log", self.env())
        self.workers[name] = proc
        return proc

    def start_scheduler(self) -> _procs.Proc | None:
        """A separate scheduler process when the CLI has one (else workers run it: --with-scheduler)."""
        if "scheduler" not in _procs.cli_commands():
            return None
        self.scheduler = _procs.Proc(_procs.smartflow_cmd("scheduler"), self.tmp / "scheduler.log", self.env())
        return self.scheduler

    def service_logs(self) -> str:
        procs = [self.serve, self.scheduler, *self.workers.values()]
        return "\n".join(p.output() for p in procs if p is not None)

    def stop(self) -> None:
        for proc in [*self.workers.values(), self.scheduler, self.serve, self.sandbox]:
            if proc is not None:
                proc.stop()
        self.session.close()

    # -- FHIR store --------------------------------------------------------------------------
    def create_patients(
        self, count: int, first_index: int = 0, threads: int = 4, **kwargs: Any
    ) -> list[dict[str, Any]]:
        """Create ``count`` Patients in the sandbox (server-assigned ids); returns them as stored."""
        local = threading.local()

        def create(i: int) -> dict[str, Any]:
            session = getattr(local, "session", None) or requests.Session()
            local.session = session
            body = _payloads.patient("tmp", first_index + i, **kwargs)
            del body["id"], body["meta"]
            r = session.post(f"{self.fhir_base}/Patient", json=body, headers={"Content-Type": FHIR_JSON}, timeout=10)
            r.raise_for_status()
            if r.content and "id" in r.json():
                return r.json()
            location = r.headers["Location"].split("/_history")[0]  # Prefer: return=minimal
            url = location if location.startswith("http") else f"{self.fhir_base}/{location}"
            return session.get(url, timeout=10).json()

        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(create, range(count)))

    def search_all(
        self, resource_type: str, params: dict[str, str] | None = None, page_size: int = 500
    ) -> list[dict[str, Any]]:
        """Every match, following Bundle.link[next]."""
        query = {"_count": str(page_size), **(params or {})}
        url: str | None = f"{self.fhir_base}/{resource_type}"
        found: list[dict[str, Any]] = []
        first = True
        while url:
            r = self.session.get(url, params=query if first else None, timeout=30)
            r.raise_for_status()
            bundle = r.json()
            found.extend(e["resource"] for e in bundle.get("entry", []) if "resource" in e)
            url = next((link["url"] for link in bundle.get("link", []) if link.get("relation") == "next"), None)
            first = False
        return found

    def set_faults(self, **plan: Any) -> requests.Response:
        """Fault injection on the sandbox: ``POST /$faults`` with a plan (docs/sandbox.md): status_rate,
        statuses, retry_after, stall_rate, stall_seconds, fail_first, methods, seed."""
        return self.session.post(f"{self.sandbox_root}/$faults", json=plan, timeout=5)

    def clear_faults(self) -> requests.Response:
        return self.session.delete(f"{self.sandbox_root}/$faults", timeout=5)

    # -- webhook -----------------------------------------------------------------------------
    def notify_body(
        self, resource: dict[str, Any], event_number: int, content: _payloads.Content = "full-resource"
    ) -> bytes:
        bundle = _payloads.backport_notification(
            self.fhir_base, _procs.SUBSCRIPTION_ID, event_number, resource, content
        )
        return _payloads.encode(bundle)

    def headers(self) -> dict[str, str]:
        return {**_payloads.FHIR_JSON_HEADERS, _procs.SECRET_HEADER: _procs.SECRET}

    def queue_count(self) -> int:
        import redis
        from rq import Queue

        from fhir_smartflow.config import load_settings

        settings = load_settings(self.config_path, env={})
        return Queue(settings.redis.queue, connection=redis.Redis.from_url(self.redis_url)).count
