# fhir-smartflow: webhook (`serve`, the default), worker, scheduler and poller share this image.
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
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin smartflow \
    && chown -R smartflow /app

USER smartflow
EXPOSE 8080

# Listen on all interfaces inside the container; everything else comes from SMARTFLOW_* variables
# (SMARTFLOW_REDIS_URL, SMARTFLOW_FHIR_BASE_URL, subscription secrets, ...) or a mounted config file.
ENV SMARTFLOW_SERVER_HOST=0.0.0.0 \
    SMARTFLOW_SERVER_PORT=8080

HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"

ENTRYPOINT ["fhir-smartflow"]
CMD ["serve"]
