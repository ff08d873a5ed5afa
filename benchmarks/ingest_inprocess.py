"""``serve``'s own CPU per notification without waitress: the webhook app under Flask's test client.

One thread, no HTTP server, a private redis-server: what is left is the app's Python (authentication,
parsing and checking the notification, the group commit's Redis transaction, the response) and
redis-py. Baseline in the same run, same client, same Redis: the bare Flask app with one ``LPUSH``
(`baseline_app.py`). CPU is ``time.process_time`` of this process over the requests (the Redis server's
own CPU is not in it). No worker runs, so the queue is always behind and commits take the backlog path,
as in ``benchmarks.ingest``.

    .venv/bin/python -m benchmarks.ingest_inprocess                 # 3,000 notifications per side
    .venv/bin/python -m benchmarks.ingest_inprocess --requests 10000 --rounds 3 --content id-only
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import redis

from benchmarks import _payloads, _procs, baseline_app
from fhir_smartflow.app import create_app
from fhir_smartflow.config import load_settings
from tests.support.toml import write_config

FHIR_BASE = "http://127.0.0.1:9/fhir"  # never contacted: the webhook only parses what it is sent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="serve's CPU per notification in process, vs bare Flask + LPUSH")
    parser.add_argument("--requests", type=int, default=3000, help="per side per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--content", default="full-resource", choices=["full-resource", "id-only"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    os.environ[_procs.SECRET_ENV] = _procs.SECRET
    headers = {**_payloads.FHIR_JSON_HEADERS, _procs.SECRET_HEADER: _procs.SECRET}
    rounds: list[dict[str, float]] = []
    with _procs.private_redis() as redis_url, tempfile.TemporaryDirectory() as tmpdir:
        sections = {"redis": {"url": redis_url}, "fhir": {"base_url": FHIR_BASE}}
        settings = load_settings(write_config(Path(tmpdir) / "smartflow.toml", sections, [_procs.bench_subscription()]))
        conn = redis.Redis.from_url(redis_url)
        service = create_app(settings, conn).test_client()
        bare = baseline_app.create_app(redis_url).test_client()
        path = settings.server.notify_path
        numbers = itertools.count(1)  # one event-number sequence for the whole run

        def bodies(count: int) -> list[bytes]:
            notifications = []
            for n in itertools.islice(numbers, count):
                bundle = _payloads.backport_notification(
                    FHIR_BASE, _procs.SUBSCRIPTION_ID, n, _payloads.patient(f"p{n}"), args.content
                )
                notifications.append(_payloads.encode(bundle))
            return notifications

        def to_service(body: bytes) -> None:
            answer = service.post(path, data=body, headers=headers)
            if answer.status_code != 200:
                raise RuntimeError(f"serve answered {answer.status_code}: {answer.get_data(as_text=True)[:300]}")

        def to_bare(body: bytes) -> None:
            bare.post("/fhir/notify", data=body, headers=headers)

        _procs.process_ms_each(to_service, bodies(200))  # warm up both apps
        _procs.process_ms_each(to_bare, bodies(200))
        for _ in range(args.rounds):
            conn.flushdb()
            baseline_ms = _procs.process_ms_each(to_bare, bodies(args.requests))
            conn.flushdb()
            service_ms = _procs.process_ms_each(to_service, bodies(args.requests))
            rounds.append({"service_ms": service_ms, "baseline_ms": baseline_ms, "ratio": service_ms / baseline_ms})
    service_ms = statistics.median(r["service_ms"] for r in rounds)
    baseline_ms = statistics.median(r["baseline_ms"] for r in rounds)
    ratio = statistics.median(r["ratio"] for r in rounds)
    print(f"machine: {_procs.machine()}; {args.requests} {args.content} notifications per side, {args.rounds} rounds")
    print(
        f"CPU per notification in process: serve {service_ms:.3f} ms, bare Flask + LPUSH {baseline_ms:.3f} ms "
        f"(median of rounds), ratio {ratio:.2f}x (rounds {[round(r['ratio'], 2) for r in rounds]})"
    )
    if args.json:
        print(json.dumps({"rounds": rounds, "service_ms": service_ms, "baseline_ms": baseline_ms, "ratio": ratio}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
