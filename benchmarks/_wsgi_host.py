"""Host fhir-smartflow's app factory under waitress with an explicit thread count.

Used by the ingest benchmark when ``fhir-smartflow serve`` has no ``--threads`` option, so the
service and the baseline always run on the same server with the same settings.
Settings come from $SMARTFLOW_CONFIG like ``serve``.

    SMARTFLOW_CONFIG=bench.toml python -m benchmarks._wsgi_host --port 8091 --threads 8
"""

from __future__ import annotations

import argparse


def main() -> None:
    import importlib

    import waitress

    from fhir_smartflow import logs
    from fhir_smartflow.config import load_settings

    create_app = importlib.import_module("fhir_smartflow.app").create_app
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    settings = load_settings()
    logs.configure(settings.logging.level, settings.logging.json)
    waitress.serve(create_app(settings), host="127.0.0.1", port=args.port, threads=args.threads)


if __name__ == "__main__":
    main()
