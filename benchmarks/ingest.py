"""Ingest throughput and latency: ``serve`` vs. a bare Flask + one Redis LPUSH, same server, same run.

Both apps run under waitress (pure Python, threaded, no fork: the server fhir-smartflow ships with)
with the same thread count, against a private redis-server started for the run. A closed-loop load generator on
loopback posts R4 Backport event-notification Bundles (full-resource and id-only). Rounds alternate
baseline / service so drift on the shared machine hits both; the ratio is the median of the
per-round ratios, the latencies are those of the median round. Each side's server CPU per accepted
request (user + system from ``/proc/<pid>/stat``, warm-up excluded, no profiler) is printed per round,
with the median of the per-round serve / baseline ratios. So are the Redis commands each side sent per
accepted delivery: the ``INFO commandstats`` deltas of the private redis-server over the measured
requests (``MULTI`` and ``EXEC`` count as commands; the benchmark's own ``INFO`` is left out, and it
sends nothing else to Redis while a side is measured).

    .venv/bin/python -m benchmarks.ingest                 # defaults: 3 rounds x 3,000 requests per side
    .venv/bin/python -m benchmarks.ingest --requests 10000 --concurrency 16 --threads 8 --json

Target: service >= 0.8x baseline requests/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import redis

from benchmarks import _loadgen, _payloads, _procs
from tests.support.net import free_port
from tests.support.procs import Process, smartflow_cmd
from tests.support.toml import write_config

FHIR_BASE = "http://127.0.0.1:9/fhir"  # never contacted: the webhook makes no FHIR calls


def build_requests(content: _payloads.Content, count: int, path: str, secret: bool) -> list[_loadgen.Request]:
    headers = dict(_payloads.FHIR_JSON_HEADERS)
    if secret:
        headers[_procs.SECRET_HEADER] = _procs.SECRET
    reqs = []
    for i in range(count):
        pat = _payloads.patient(f"bench-{i}", i)
        bundle = _payloads.backport_notification(FHIR_BASE, _procs.SUBSCRIPTION_ID, i + 1, pat, content)
        reqs.append(_loadgen.Request("POST", path, _payloads.encode(bundle), headers, tag=pat["id"]))
    return reqs


def start_baseline(tmp: Path, redis_url: str, threads: int) -> tuple[Process, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "benchmarks.baseline_app", "--port", str(port), "--redis-url", redis_url]
    proc = Process([*cmd, "--threads", str(threads)], tmp / "baseline.log")
    base = f"http://127.0.0.1:{port}"
    proc.wait_http(base + "/healthz")
    return proc, base


def start_service(tmp: Path, redis_url: str, threads: int, log_level: str) -> tuple[Process, str]:
    config = write_config(
        tmp / "smartflow.toml",
        {
            "redis": {"url": redis_url},
            "fhir": {"base_url": FHIR_BASE},
            "logging": {"level": log_level},
        },
        [_procs.bench_subscription()],
    )
    port = free_port()
    env = {"SMARTFLOW_CONFIG": str(config), _procs.SECRET_ENV: _procs.SECRET}
    proc = Process(smartflow_cmd("serve", "--port", str(port), "--threads", str(threads)), tmp / "serve.log", env)
    base = f"http://127.0.0.1:{port}"
    proc.wait_http(base + "/healthz")
    return proc, base


# What the benchmark itself sends to Redis between two snapshots (the snapshots themselves).
_OWN_COMMANDS = frozenset({"info"})


def command_counts(conn: redis.Redis) -> dict[str, int]:
    """Calls per Redis command so far (``INFO commandstats``), without the benchmark's own."""
    stats = conn.info("commandstats")
    counts = {}
    for key, value in stats.items():
        name = key.removeprefix("cmdstat_")
        if name not in _OWN_COMMANDS:
            counts[name] = int(value["calls"])
    return counts


def commands_per_delivery(before: dict[str, int], after: dict[str, int], accepted: int) -> dict[str, float]:
    """The per-command deltas divided by the accepted deliveries, plus their ``total``."""
    per: dict[str, float] = {}
    for name, calls in sorted(after.items()):
        delta = calls - before.get(name, 0)
        if delta:
            per[name] = round(delta / max(accepted, 1), 3)
    per["total"] = round(sum(per.values()), 3)
    return per


def queued_jobs(redis_url: str) -> int:
    from rq import Queue

    from fhir_smartflow.config import load_settings

    conn = redis.Redis.from_url(redis_url)
    return Queue(load_settings(env={}).redis.queue, connection=conn).count


