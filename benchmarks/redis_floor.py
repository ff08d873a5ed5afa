"""This machine's Redis floor: Redis CPU per round trip and per command, and what a given number of round
trips and commands per event costs at that rate.

Against a private redis-server, through redis-py (the client the service uses), with nothing else on it:

* round trips of one small command (``SET``), from one client and from ``--clients`` threads at once
  (with several clients one wake-up of Redis serves several of them, so a round trip costs less);
* round trips carrying a ``MULTI`` of ``--batch`` ``HINCRBY`` commands and ``EXEC`` (the shape of the
  worker's final transaction), from which the cost of one more command in a round trip follows.

Redis CPU is its own ``INFO cpu`` (user + system) over each run; the floor for an event is
``round trips x cost per round trip + commands x cost per extra command`` with the counts given on the
command line (by default the ones `benchmarks.redis_round_trips --events 400 --senders 8` counted on
main, 2026-12-03: 4.64 round trips and 44.2 commands per event end to end). That is what those commands
cost with nothing to do in them; the service's own figure from `redis_round_trips` is the same
measurement under the real work.

    .venv/bin/python -m benchmarks.redis_floor
    .venv/bin/python -m benchmarks.redis_floor --round-trips 4.64 --commands 44.2 --ops 20000 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
from collections.abc import Callable
from typing import Any

import redis

from benchmarks import _procs


def _redis_cpu(conn: redis.Redis) -> float:
    info = conn.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _us_per_trip(conn: redis.Redis, trip: Callable[[redis.Redis], object], trips: int, clients: int) -> float:
    """Redis CPU (µs) per round trip over ``trips`` round trips shared by ``clients`` threads."""
    per_client = trips // clients
    barrier = threading.Barrier(clients + 1)

    def run() -> None:
        own = redis.Redis(connection_pool=conn.connection_pool)
        trip(own)  # its connection made before the measured part
        barrier.wait()
        for _ in range(per_client):
            trip(own)

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    before = _redis_cpu(conn)
    for thread in threads:
        thread.join()
    return (_redis_cpu(conn) - before) * 1e6 / (per_client * clients)


def _set(conn: redis.Redis) -> object:
    return conn.set("floor:k", "v")


def _transaction(batch: int) -> Callable[[redis.Redis], object]:
    def trip(conn: redis.Redis) -> object:
        pipe = conn.pipeline(transaction=True)
        for i in range(batch):
            pipe.hincrby("floor:h", f"f{i}", 1)
        return pipe.execute()

    return trip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Redis CPU per round trip and per command on this machine")
    parser.add_argument("--ops", type=int, default=20000, help="round trips per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients for the shared figure")
    parser.add_argument("--batch", type=int, default=10, help="commands in the MULTI of the transaction trips")
    parser.add_argument("--round-trips", type=float, default=4.64, help="per event, for the floor")
    parser.add_argument("--commands", type=float, default=44.2, help="per event, for the floor")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not 100 <= args.ops <= 1_000_000 or not 1 <= args.rounds <= 20 or not 1 <= args.clients <= 64:
        parser.error("--ops 100..1000000, --rounds 1..20, --clients 1..64")
    if not 1 <= args.batch <= 1000:
        parser.error("--batch 1..1000")
    runs: dict[str, list[float]] = {"set_1": [], "set_n": [], "multi_1": [], "multi_n": []}
    with _procs.private_redis() as url:
        conn = redis.Redis.from_url(url)
        transaction = _transaction(args.batch)
        for _ in range(args.rounds):
            runs["set_1"].append(_us_per_trip(conn, _set, args.ops, 1))
            runs["set_n"].append(_us_per_trip(conn, _set, args.ops, args.clients))
            runs["multi_1"].append(_us_per_trip(conn, transaction, args.ops, 1))
            runs["multi_n"].append(_us_per_trip(conn, transaction, args.ops, args.clients))
        conn.close()
    median = {name: statistics.median(values) for name, values in runs.items()}
    # A MULTI trip sends batch + 2 commands (MULTI, EXEC) where a SET trip sends 1.
    per_command = {
        "1": (median["multi_1"] - median["set_1"]) / (args.batch + 1),
        "n": (median["multi_n"] - median["set_n"]) / (args.batch + 1),
    }
    floors = {
        clients: args.round_trips * median[f"set_{clients}"] + (args.commands - args.round_trips) * per_command[clients]
        for clients in ("1", "n")
    }
    report: dict[str, Any] = {
        "machine": _procs.machine(),
        "ops": args.ops,
        "rounds": args.rounds,
        "clients": args.clients,
        "batch": args.batch,
        "us_per_round_trip": {"one_client": round(median["set_1"], 2), "shared": round(median["set_n"], 2)},
        "us_per_extra_command": {"one_client": round(per_command["1"], 2), "shared": round(per_command["n"], 2)},
        "per_event": {"round_trips": args.round_trips, "commands": args.commands},
        "floor_ms_per_event": {"one_client": round(floors["1"] / 1000, 3), "shared": round(floors["n"] / 1000, 3)},
        "rounds_us": {name: [round(v, 2) for v in values] for name, values in runs.items()},
    }
    print(f"machine: {report['machine']}; {args.ops} round trips x {args.rounds} rounds per measurement")
    print(
        f"Redis CPU per round trip: {median['set_1']:.1f} µs from one client, {median['set_n']:.1f} µs shared by "
        f"{args.clients} clients; per extra command in a round trip: {per_command['1']:.2f} / {per_command['n']:.2f} µs"
    )
    print(
        f"floor for {args.round_trips} round trips and {args.commands} commands per event: "
        f"{floors['1'] / 1000:.3f} ms (one client at a time) / {floors['n'] / 1000:.3f} ms (shared), "
        f"{1e6 / floors['1']:.0f} / {1e6 / floors['n']:.0f} events/s per Redis core"
    )
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
