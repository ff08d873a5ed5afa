"""The ingest baseline: a bare Flask app on the same WSGI server that reads the body and does one LPUSH.

It does what any webhook must do at minimum (accept the POST, keep the body in Redis, answer), so
``serve``'s throughput divided by this one is the cost of everything fhir-smartflow adds: auth,
parsing, normalization, rq job creation. Run alone:

    python -m benchmarks.baseline_app --port 8090 --redis-url redis://127.0.0.1:6379/15 --threads 8
"""

from __future__ import annotations

import argparse

import redis
from flask import Flask, Response, request

OK_BODY = (
    b'{"resourceType":"OperationOutcome","issue":[{"severity":"information","code":"informational",'
    b'"diagnostics":"queued"}]}'
)


def create_app(redis_url: str, key: str = "baseline:events") -> Flask:
    app = Flask("baseline")
    conn = redis.Redis.from_url(redis_url)

    @app.post("/fhir/notify")
    def notify() -> Response:
        conn.lpush(key, request.get_data())
        return Response(OK_BODY, status=200, content_type="application/fhir+json")

    @app.get("/healthz")
    def healthz() -> Response:
        return Response(b"ok", content_type="text/plain")

    return app


def main() -> None:
    import waitress

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--key", default="baseline:events")
    args = parser.parse_args()
    waitress.serve(create_app(args.redis_url, args.key), host="127.0.0.1", port=args.port, threads=args.threads)


if __name__ == "__main__":
    main()
