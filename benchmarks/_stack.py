"""The whole service as real processes: sandbox FHIR store + ``serve`` + workers (+ scheduler).

Used by the end-to-end and worker benchmarks and by the chaos tests. Everything goes through the
CLI (``fhir-smartflow sandbox --port``, ``serve --port``, ``worker --worker-class simple|fork``)
and HTTP, so it exercises exactly what an operator runs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from benchmarks import _payloads, _procs
from tests.support import fhir
from tests.support.net import free_port
from tests.support.procs import ROOT, Process, smartflow_cmd
from tests.support.toml import write_config

DATA = Path(__file__).resolve().parent / "data"


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
        mappings: Iterable[str | Path] = (ROOT / "mappings",),
        log_level: str = "INFO",
        extra_config: dict[str, dict[str, Any]] | None = None,
        role_redis_urls: dict[str, str] | None = None,
    ) -> None:
        """``role_redis_urls``: another Redis URL for the processes of a role (``serve``, ``worker``,
        ``scheduler``), e.g. a counting proxy's port per role; the others, and this process, use ``redis_url``."""
        self.tmp = tmp
        self.redis_url = redis_url
        self.flows = [str(p) for p in flows]
        self.templates = [str(p) for p in templates]
        self.mappings = [str(p) for p in mappings]
        self.log_level = log_level
        self.extra_config = extra_config or {}
        self.role_redis_urls = dict(role_redis_urls or {})
        self.sandbox: Process | None = None
        self.serve: Process | None = None
        self.workers: dict[str, Process] = {}
        self.worker_args: dict[str, list[str]] = {}
        self.scheduler: Process | None = None
        self.fhir_base = ""
        self.serve_url = ""
        self.config_path = tmp / "smartflow.toml"
        self.session = requests.Session()
        self._lock = threading.Lock()
        self._redis: Any = None  # the harness's own client (`redis`)

    # -- processes ---------------------------------------------------------------------------
    def config_for(self, role: str | None) -> Path:
        """The config file a process of ``role`` reads: its own when it has its own Redis URL."""
        if role in self.role_redis_urls:
            return self.tmp / f"smartflow-{role}.toml"
        return self.config_path

    def env(self, role: str | None = None) -> dict[str, str]:
        return {"SMARTFLOW_CONFIG": str(self.config_for(role)), _procs.SECRET_ENV: _procs.SECRET}

    def start_sandbox(self, database: str | None = None, faults: bool = False, profile: str = "lenient") -> str:
        """The sandbox FHIR store with the server behaviours of ``profile`` (lenient | medplum | hapi)."""
        port = free_port()
        args = smartflow_cmd("sandbox", "--port", str(port), "--profile", profile)
        if faults:
            args.append("--faults")  # /$faults is off unless asked for
        if database:
            args += ["--database", database]
        self.sandbox = Process(args, self.tmp / "sandbox.log")
        self.fhir_base = f"http://127.0.0.1:{port}"
        self.sandbox.wait_http(f"{self.fhir_base}/metadata")
        return self.fhir_base

    def write_config(self) -> Path:
        for role, url in self.role_redis_urls.items():
            self._write_config(self.config_for(role), url)
        return self._write_config(self.config_path, self.redis_url)

    def _write_config(self, path: Path, redis_url: str) -> Path:
        sections: dict[str, dict[str, Any]] = {
            "redis": {"url": redis_url},
            "fhir": {"base_url": self.fhir_base},
            "engine": {"mappings": self.mappings, "flows": self.flows, "templates": self.templates},
            "logging": {"level": self.log_level},
        }
        for name, values in self.extra_config.items():
            sections.setdefault(name, {}).update(values)
        return write_config(path, sections, [_procs.bench_subscription()])

    def start_serve(self) -> str:
        self.write_config()
        port = free_port()
        self.serve = Process(smartflow_cmd("serve", "--port", str(port)), self.tmp / "serve.log", self.env("serve"))
        self.serve_url = f"http://127.0.0.1:{port}"
        self.serve.wait_http(self.serve_url + "/healthz")
        return self.serve_url

    def start_worker(
        self,
        name: str,
        worker_class: str = "simple",
        burst: bool = False,
        extra: Iterable[str] = (),
        role: str | None = "worker",
    ) -> Process:
        """``role=None``: on ``redis_url`` even when workers have a URL of their own (a run without the proxy)."""
        args = smartflow_cmd("worker", "--worker-class", worker_class, *(["--burst"] if burst else []), *extra)
        self.worker_args[name] = args
        proc = Process(args, self.tmp / f"worker-{name}.log", self.env(role))
        self.workers[name] = proc
        return proc

    def restart_worker(self, name: str, kill: bool = True) -> Process:
        old = self.workers[name]
        old.stop(kill=kill)
        proc = Process(self.worker_args[name], self.tmp / f"worker-{name}.log", self.env("worker"))
        self.workers[name] = proc
        return proc

    def start_scheduler(self) -> Process:
        self.scheduler = Process(smartflow_cmd("scheduler"), self.tmp / "scheduler.log", self.env("scheduler"))
        return self.scheduler

    def service_logs(self) -> str:
        procs = [self.serve, self.scheduler, *self.workers.values()]
        return "\n".join(p.output() for p in procs if p is not None)

    def stop(self) -> None:
        for proc in [*self.workers.values(), self.scheduler, self.serve, self.sandbox]:
            if proc is not None:
                proc.stop()
        self.session.close()
        if self._redis is not None:
            self._redis.close()

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
            r = session.post(f"{self.fhir_base}/Patient", json=body, headers=fhir.FHIR, timeout=10)
            r.raise_for_status()
            if r.content and "id" in r.json():
                return r.json()
            location = r.headers["Location"].split("/_history")[0]  # Prefer: return=minimal
            url = location if location.startswith("http") else f"{self.fhir_base}/{location}"
            return session.get(url, timeout=10).json()

        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(create, range(count)))

    def search_all(self, resource_type: str, params: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Every match, following Bundle.link[next]."""
        return fhir.search_all(self.fhir_base, resource_type, params, session=self.session)

    def set_faults(self, **plan: Any) -> dict[str, Any]:
        """Fault injection on the sandbox (`tests.support.fhir.set_faults`)."""
        return fhir.set_faults(self.fhir_base, **plan)

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

    def events_done(self, conn: Any = None) -> int:
        """Events whose outcome the workers counted so far (processed, deduplicated or failed): a window's
        event count when jobs carry varying numbers of events (batches)."""
        return sum(int(v) for v in self._metric("events", conn).values())

    def fhir_requests(self, conn: Any = None) -> dict[str, int]:
        """Requests the service's processes sent to the FHIR server so far, by method."""
        by_method: dict[str, int] = {}
        for labels, count in self._metric("fhir_requests", conn).items():
            method = labels.split("|", 1)[0].removeprefix("method=")
            by_method[method] = by_method.get(method, 0) + int(count)
        return by_method

    @property
    def redis(self) -> Any:
        """One client (one pooled connection) for the harness's own reads: the drain loops poll every few
        ms, and a client per poll made Redis accept, greet and close a connection each time, CPU that the
        benchmarks then counted against the service."""
        import redis

        if self._redis is None:
            self._redis = redis.Redis.from_url(self.redis_url)
        return self._redis

    def _metric(self, name: str, conn: Any = None) -> dict[str, str]:
        from fhir_smartflow.config import load_settings
        from fhir_smartflow.metrics import Metrics

        settings = load_settings(self.config_path, env={})
        return Metrics(conn or self.redis, settings.redis.key_prefix).read(name)

    def queue_count(self) -> int:
        from rq import Queue

        from fhir_smartflow.config import load_settings

        settings = load_settings(self.config_path, env={})
        return Queue(settings.redis.queue, connection=self.redis).count
