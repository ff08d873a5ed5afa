"""Client CPU per FHIR POST: the project's ``Transport`` vs ``requests.Session`` vs ``urllib3.PoolManager``
vs ``http.client``.

The server is a tiny threaded HTTP/1.1 server in a process of its own (``http.server``, keep-alive),
answering every POST ``201 Created`` with a small JSON body and a Location, so the client's work is all
that differs. Each client sends ``--requests`` POSTs of the same body (a transaction Bundle of the four
resources a bench-intake event writes, built with the worker's own builders) over one keep-alive
connection, reads the answer and parses its JSON. ``Transport`` is the path every FHIR request of the
worker takes (fhir/transport.py: URL guard, headers, retry loop, the project's ``Session``); it is handed
the Bundle as a dict, as the worker does, so its figure includes the ``json.dumps`` the others skip.
CPU is this process's own ``time.process_time`` over the loop (single-threaded, no profiler); the clients
take turns for ``--rounds`` rounds so a change in the machine's load falls on all of them. Baseline in
the same run: ``http.client``, the least a client can do; the others are given as a ratio to it. The
server's CPU per request is shown too (the same for every client, or the comparison is not fair).

    .venv/bin/python -m benchmarks.http_clients                     # 3 rounds x 2,000 POSTs per client
    .venv/bin/python -m benchmarks.http_clients --requests 5000 --rounds 5 --json
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
import urllib3

from benchmarks import _procs
from benchmarks.validation_cost import resources
from fhir_smartflow.fhir.transport import Transport
from tests.support.net import free_port
from tests.support.procs import ROOT, Process

# The server: answers every request with 201 + a small JSON body, keep-alive (HTTP/1.1).
_SERVER = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODY = b'{"resourceType":"Task","id":"t1","meta":{"versionId":"1","lastUpdated":"2026-12-02T03:00:00Z"}}'

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # no 40 ms delayed-ACK stall between the header and body writes

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(201)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Location", "/Task/t1/_history/1")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""

HEADERS = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}


def bundle_body() -> bytes:
    entries = [
        {"fullUrl": f"urn:uuid:0000000{i}", "resource": r, "request": {"method": "POST", "url": r["resourceType"]}}
        for i, r in enumerate(resources())
    ]
    return json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}).encode()


Poster = Callable[[], Any]


def with_requests(url: str, body: bytes) -> tuple[Poster, Callable[[], None]]:
    session = requests.Session()

    def post() -> Any:
        r = session.post(url, data=body, headers=HEADERS, timeout=10)
        assert r.status_code == 201, r.status_code
        return r.json()

    return post, session.close


def with_transport(url: str, body: bytes) -> tuple[Poster, Callable[[], None]]:
    transport = Transport(url.rsplit("/", 1)[0])
    bundle = json.loads(body)

    def post() -> Any:
        r = transport.send("POST", url, json=bundle, idempotent=True)
        assert r.status_code == 201, r.status_code
        return r.json()

    return post, transport.session.close


def with_urllib3(url: str, body: bytes) -> tuple[Poster, Callable[[], None]]:
    pool = urllib3.PoolManager(maxsize=1)

    def post() -> Any:
        r = pool.request("POST", url, body=body, headers=HEADERS, timeout=10.0)
        assert r.status == 201, r.status
        return json.loads(r.data)

    return post, pool.clear


def with_http_client(url: str, body: bytes) -> tuple[Poster, Callable[[], None]]:
    host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)

    def post() -> Any:
        conn.request("POST", "/Task", body=body, headers=HEADERS)
        r = conn.getresponse()
        data = r.read()
        assert r.status == 201, r.status
        return json.loads(data)

    return post, conn.close


CLIENTS: dict[str, Callable[[str, bytes], tuple[Poster, Callable[[], None]]]] = {
    "http.client": with_http_client,
    "urllib3.PoolManager": with_urllib3,
    "requests.Session": with_requests,
    "fhir_smartflow Transport": with_transport,
}


def measure(
    make: Callable[[str, bytes], tuple[Poster, Callable[[], None]]], url: str, body: bytes, n: int, server_pid: int
) -> dict[str, float]:
    post, close = make(url, body)
    try:
        for _ in range(50):  # connect and warm up outside the measured loop
            post()
        server0, wall0, cpu0 = _procs.cpu_seconds(server_pid), time.perf_counter(), time.process_time()
        for _ in range(n):
            post()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        server = _procs.cpu_seconds(server_pid) - server0
    finally:
        close()
    return {"client_cpu_us": cpu / n * 1e6, "server_cpu_us": server / n * 1e6, "wall_us": wall / n * 1e6}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Client CPU per FHIR POST: Transport vs requests vs urllib3 vs http.client"
    )
    parser.add_argument("--requests", type=int, default=2000, help="POSTs per client per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not 1 <= args.requests <= 100_000 or not 1 <= args.rounds <= 20:
        parser.error("--requests 1..100000, --rounds 1..20")
    body = bundle_body()
    port = free_port()
    url = f"http://127.0.0.1:{port}/Task"
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in CLIENTS}
    with tempfile.TemporaryDirectory() as tmp:
        server = Process([sys.executable, "-c", _SERVER, str(port)], Path(tmp) / "server.log", cwd=ROOT)
        try:
            server.wait_http(f"http://127.0.0.1:{port}/")
            for _ in range(args.rounds):
                for name, make in CLIENTS.items():
                    runs[name].append(measure(make, url, body, args.requests, server.pid))
        finally:
            server.stop()
    report: dict[str, Any] = {
        "machine": _procs.machine(),
        "body_bytes": len(body),
        "requests": args.requests,
        "rounds": args.rounds,
        "clients": {},
    }
    base = statistics.median(r["client_cpu_us"] for r in runs["http.client"])
    for name, rows in runs.items():
        cpu = statistics.median(r["client_cpu_us"] for r in rows)
        report["clients"][name] = {
            "client_cpu_us_per_post": round(cpu, 1),
            "client_cpu_us_per_round": [round(r["client_cpu_us"], 1) for r in rows],
            "server_cpu_us_per_post": round(statistics.median(r["server_cpu_us"] for r in rows), 1),
            "wall_us_per_post": round(statistics.median(r["wall_us"] for r in rows), 1),
            "ratio_to_http_client": round(cpu / base, 2) if base else None,
            "extra_us_over_http_client": round(cpu - base, 1),
        }
    print(f"machine: {report['machine']}; body {len(body)} B; {args.rounds} rounds x {args.requests} POSTs per client")
    for name, row in report["clients"].items():
        print(
            f"{name:<25} client CPU {row['client_cpu_us_per_post']:>7} µs/POST"
            f" (rounds {row['client_cpu_us_per_round']})"
            f" | {row['ratio_to_http_client']}x http.client, +{row['extra_us_over_http_client']} µs"
            f" | server {row['server_cpu_us_per_post']} µs | wall {row['wall_us_per_post']} µs"
        )
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
