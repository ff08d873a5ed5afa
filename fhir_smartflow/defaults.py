"""Every default in one place (the shape of rq/defaults.py)."""

SERVICE_NAME = "fhir-smartflow"
CONFIG_FILE = "smartflow.toml"  # read from the working directory when neither --config nor $SMARTFLOW_CONFIG

# Webhook
HOST = "127.0.0.1"
PORT = 8080
NOTIFY_PATH = "/fhir/notify"
MAX_BODY_BYTES = 1024 * 1024
# Events one notification may carry (413 beyond): real servers batch a few; a 1 MB body can name 50,000.
MAX_EVENTS_PER_NOTIFICATION = 1000
# Concurrent deliveries committed together, up to this many events in one process_events job, and at most
# this many in a backlog batch (0/1: both off).
GROUP_COMMIT_MAX_EVENTS = 50
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
# Redis through Sentinel (docs/scaling.md)
SENTINEL_SERVICE = "mymaster"
# [redis] wait_replicas: AUTO is 1 with sentinels (an ack survives a failover), 0 without.
WAIT_REPLICAS_AUTO = -1
WAIT_TIMEOUT_MS = 1000

# FHIR client
FHIR_TIMEOUT_SECONDS = 10.0
FHIR_MAX_RETRIES = 5
FHIR_BACKOFF_BASE_SECONDS = 0.5
FHIR_BACKOFF_MAX_SECONDS = 30.0
# Events of one batch job whose first writes share a transaction: 25 events are 50 resources and 50
# Provenances in two Bundles, far below what HAPI FHIR and Medplum accept in one.
FHIR_EVENTS_PER_TRANSACTION = 25
IDENTIFIER_SYSTEM = "urn:fhir-smartflow:id"
DEVICE_ID = "fhir-smartflow"

# Clinic
TIMEZONE = "America/New_York"
# The Patient.identifier that is the MRN, by its type (v2-0203 "MR"; "system|code" or a bare code).
MRN_TYPE = "MR"
# A due measured from a date without a time (Coverage.period.start) falls at this clinic time: end of business.
DATE_ONLY_DUE_TIME = "17:00"

# Data locations: "shipped:<path>" is data inside the installed package (fhir_smartflow/shipped.py); other
# relative paths in a config file are relative to that file's directory.
MAPPINGS_PATHS = ["shipped:mappings"]
FLOWS_PATHS = ["shipped:flows/examples"]
TEMPLATES_PATHS = ["shipped:templates"]

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
OPENEMR_USER_SCOPES = "auto"  # auto: what openemr/scopes.py derives from the server's smart-configuration
OPENEMR_CLIENT_AUTH = "auto"  # auto | client_secret_post | client_secret_basic | private_key_jwt
OPENEMR_REDIRECT_URI = "http://127.0.0.1:8765/callback"
OPENEMR_LOCAL_STORE = "smartflow-local.sqlite3"
OPENEMR_DOCUMENT_CATEGORY = "Smart Flows"
OPENEMR_MESSAGE_TITLE = "Smart Flow"
OPENEMR_CLAIM_TIMEOUT_SECONDS = 120
POLL_FULL_SCAN_MAX = 2000  # resources one full scan may read before it refuses (servers without _lastUpdated)
# Scheduler (follow-ups: reminders, overdue checks, recurrences, deferred deliveries)
SCHEDULER_INTERVAL_SECONDS = 1.0
SCHEDULER_LOCK_TTL_SECONDS = 30.0
SCHEDULER_BATCH_SIZE = 500
SCHEDULER_LATE_WARNING_SECONDS = 60.0
SCHEDULER_FIRED_RETENTION_SECONDS = 30 * 24 * 3600

# Delivery channels
TWILIO_BASE_URL = "https://api.twilio.com"
CHANNEL_TIMEOUT_SECONDS = 10.0
SMTP_PORT = 587
QUIET_HOURS_START = "21:00"
QUIET_HOURS_END = "08:00"
QUIET_HOURS_CHANNELS = ["sms", "voice"]
RATE_SMS_PER_MINUTE = 60
RATE_VOICE_PER_MINUTE = 10
RATE_EMAIL_PER_MINUTE = 120
RATE_WEBHOOK_PER_MINUTE = 600
DELIVERY_MAX_ATTEMPTS = 5
DELIVERY_INLINE_RETRIES = 2
DELIVERY_INLINE_MAX_DELAY_SECONDS = 2.0
DELIVERY_RETRY_BASE_SECONDS = 30.0
DELIVERY_RETRY_MAX_SECONDS = 3600.0
# A send claim still "sending" this long after it was taken: its worker died mid-send (resolved as unknown).
DELIVERY_STUCK_AFTER_SECONDS = 1800.0

# CDS Hooks service ([cds], docs/cds-hooks.md): CDS clients expect an answer within about 500 ms.
CDS_BUDGET_MS = 500
CDS_FHIR_TIMEOUT_SECONDS = 0.3
CDS_MAX_TOKEN_SECONDS = 300
CDS_LEEWAY_SECONDS = 30
CDS_FEEDBACK_MAX = 1000
CDS_CARD_TTL_SECONDS = 24 * 3600
