# fhir-smartflow: one image for every role — `serve` (the default), `worker`, `scheduler`, `poll`.
# Configuration comes from SMARTFLOW_* variables (secrets from an env file) and a mounted site directory
# made by `fhir-smartflow init` (SMARTFLOW_CONFIG=/srv/smartflow/smartflow.toml); see deploy/compose.yaml.
# `serve` refuses to start without [redis] url, [fhir] base_url and [[subscriptions]]: the image never
# serves unauthenticated by default. `serve --embedded` (a try-out) listens on 127.0.0.1 unless --host is given.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Install dependencies first so code changes do not invalidate this layer.
COPY pyproject.toml README.md LICENSE ./
COPY fhir_smartflow/__init__.py fhir_smartflow/__init__.py
COPY plugins/smartflow_channels/__init__.py plugins/smartflow_channels/__init__.py
RUN pip install . && pip uninstall -y fhir-smartflow

# The shipped flows, mappings, templates and example config are package data (fhir_smartflow/data).
COPY fhir_smartflow fhir_smartflow
COPY plugins plugins
RUN pip install --no-deps . \
    && useradd --system --uid 10001 --home-dir /srv/smartflow --create-home --shell /usr/sbin/nologin smartflow

USER smartflow
WORKDIR /srv/smartflow
EXPOSE 8080

# Inside a container the webhook listens on all interfaces (it only starts with authentication configured);
# the health check reads the same port from the environment.
ENV SMARTFLOW_SERVER_HOST=0.0.0.0 \
    SMARTFLOW_SERVER_PORT=8080

# Whatever role the container runs: serve by its /healthz, worker / scheduler / poller by their liveness
# records in Redis (`fhir-smartflow health --help`). Exit 0 healthy, 1 unhealthy.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 CMD ["fhir-smartflow", "health"]

ENTRYPOINT ["fhir-smartflow"]
CMD ["serve"]
