"""Every default in one place (the shape of rq/defaults.py)."""

SERVICE_NAME = "fhir-smartflow"

# Webhook
HOST = "127.0.0.1"
PORT = 8080
NOTIFY_PATH = "/fhir/notify"
MAX_BODY_BYTES = 1024 * 1024
RETRY_AFTER_SECONDS = 5
FHIR_JSON = "application/fhir+json"

# Redis / queue
QUEUE_NAME = "smartflow"
KEY_PREFIX = "smartflow:"
DEDUPE_TTL_SECONDS = 7 * 24 * 3600
GAP_GRACE_SECONDS = 30
JOB_TIMEOUT_SECONDS = 300
JOB_RETRIES = 8
JOB_RETRY_INTERVALS = [5, 15, 60, 300, 900, 1800, 3600, 3600]
FAILED_JOB_TTL_SECONDS = 30 * 24 * 3600
HISTORY_MAX_RUNS = 10_000
HISTORY_TTL_SECONDS = 30 * 24 * 3600

# FHIR client
FHIR_TIMEOUT_SECONDS = 10.0
FHIR_MAX_RETRIES = 5
FHIR_BACKOFF_BASE_SECONDS = 0.5
FHIR_BACKOFF_MAX_SECONDS = 30.0
IDENTIFIER_SYSTEM = "urn:fhir-smartflow:id"
DEVICE_ID = "fhir-smartflow"

# Clinic
TIMEZONE = "America/New_York"

# Data locations (relative to the working directory)
MAPPINGS_PATHS = ["mappings"]
FLOWS_PATHS = ["flows/examples"]
TEMPLATES_PATHS = ["templates"]

# Sandbox FHIR store
SANDBOX_PATH = "/sandbox/fhir"
SANDBOX_DB = ":memory:"
SANDBOX_HEARTBEAT_SECONDS = 60

# Polling bridge (servers without subscriptions)
POLL_INTERVAL_SECONDS = 60.0
POLL_OVERLAP_SECONDS = 120.0
POLL_JITTER_SECONDS = 5.0
POLL_BACKOFF_MAX_SECONDS = 900.0
POLL_DATE_WINDOW_TYPES = ["Appointment"]
POLL_WINDOW_DAYS_BACK = 7
POLL_WINDOW_DAYS_AHEAD = 30
POLL_PAGE_SIZE = 100
POLL_MAX_PAGES = 50

# OpenEMR write-back target
OPENEMR_USER_SCOPES = (
    "openid offline_access api:oemr user/patient.rs user/message.c user/document.c user/document.rs"
)
OPENEMR_REDIRECT_URI = "http://127.0.0.1:8765/callback"
OPENEMR_LOCAL_STORE = "smartflow-local.sqlite3"
OPENEMR_DOCUMENT_CATEGORY = "Smart Flows"
OPENEMR_MESSAGE_TITLE = "Smart Flow"
OPENEMR_CLAIM_TIMEOUT_SECONDS = 120