def run(args: argparse.Namespace) -> dict[str, Any]:
    contents: list[_payloads.Content] = ["full-resource", "id-only"] if args.content == "both" else [args.content]
    report: dict[str, Any] = {"machine": _procs.machine(), "threads": args.threads, "results": {}}
    with _procs.private_redis() as redis_url, tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        conn = redis.Redis.from_url(redis_url)
        baseline, base_url = start_baseline(tmp, redis_url, args.threads)
        service, service_url = start_service(tmp, redis_url, args.threads, args.log_level)
        try:
            pids = {"baseline": baseline.pid, "service": service.pid}
            for content in contents:
                reqs_base = build_requests(content, args.distinct, "/fhir/notify", secret=False)
                reqs_svc = build_requests(content, args.distinct, "/fhir/notify", secret=True)
                rounds: dict[str, list[_loadgen.LoadResult]] = {"baseline": [], "service": []}
                cpu: dict[str, list[float]] = {"baseline": [], "service": []}
                commands: dict[str, list[dict[str, float]]] = {"baseline": [], "service": []}
                for r in range(args.rounds):
                    targets = [("baseline", base_url, reqs_base), ("service", service_url, reqs_svc)]
                    for name, url, reqs in targets:
                        kwargs = dict(concurrency=args.concurrency, timeout=10.0)
                        _loadgen.closed_loop(url, reqs, max_requests=args.warmup, max_seconds=10, **kwargs)
                        conn.flushdb()
                        stats0 = command_counts(conn)
                        cpu0 = _procs.cpu_seconds(pids[name])
                        res = _loadgen.closed_loop(
                            url,
                            reqs,
                            max_requests=args.requests,
                            max_seconds=args.seconds,
                            label=f"{name} {content} r{r + 1}",
                            **kwargs,
                        )
                        cpu_ms = (_procs.cpu_seconds(pids[name]) - cpu0) * 1000 / max(res.ok, 1)
                        cpu[name].append(cpu_ms)
                        per = commands_per_delivery(stats0, command_counts(conn), res.ok)
                        commands[name].append(per)
                        if name == "service":
                            res_jobs = queued_jobs(redis_url)
                            if res_jobs < res.ok:
                                print(f"WARNING: {res.ok} accepted but only {res_jobs} jobs queued", file=sys.stderr)
                        print(
                            f"{res.line()} | server CPU {cpu_ms:.3f} ms per accepted request"
                            f" | Redis commands per delivery {per['total']}"
                        )
                        rounds[name].append(res)
                report["results"][content] = _summarize(rounds)
                report["results"][content]["cpu_ms_per_ok"] = {k: [round(v, 3) for v in cpu[k]] for k in cpu}
                pairs = [s / b for b, s in zip(cpu["baseline"], cpu["service"], strict=False) if b]
                report["results"][content]["cpu_ratio"] = round(statistics.median(pairs), 3) if pairs else None
                # Per round; the counts are deterministic per delivery, so the last round stands for all.
                report["results"][content]["redis_commands_per_delivery"] = {k: v[-1] for k, v in commands.items() if v}
        finally:
            baseline.stop()
            service.stop()
    return report


def _median_round(results: list[_loadgen.LoadResult]) -> _loadgen.LoadResult | None:
    if not results:
        return None
    rps = statistics.median_low([r.rps for r in results])
    return next(r for r in results if r.rps == rps)


def _summarize(rounds: dict[str, list[_loadgen.LoadResult]]) -> dict[str, Any]:
    base, svc = _median_round(rounds["baseline"]), _median_round(rounds["service"])
    out: dict[str, Any] = {"baseline": base.summary() if base else None, "service": svc.summary() if svc else None}
    if base and svc:
        # Rounds alternate baseline / service, so each round's pair saw the same machine load.
        paired = [s.rps / b.rps for b, s in zip(rounds["baseline"], rounds["service"], strict=False) if b.rps]
        out["round_ratios"] = [round(r, 3) for r in paired]
        out["throughput_ratio"] = round(statistics.median(paired), 3) if paired else None
        out["p50_ratio"] = round(svc.percentile(50) / base.percentile(50), 3) if base.percentile(50) else None
        out["p99_ratio"] = round(svc.percentile(99) / base.percentile(99), 3) if base.percentile(99) else None
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Ingest throughput: serve vs. bare Flask + LPUSH")
    parser.add_argument("--requests", type=int, default=3000, help="per side per round (bounded)")
    parser.add_argument("--seconds", type=float, default=20.0, help="time bound per side per round")
    parser.add_argument("--concurrency", type=int, default=8, help="client threads")
    parser.add_argument("--threads", type=int, default=8, help="waitress threads (both apps)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--distinct", type=int, default=500, help="distinct bodies cycled")
    parser.add_argument("--content", choices=["both", "full-resource", "id-only"], default="both")
    parser.add_argument("--log-level", default="WARNING", help="serve's log level (INFO adds a log line/request)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON at the end")
    args = parser.parse_args(argv)
    report = run(args)
    print()
    print(f"machine: {report['machine']}; waitress threads: {args.threads}; client threads: {args.concurrency}")
    for content, res in report["results"].items():
        base, svc = res["baseline"], res["service"]
        line = f"{content:<14} baseline {base['rps']} req/s (p50 {base['p50_ms']} ms, p99 {base['p99_ms']} ms)"
        if svc:
            line += (
                f" | serve {svc['rps']} req/s (p50 {svc['p50_ms']} ms, p99 {svc['p99_ms']} ms)"
                f" | ratio {res['throughput_ratio']}x (median of rounds {res['round_ratios']}; target >= 0.8x)"
            )
            bcpu, scpu = res["cpu_ms_per_ok"]["baseline"], res["cpu_ms_per_ok"]["service"]
            line += (
                f" | server CPU per accepted request: serve {statistics.median(scpu):.3f} ms,"
                f" baseline {statistics.median(bcpu):.3f} ms (median of rounds), ratio {res['cpu_ratio']}x"
            )
            cmds = res["redis_commands_per_delivery"]
            shown = {k: " ".join(f"{c}={n:g}" for c, n in v.items() if c != "total") for k, v in cmds.items()}
            line += (
                f" | Redis commands per delivery: serve {cmds['service']['total']:g} ({shown['service']}),"
                f" baseline {cmds['baseline']['total']:g} ({shown['baseline']})"
            )
        else:
            line += " | serve: skipped"
        print(line)
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
