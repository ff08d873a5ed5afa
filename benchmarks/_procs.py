"""Process, port and Redis helpers shared by the benchmarks (real processes, loopback only)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
import requests

ROOT = Path(__file__).resolve().parent.parent
REDIS_HOST = os.environ.get("SMARTFLOW_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("SMARTFLOW_TEST_REDIS_PORT", "6379"))
SECRET_ENV = "SMARTFLOW_BENCH_SECRET"
SECRET = "bench-secret-0123456789abcdef"
SECRET_HEADER = "X-Smartflow-Secret"
SUBSCRIPTION_ID = "bench-patient"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def claimed_redis_db() -> Iterator[str]:
    """An empty DB on the real Redis, claimed like the test fixtures do (so runs never collide)."""
    admin = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0)
    admin.ping()
    databases = int(admin.config_get("databases").get("databases", 16))
    token = uuid.uuid4().hex
    for db in range(databases - 1, 0, -1):  # from the top: the test fixtures claim from the bottom
        if admin.set(f"smartflow-test-claim:{db}", token, nx=True, ex=3600):
            break
    else:
        raise RuntimeError("no free Redis DB to benchmark in")
    conn = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
    conn.flushdb()
    try:
        yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
    finally:
        conn.flushdb()
        if admin.get(f"smartflow-test-claim:{db}") == token.encode():
            admin.delete(f"smartflow-test-claim:{db}")


def smartflow_cmd(*args: str) -> list[str]:
    exe = Path(sys.executable).with_name("fhir-smartflow")
    if exe.exists():
        return [str(exe), *args]
    return [sys.executable, "-c", "from fhir_smartflow.cli import main; main()", *args]


def cli_commands() -> set[str]:
    """Names of the registered ``fhir-smartflow`` commands ({} when the CLI does not import)."""
    try:
        from fhir_smartflow.cli import main
    except Exception:
        return set()
    return set(getattr(main, "commands", {}))


def command_options(name: str) -> set[str]:
    """Long option names of one CLI command (e.g. {"--port", "--threads"})."""
    try:
        from fhir_smartflow.cli import main
    except Exception:
        return set()
    cmd = getattr(main, "commands", {}).get(name)
    if cmd is None:
        return set()
    return {opt for param in cmd.params for opt in getattr(param, "opts", []) if opt.startswith("--")}


class Proc:
    """A child process with its output in a log file (shown when it fails)."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log_path = log_path
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTFLOW_")}
        full_env.update(env or {})
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, env=full_env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_http(self, url: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.args} exited with {self.proc.returncode}:\n{self.output()[-4000:]}")
            try:
                requests.get(url, timeout=0.5)
                return
            except requests.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"{url} did not answer within {timeout}s:\n{self.output()[-4000:]}")

    def stop(self, kill: bool = False) -> int | None:
        if self.proc.poll() is None:
            self.proc.kill() if kill else self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def write_config(
    path: Path,
    sections: dict[str, dict[str, Any]],
    subscriptions: list[dict[str, Any]] | None = None,
) -> Path:
    """A fhir-smartflow TOML config (sections + [[subscriptions]])."""
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in values.items())
        lines.append("")
    for sub in subscriptions or []:
        lines.append("[[subscriptions]]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in sub.items())
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def bench_subscription() -> dict[str, Any]:
    return {"id": SUBSCRIPTION_ID, "auth": "header", "header": SECRET_HEADER, "secret_env": SECRET_ENV}


def machine() -> str:
    import platform

    return f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}"
