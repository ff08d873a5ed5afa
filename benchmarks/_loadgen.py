"""A bounded loopback HTTP load generator (threads, one keep-alive connection per thread).

Two modes:
- ``closed_loop``: C threads send back to back until ``max_requests`` or ``max_seconds`` is reached
  (throughput: requests/s, latency percentiles).
- ``paced``: a fixed arrival rate (N requests/s for T s) spread over a small thread pool; each
  request's latency is measured from its *scheduled* send time, so a slow server cannot hide
  queueing delay (no coordinated omission).

Only 127.0.0.1 / localhost targets are accepted: this must never load a real server by accident.
Uses ``http.client`` rather than requests: on a shared 2-core machine the client's own CPU cost must
stay small next to the server's.
"""

from __future__ import annotations

import http.client
import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

LOOPBACK_HOSTS = {"127.0.0.1", "localhost"}


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes
    headers: dict[str, str]
    tag: str = ""  # caller's key (e.g. the event id), passed to on_response


@dataclass
class LoadResult:
    label: str
    sent: int = 0
    ok: int = 0  # 2xx
    errors: dict[str, int] = field(default_factory=dict)  # "503" / "ConnectionError" -> count
    latencies: list[float] = field(default_factory=list)  # seconds, successful and failed
    elapsed: float = 0.0

    @property
    def rps(self) -> float:
        return self.sent / self.elapsed if self.elapsed else 0.0

    def percentile(self, p: float) -> float:
        return percentile(self.latencies, p)

    def summary(self) -> dict[str, float | int | str]:
        return {
            "label": self.label,
            "requests": self.sent,
            "ok": self.ok,
            "errors": sum(self.errors.values()),
            "seconds": round(self.elapsed, 3),
            "rps": round(self.rps, 1),
            "p50_ms": round(self.percentile(50) * 1000, 2),
            "p90_ms": round(self.percentile(90) * 1000, 2),
            "p99_ms": round(self.percentile(99) * 1000, 2),
            "max_ms": round(max(self.latencies, default=0.0) * 1000, 2),
        }

    def line(self) -> str:
        s = self.summary()
        errs = ", ".join(f"{k}={v}" for k, v in sorted(self.errors.items())) or "none"
        return (
            f"{s['label']:<28} {s['requests']:>7} req in {s['seconds']:>6}s  {s['rps']:>8} req/s  "
            f"p50 {s['p50_ms']:>7} ms  p90 {s['p90_ms']:>7} ms  p99 {s['p99_ms']:>7} ms  "
            f"max {s['max_ms']:>8} ms  errors: {errs}"
        )


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def _target(base_url: str) -> tuple[str, int, str]:
    parts = urlsplit(base_url)
    if parts.scheme != "http" or parts.hostname not in LOOPBACK_HOSTS:
        raise ValueError(f"load generator only targets http://127.0.0.1 (got {base_url!r})")
    return parts.hostname or "127.0.0.1", parts.port or 80, parts.path.rstrip("/")


class _Client:
    """One keep-alive connection; reconnects after errors or a server-side close."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.conn: http.client.HTTPConnection | None = None

    def send(self, req: Request, prefix: str) -> int:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            self.conn.request(req.method, prefix + req.path, body=req.body, headers=req.headers)
            resp = self.conn.getresponse()
            resp.read()
            if resp.getheader("Connection", "").lower() == "close":
                self.close()
            return resp.status
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


OnResponse = Callable[[Request, int | None, float, float], None]  # (req, status or None, sent_at, latency)


def _record(result: LoadResult, lock: threading.Lock, status: int | None, error: str | None, latency: float) -> None:
    with lock:
        result.sent += 1
        result.latencies.append(latency)
        if status is not None and 200 <= status < 300:
            result.ok += 1
        else:
            key = error or str(status)
            result.errors[key] = result.errors.get(key, 0) + 1


def closed_loop(
    base_url: str,
    requests_: Sequence[Request],
    *,
    concurrency: int = 8,
    max_requests: int = 5000,
    max_seconds: float = 30.0,
    timeout: float = 10.0,
    label: str = "",
    on_response: OnResponse | None = None,
) -> LoadResult:
    """Send ``requests_`` (cycled) from ``concurrency`` threads; stop at max_requests or max_seconds."""
    host, port, prefix = _target(base_url)
    result = LoadResult(label or base_url)
    lock = threading.Lock()
    counter = itertools.count()
    deadline = time.monotonic() + max_seconds

    def run() -> None:
        client = _Client(host, port, timeout)
        try:
            while time.monotonic() < deadline:
                i = next(counter)
                if i >= max_requests:
                    return
                req = requests_[i % len(requests_)]
                status, error = None, None
                start = time.perf_counter()
                sent_at = time.time()
                try:
                    status = client.send(req, prefix)
                except Exception as exc:  # counted, never raised: the run goes on
                    error = type(exc).__name__
                latency = time.perf_counter() - start
                _record(result, lock, status, error, latency)
                if on_response:
                    on_response(req, status, sent_at, latency)
        finally:
            client.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=run, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max_seconds + timeout + 5)
    result.elapsed = time.perf_counter() - started
    return result


def paced(
    base_url: str,
    make_request: Callable[[int], Request],
    *,
    rate: float,
    seconds: float,
    threads: int = 8,
    timeout: float = 10.0,
    label: str = "",
    on_response: OnResponse | None = None,
) -> LoadResult:
    """Send ``rate`` requests/s for ``seconds`` (request i made by ``make_request(i)``)."""
    if rate <= 0 or seconds <= 0:
        raise ValueError("rate and seconds must be positive")
    host, port, prefix = _target(base_url)
    total = round(rate * seconds)
    result = LoadResult(label or f"{base_url} @ {rate:g}/s")
    lock = threading.Lock()
    counter = itertools.count()
    start = time.perf_counter()
    interval = 1.0 / rate

    def run() -> None:
        client = _Client(host, port, timeout)
        try:
            while True:
                i = next(counter)
                if i >= total:
                    return
                scheduled = start + i * interval
                delay = scheduled - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                req = make_request(i)
                status, error = None, None
                sent_at = time.time()
                try:
                    status = client.send(req, prefix)
                except Exception as exc:
                    error = type(exc).__name__
                latency = time.perf_counter() - scheduled  # includes any wait behind a slow server
                _record(result, lock, status, error, latency)
                if on_response:
                    on_response(req, status, sent_at, latency)
        finally:
            client.close()

    workers = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(seconds + timeout + 30)
    result.elapsed = time.perf_counter() - start
    return result


def ratio(value: float, baseline: float) -> str:
    return f"{value / baseline:.2f}x" if baseline else "n/a"
