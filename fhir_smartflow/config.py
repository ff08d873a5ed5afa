"""Configuration: a TOML file, overridden by SMARTFLOW_<SECTION>_<KEY> environment variables.

Secrets are never read from the file: keys ending in ``_env`` name the environment variable that
holds the secret. A bad value fails at start with the key and the reason.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fhir_smartflow import defaults, shipped
from fhir_smartflow.refs import RESOURCE_ID_RE, RESOURCE_TYPE_RE

ENV_PREFIX = "SMARTFLOW_"


class ConfigError(ValueError):
    """A configuration problem, naming the key and the reason."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


@dataclass(frozen=True)
class ServerConfig:
    host: str = defaults.HOST
    port: int = defaults.PORT
    notify_path: str = defaults.NOTIFY_PATH
    max_body_bytes: int = defaults.MAX_BODY_BYTES
    max_events_per_notification: int = defaults.MAX_EVENTS_PER_NOTIFICATION
    retry_after_seconds: int = defaults.RETRY_AFTER_SECONDS
    # Deliveries arriving while a commit is in flight share the next one, up to this many events (0 or 1: off).
    group_commit_max_events: int = defaults.GROUP_COMMIT_MAX_EVENTS
    # Admin token for /rq and other admin endpoints; empty disables them.
    admin_token_env: str = "SMARTFLOW_ADMIN_TOKEN"
    rq_dashboard: bool = False


@dataclass(frozen=True)
class RedisConfig:
    # Empty: embedded in-process queue (fakeredis) and worker thread; not for production.
    url: str = ""
    queue: str = defaults.QUEUE_NAME
    key_prefix: str = defaults.KEY_PREFIX
    dedupe_ttl_seconds: int = defaults.DEDUPE_TTL_SECONDS
    gap_grace_seconds: int = defaults.GAP_GRACE_SECONDS
    job_timeout_seconds: int = defaults.JOB_TIMEOUT_SECONDS
    history_max_runs: int = defaults.HISTORY_MAX_RUNS
    history_ttl_seconds: int = defaults.HISTORY_TTL_SECONDS
    # High availability (docs/scaling.md): "host:port" of Redis Sentinels instead of a url; every process
    # asks them for the current primary of ``sentinel_service`` and follows a failover.
    sentinels: list[str] = field(default_factory=list)
    sentinel_service: str = defaults.SENTINEL_SERVICE
    sentinel_db: int = 0
    # Passwords through sentinels (a url carries its own): of the primary / replicas, and of the sentinels.
    password_env: str = "SMARTFLOW_REDIS_PASSWORD"
    sentinel_password_env: str = "SMARTFLOW_REDIS_SENTINEL_PASSWORD"
    # The webhook acknowledges only after this many replicas have the enqueue (WAIT); -1: 1 with sentinels, else 0.
    wait_replicas: int = defaults.WAIT_REPLICAS_AUTO
    wait_timeout_ms: int = defaults.WAIT_TIMEOUT_MS

    @property
    def shared(self) -> bool:
        """A real Redis is configured (by url or through sentinels), not the embedded queue."""
        return bool(self.url or self.sentinels)

    @property
    def replicas_to_wait(self) -> int:
        if self.wait_replicas == defaults.WAIT_REPLICAS_AUTO:
            return 1 if self.sentinels else 0
        return self.wait_replicas


# [fhir] auth modes (fhir/auth.py builds each) and their options (docs/writeback.md "Auth modes").
FHIR_AUTH_MODES = ("none", "bearer", "client-credentials", "smart-backend")
CLIENT_SECRET_AUTH_METHODS = ("client_secret_basic", "client_secret_post")
SCOPE_SYNTAXES = ("auto", "v2", "v1")
# How the server activates Subscriptions (tooling/subscriptions.py ACTIVATIONS); auto: from its software.name.
FHIR_SERVER_KINDS = ("auto", "medplum", "hapi", "generic")


@dataclass(frozen=True)
class FhirConfig:
    # Empty: the built-in sandbox FHIR store (mounted by `serve` at /sandbox/fhir).
    base_url: str = ""
    auth: str = "none"  # one of FHIR_AUTH_MODES
    token_env: str = "SMARTFLOW_FHIR_TOKEN"
    client_id: str = ""
    # client-credentials: the client secret's environment variable, and how it is sent to the token endpoint.
    client_secret_env: str = "SMARTFLOW_FHIR_CLIENT_SECRET"
    client_auth: str = "client_secret_basic"  # one of CLIENT_SECRET_AUTH_METHODS
    private_key_file: str = ""
    key_alg: str = "RS384"
    key_id: str = ""
    token_endpoint: str = ""  # empty: discovered from the server (.well-known/smart-configuration)
    # Empty: exactly what the service uses (fhir/service_scopes.py), in the syntax the server knows.
    scopes: str = ""
    scope_syntax: str = "auto"  # one of SCOPE_SYNTAXES: auto (from the server's smart-configuration) | v2 | v1
    timeout_seconds: float = defaults.FHIR_TIMEOUT_SECONDS
    max_retries: int = defaults.FHIR_MAX_RETRIES
    backoff_base_seconds: float = defaults.FHIR_BACKOFF_BASE_SECONDS
    backoff_max_seconds: float = defaults.FHIR_BACKOFF_MAX_SECONDS
    conditional_create: bool = True
    # A batch job's events whose first writes may share one transaction (worker/write_groups.py); 0/1: off.
    events_per_transaction: int = defaults.FHIR_EVENTS_PER_TRANSACTION
    identifier_system: str = defaults.IDENTIFIER_SYSTEM
    device_id: str = defaults.DEVICE_ID
    writeback: str = "fhir"  # fhir | openemr
    server: str = "auto"  # one of FHIR_SERVER_KINDS (`subscriptions sync`: written active or requested)


@dataclass(frozen=True)
class ClinicConfig:
    name: str = "Example Behavioral Health"
    phone: str = ""
    timezone: str = defaults.TIMEZONE
    holidays_country: str = ""
    holidays_subdivision: str = ""
    portal_url: str = ""
    # The link sent with a form; {task} is the form Task's identifier. Empty: <portal_url>/tasks?identifier={task}.
    form_link: str = ""
    # patient.mrn: the Patient.identifier with this system; empty: the one typed mrn_type (docs/merge-fields.md).
    mrn_system: str = ""
    mrn_type: str = defaults.MRN_TYPE
    # Local HH:MM of a due measured in days from a date without a time (Coverage.period.start).
    date_only_due_time: str = defaults.DATE_ONLY_DUE_TIME


@dataclass(frozen=True)
class EngineConfig:
    mappings: list[str] = field(default_factory=lambda: list(defaults.MAPPINGS_PATHS))
    flows: list[str] = field(default_factory=lambda: list(defaults.FLOWS_PATHS))
    templates: list[str] = field(default_factory=lambda: list(defaults.TEMPLATES_PATHS))
    # flows: run the flows (production). record: only record each event in Redis (<prefix>dispatched),
    # for checking the subscription wiring before any flow runs.
    dispatch: str = "flows"

    def paths(self) -> dict[str, list[str]]:
        """The configured files / directories of each kind, by key (``mappings``, ``flows``, ``templates``)."""
        return {"mappings": self.mappings, "flows": self.flows, "templates": self.templates}


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "INFO"
    json: bool = False


@dataclass(frozen=True)
class SandboxConfig:
    path: str = defaults.SANDBOX_PATH
    database: str = defaults.SANDBOX_DB
    heartbeat_seconds: int = defaults.SANDBOX_HEARTBEAT_SECONDS
    # Enables POST/DELETE /$faults (injected 503/429/stalls) for tests and chaos runs; never in production.
    faults: bool = False
    # Server behaviours to reproduce: lenient | medplum | hapi (docs/sandbox.md, "Profiles").
    profile: str = "lenient"
    # The base URL the sandbox writes into links, when clients reach it under another name.
    public_base_url: str = ""
    # OAuth clients of the sandbox's token endpoint (client_credentials): client id → {secret_env, scopes}.
    # With any, a strict profile wants a bearer token whose scopes cover each interaction.
    clients: dict[str, dict[str, str]] = field(default_factory=dict)
    # SMART App Launch (sandbox/smart_authorize.py): apps launched from the sandbox (client id →
    # {launch_url, redirect_uris, scopes, secret_env}) and the users who sign in (login → {fhir_user, password_env}).
    apps: dict[str, dict[str, str]] = field(default_factory=dict)
    users: dict[str, dict[str, str]] = field(default_factory=dict)
    # The sandbox as a CDS Hooks client (docs/cds-hooks.md): the service base URLs it may call, and the PEM
    # private key it signs its JWTs with (empty: a new key each start; its JWK Set is at /$cds-client/jwks).
    cds_services: list[str] = field(default_factory=list)
    cds_key_file: str = ""


# JWT algorithms a CDS client may sign with: asymmetric only (CDS Hooks forbids `none` and HMAC).
CDS_ALGORITHMS = ("ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
CDS_INDICATORS = ("info", "warning", "critical")


@dataclass(frozen=True)
class CdsConfig:
    """The CDS Hooks service (docs/cds-hooks.md), mounted by `serve` at /cds-services when enabled."""

    enabled: bool = False
    # The base URL CDS clients call: a JWT's aud must be <public_url>/cds-services/<service id>.
    public_url: str = ""
    issuers: list[str] = field(default_factory=list)  # the JWT `iss` values trusted
    jwks_file: str = ""  # a JWK Set of the trusted clients' keys, shared out of band
    # JWK Set URLs of the trusted clients; a JWT's `jku` header is honoured only when it is one of these.
    jwks_urls: list[str] = field(default_factory=list)
    algorithms: list[str] = field(default_factory=lambda: list(CDS_ALGORITHMS))
    max_token_seconds: int = defaults.CDS_MAX_TOKEN_SECONDS  # longest exp - iat accepted
    leeway_seconds: int = defaults.CDS_LEEWAY_SECONDS  # clock skew allowed on exp / iat
    budget_ms: int = defaults.CDS_BUDGET_MS  # answer within this, with what is known by then
    fhir_timeout_seconds: float = defaults.CDS_FHIR_TIMEOUT_SECONDS  # one FHIR request through fhirAuthorization
    # The staff worklist's SMART launch URL: each card links to it (type smart). Empty: no link.
    worklist_url: str = ""
    source_label: str = "fhir-smartflow record prompts"
    indicator: str = "info"  # a card's indicator when its Flag carries no flag-priority
    feedback_max: int = defaults.CDS_FEEDBACK_MAX  # feedback records kept (newest)
    card_ttl_seconds: int = defaults.CDS_CARD_TTL_SECONDS  # how long a card's uuid is known for feedback


@dataclass(frozen=True)
class ConsoleConfig:
    """The web console (docs/console.md), mounted by `serve` beside the webhook."""

    enabled: bool = True
    path: str = "/console"
    # The environment variable holding the key that signs session cookies (the same on every host).
    # Unset outside embedded mode: the console is not mounted (a warning says so).
    secret_key_env: str = "SMARTFLOW_CONSOLE_SECRET"
    # Accounts: empty keeps them in Redis; a path keeps them in that file (mode 0600).
    users_file: str = ""
    # Previous versions of saved flows and templates. Empty: `.console-history` beside the flows directory.
    history_dir: str = ""
    session_hours: int = 8
    # Failed logins allowed per account name + client address within login_window_seconds.
    login_attempts: int = 5
    login_window_seconds: int = 900
    # Seconds between checks for a saved change in every serve / worker process (under 5 s).
    reload_poll_seconds: float = 1.0
    # Reverse proxies in front of the console whose X-Forwarded-For / -Proto / -Host are trusted (0: none):
    # the client address login attempts are counted by, and the scheme of the addresses the console builds.
    proxy_hops: int = 0
    # Login through the EHR's OpenID Connect / SMART authorization server (empty issuer: local accounts only).
    oidc_issuer: str = ""  # discovery at <issuer>/.well-known/openid-configuration
    oidc_client_id: str = ""
    oidc_client_secret_env: str = ""  # empty: a public client (PKCE only)
    oidc_scopes: str = "openid fhirUser"
    oidc_claim: str = "fhirUser"  # the id_token claim naming the user (e.g. Practitioner/123)
    # The address registered with the server. Empty: built from the request (behind a TLS proxy, set it).
    oidc_redirect_uri: str = ""
    # Who may log in this way: claim value -> role (viewer | admin). Nobody else.
    oidc_users: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WorklistConfig:
    """The staff worklist, a SMART on FHIR app (docs/worklist.md), mounted by `serve` beside the webhook."""

    enabled: bool = True
    path: str = "/worklist"
    # The client id the EHR registered the worklist under; empty: not mounted.
    client_id: str = ""
    # A confidential client's secret (the environment variable holding it); empty: a public client (PKCE).
    client_secret_env: str = ""
    # Or a confidential client signing private_key_jwt assertions: the PEM private key, its kid and algorithm.
    private_key_file: str = ""
    key_id: str = ""
    key_alg: str = "RS384"
    # The FHIR base the worklist accepts as `iss` (empty: [fhir] base_url, or the embedded sandbox store).
    fhir_base_url: str = ""
    # Where the EHR reaches the worklist (for redirect_uri); empty: taken from each request.
    public_url: str = ""
    # SMART scope syntax: v2 (user/Task.rus) or v1 (user/Task.read user/Task.write).
    scope_version: str = "v2"
    session_minutes: int = 480


@dataclass(frozen=True)
class PollConfig:
    """The polling bridge: subscriptions for FHIR servers that have none (docs/openemr.md)."""

    enabled: bool = False  # also run the poller inside `worker`
    interval_seconds: float = defaults.POLL_INTERVAL_SECONDS
    # Per resource type interval, e.g. { Appointment = 120 }.
    intervals: dict[str, float] = field(default_factory=dict)
    overlap_seconds: float = defaults.POLL_OVERLAP_SECONDS
    jitter_seconds: float = defaults.POLL_JITTER_SECONDS
    backoff_max_seconds: float = defaults.POLL_BACKOFF_MAX_SECONDS
    # Empty: the resource types the enabled flows need (Engine.resource_types()).
    types: list[str] = field(default_factory=list)
    # Types watched through a rolling date window instead of _lastUpdated (OpenEMR's Appointment).
    date_window_types: list[str] = field(default_factory=lambda: list(defaults.POLL_DATE_WINDOW_TYPES))
    appointment_window_days_back: int = defaults.POLL_WINDOW_DAYS_BACK
    appointment_window_days_ahead: int = defaults.POLL_WINDOW_DAYS_AHEAD
    page_size: int = defaults.POLL_PAGE_SIZE
    max_pages: int = defaults.POLL_MAX_PAGES
    # 0: the first run only records where things stand (nothing is queued); N: re-read the last N hours.
    initial_lookback_hours: float = 0.0
    # Types without a _lastUpdated search are read whole each pass and compared by content hash, up to this
    # many resources (more: the pass fails and says what the server lacks); 0 refuses full scans.
    full_scan_max: int = defaults.POLL_FULL_SCAN_MAX


@dataclass(frozen=True)
class OpenEmrConfig:
    """The `openemr` write-back target and its user-context token (docs/openemr.md); reads use ``[fhir]``."""

    base_url: str = ""  # site root, e.g. https://emr.example.org
    site: str = "default"
    client_id: str = ""  # the client of the user-context token; empty: [fhir] client_id
    private_key_file: str = ""  # empty: [fhir] private_key_file (private_key_jwt client auth)
    key_id: str = ""  # empty: [fhir] key_id
    # How the client authenticates for the user-context token: auto picks private_key_jwt when the server
    # advertises client-confidential-asymmetric and a key is configured, else the client secret.
    client_auth: str = defaults.OPENEMR_CLIENT_AUTH
    client_secret_env: str = "SMARTFLOW_OPENEMR_CLIENT_SECRET"  # the secret the registration answered
    user_scopes: str = defaults.OPENEMR_USER_SCOPES
    redirect_uri: str = defaults.OPENEMR_REDIRECT_URI
    token_key_env: str = "SMARTFLOW_OPENEMR_TOKEN_KEY"  # Fernet key encrypting the stored tokens
    local_store: str = defaults.OPENEMR_LOCAL_STORE  # SQLite file of the canonical resources
    document_category: str = defaults.OPENEMR_DOCUMENT_CATEGORY
    message_title: str = defaults.OPENEMR_MESSAGE_TITLE
    message_group: str = "Default"
    from_user: str = "admin"  # OpenEMR username the messages are from (the one who ran authorize)
    default_user: str = "admin"  # recipient when an owner has no entry in [openemr.users]
    users: dict[str, str] = field(default_factory=dict)  # "Practitioner/<uuid>" | "Group/x" | "role:x" -> username
    portal_messages_to: str = ""  # username receiving portal Communications as patient messages; empty: off
    link_base: str = ""  # base URL of links back to our records in message bodies
    claim_timeout_seconds: int = defaults.OPENEMR_CLAIM_TIMEOUT_SECONDS
    timeout_seconds: float = defaults.FHIR_TIMEOUT_SECONDS

    @property
    def api_base(self) -> str:
        return f"{self.base_url.rstrip('/')}/apis/{self.site}/api"

    @property
    def fhir_base(self) -> str:
        return f"{self.base_url.rstrip('/')}/apis/{self.site}/fhir"

    @property
    def oauth_base(self) -> str:
        return f"{self.base_url.rstrip('/')}/oauth2/{self.site}"


@dataclass(frozen=True)
class SchedulerConfig:
    """The follow-up scheduler loop (``fhir-smartflow scheduler`` or ``worker --with-scheduler``)."""

    interval_seconds: float = defaults.SCHEDULER_INTERVAL_SECONDS
    lock_ttl_seconds: float = defaults.SCHEDULER_LOCK_TTL_SECONDS
    batch_size: int = defaults.SCHEDULER_BATCH_SIZE
    late_warning_seconds: float = defaults.SCHEDULER_LATE_WARNING_SECONDS
    fired_retention_seconds: int = defaults.SCHEDULER_FIRED_RETENTION_SECONDS
    # Tests only: read "now" from Redis (<prefix>clock:now) so processes share a controlled time.
    test_clock: bool = False


@dataclass(frozen=True)
class SmsConfig:
    """SMS and voice calls over a Twilio-compatible REST API (both channels use this account)."""

    base_url: str = defaults.TWILIO_BASE_URL
    account_sid: str = ""
    token_env: str = "SMARTFLOW_SMS_TOKEN"
    from_number: str = ""
    status_callback: str = ""
    voice_language: str = "en-US"
    timeout_seconds: float = defaults.CHANNEL_TIMEOUT_SECONDS


@dataclass(frozen=True)
class EmailConfig:
    host: str = ""
    port: int = defaults.SMTP_PORT
    security: str = "starttls"  # starttls | ssl | none (local test servers only)
    username: str = ""
    password_env: str = "SMARTFLOW_SMTP_PASSWORD"
    from_address: str = ""
    timeout_seconds: float = defaults.CHANNEL_TIMEOUT_SECONDS


@dataclass(frozen=True)
class WebhookChannelConfig:
    url: str = ""
    secret_env: str = "SMARTFLOW_WEBHOOK_CHANNEL_SECRET"
    timeout_seconds: float = defaults.CHANNEL_TIMEOUT_SECONDS


@dataclass(frozen=True)
class DeliveryConfig:
    """Quiet hours, rate limits, retries, opt-out and extra channel plugins."""

    quiet_hours_start: str = defaults.QUIET_HOURS_START  # clinic local time, HH:MM
    quiet_hours_end: str = defaults.QUIET_HOURS_END
    quiet_hours_channels: list[str] = field(default_factory=lambda: list(defaults.QUIET_HOURS_CHANNELS))
    sms_per_minute: int = defaults.RATE_SMS_PER_MINUTE  # 0 = unlimited
    voice_per_minute: int = defaults.RATE_VOICE_PER_MINUTE
    email_per_minute: int = defaults.RATE_EMAIL_PER_MINUTE
    webhook_per_minute: int = defaults.RATE_WEBHOOK_PER_MINUTE
    max_attempts: int = defaults.DELIVERY_MAX_ATTEMPTS
    inline_retries: int = defaults.DELIVERY_INLINE_RETRIES
    inline_max_delay_seconds: float = defaults.DELIVERY_INLINE_MAX_DELAY_SECONDS
    retry_base_seconds: float = defaults.DELIVERY_RETRY_BASE_SECONDS
    retry_max_seconds: float = defaults.DELIVERY_RETRY_MAX_SECONDS
    # A delivery still "sending" after this long is resolved as not-done / unknown (its worker died).
    stuck_after_seconds: float = defaults.DELIVERY_STUCK_AFTER_SECONDS
    optout_extension: str = ""  # URL of a Patient extension that opts out of channels (see docs/channels.md)
    plugins: list[str] = field(default_factory=list)  # "name=package.module:Class" extra channels
    # Any channel's limit, e.g. { fax = 10 }; an entry wins over the built-ins' <channel>_per_minute keys.
    per_minute: dict[str, int] = field(default_factory=dict)

    def rate_per_minute(self, channel: str) -> int:
        """Deliveries per minute over ``channel`` (0 = unlimited)."""
        builtin = {
            "sms": self.sms_per_minute,
            "voice": self.voice_per_minute,
            "email": self.email_per_minute,
            "webhook": self.webhook_per_minute,
        }
        return self.per_minute.get(channel, builtin.get(channel, 0))


@dataclass(frozen=True)
class SubscriptionConfig:
    """One subscription the webhook accepts, and how its deliveries authenticate."""

    id: str
    auth: str = "header"  # header (shared secret) | hmac (HMAC-SHA256 of the raw body, hex)
    header: str = "X-Smartflow-Secret"
    secret_env: str = ""
    # For notifications that carry no focus (classic empty rest-hook): what to re-query.
    criteria: str = ""
    topic: str = ""
    # The resource types this subscription may deliver (others: 403). Empty: the type of `criteria`, else
    # the type of a shipped per-type `topic`; when neither says, `serve` refuses to start (docs/security.md).
    resource_types: list[str] = field(default_factory=list)
    # Accept deliveries that name their resource only in the path or headers (HAPI's DELETE
    # <endpoint>/<Type>/<id>, Medplum's X-Medplum-Deleted-Resource), as claims the worker re-reads.
    allow_path_addressed: bool = False
    # The worker confirms the focus exists on the FHIR server at the notified version before acting.
    verify: bool = True
    # Logical ids of the Subscription resources on the FHIR server that deliver with this secret; when
    # set, a notification naming another is refused (403). Empty: the first one seen is recorded.
    server_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Settings:
    server: ServerConfig = field(default_factory=ServerConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    fhir: FhirConfig = field(default_factory=FhirConfig)
    clinic: ClinicConfig = field(default_factory=ClinicConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    poll: PollConfig = field(default_factory=PollConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    worklist: WorklistConfig = field(default_factory=WorklistConfig)
    openemr: OpenEmrConfig = field(default_factory=OpenEmrConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    sms: SmsConfig = field(default_factory=SmsConfig)
    email: EmailConfig = field(default_factory=EmailConfig)
    webhook_channel: WebhookChannelConfig = field(default_factory=WebhookChannelConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    cds: CdsConfig = field(default_factory=CdsConfig)
    # [channels.<name>] tables: each channel plugin's own settings, parsed by the channel registry
    # (fhir_smartflow/channels.py) into the plugin's options dataclass.
    channels: dict[str, dict[str, Any]] = field(default_factory=dict)
    # role name -> "system|code" of a PractitionerRole.code
    roles: dict[str, str] = field(
        default_factory=lambda: {
            "clinician": "http://terminology.hl7.org/CodeSystem/practitioner-role|doctor",
            "nurse": "http://terminology.hl7.org/CodeSystem/practitioner-role|nurse",
            "case-manager": "http://snomed.info/sct|768832004",
            "billing": "urn:fhir-smartflow:role|billing",
            "front-desk": "urn:fhir-smartflow:role|front-desk",
        }
    )
    subscriptions: list[SubscriptionConfig] = field(default_factory=list)
    source: str = "<defaults>"
    # [roles] fallback: who gets a staff message whose role no active PractitionerRole holds
    # (Practitioner/<id>, PractitionerRole/<id>, Group/<id> or CareTeam/<id>); empty: nobody.
    role_fallback: str = ""

    @property
    def embedded_queue(self) -> bool:
        return not self.redis.shared

    @property
    def sandbox_fhir(self) -> bool:
        return not self.fhir.base_url


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(value: Any, typ: Any, key: str, from_env: bool) -> Any:
    origin = typing.get_origin(typ)
    if typ is Any:  # a plugin's table, checked by the plugin's own dataclass later (channels.py)
        return value
    if typ is bool:
        if isinstance(value, bool):
            return value
        if from_env and isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ConfigError(key, f"expected true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(key, f"expected a whole number, got {value!r}")
        if isinstance(value, int):
            return value
        if from_env and isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(key, f"expected a whole number, got {value!r}")
    if typ is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if from_env and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(key, f"expected a number, got {value!r}")
    if typ is str:
        if isinstance(value, str):
            return value
        raise ConfigError(key, f"expected a string, got {value!r}")
    if origin is list:
        (item_type,) = typing.get_args(typ)
        if from_env and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(key, f"expected a list, got {value!r}")
        return [_coerce(v, item_type, f"{key}[{i}]", from_env) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a table, got {value!r}")
        _, val_type = typing.get_args(typ)
        return {str(k): _coerce(v, val_type, f"{key}.{k}", from_env) for k, v in value.items()}
    if isinstance(origin, type) and origin is types.UnionType:  # pragma: no cover - not used yet
        return value
    raise ConfigError(key, f"unsupported type {typ!r}")


def parse_section(cls: type, raw: Mapping[str, Any], name: str, env: Mapping[str, str]) -> Any:
    """The ``[name]`` table as a ``cls`` dataclass: unknown keys and wrong types are ConfigErrors, and
    ``SMARTFLOW_<NAME>_<KEY>`` overrides a key (dots and dashes of the name as underscores)."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            raise ConfigError(f"[{name}] {key}", "unknown key")
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        env_name = f"{ENV_PREFIX}{name.upper().replace('.', '_').replace('-', '_')}_{f.name.upper()}"
        if env_name in env:
            values[f.name] = _coerce(env[env_name], hints[f.name], env_name, from_env=True)
        elif f.name in raw:
            values[f.name] = _coerce(raw[f.name], hints[f.name], f"[{name}] {f.name}", from_env=False)
    return cls(**values)


def _subscriptions(raw: Any) -> list[SubscriptionConfig]:
    if not isinstance(raw, list):
        raise ConfigError("[[subscriptions]]", "expected an array of tables")
    hints = typing.get_type_hints(SubscriptionConfig)
    known = {f.name for f in dataclasses.fields(SubscriptionConfig)}
    result: list[SubscriptionConfig] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        where = f"[[subscriptions]] #{i + 1}"
        if not isinstance(item, dict):
            raise ConfigError(where, "expected a table")
        for key in item:
            if key not in known:
                raise ConfigError(f"{where} {key}", "unknown key")
        if "id" not in item:
            raise ConfigError(f"{where} id", "required")
        values = {k: _coerce(v, hints[k], f"{where} {k}", from_env=False) for k, v in item.items()}
        sub = SubscriptionConfig(**values)
        if sub.auth not in {"header", "hmac"}:
            raise ConfigError(f"{where} auth", f"must be 'header' or 'hmac', got {sub.auth!r}")
        if not sub.secret_env:
            raise ConfigError(f"{where} secret_env", "required: the environment variable holding the secret")
        for rtype in sub.resource_types:
            if not RESOURCE_TYPE_RE.match(rtype):
                raise ConfigError(f"{where} resource_types", f"{rtype!r} is not a FHIR resource type name")
        for server_id in sub.server_ids:
            if not RESOURCE_ID_RE.match(server_id):
                raise ConfigError(f"{where} server_ids", f"{server_id!r} is not a Subscription's logical id")
        if sub.id in seen:
            raise ConfigError(f"{where} id", f"duplicate subscription id {sub.id!r}")
        seen.add(sub.id)
        result.append(sub)
    return result


def _validate(settings: Settings) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(settings.clinic.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError("[clinic] timezone", f"unknown IANA time zone {settings.clinic.timezone!r}") from None
    _validate_fhir_auth(settings.fhir)
    _validate_redis(settings.redis)
    if settings.fhir.writeback not in {"fhir", "openemr"}:
        raise ConfigError("[fhir] writeback", "must be 'fhir' or 'openemr'")
    if settings.fhir.base_url and not settings.fhir.base_url.startswith(("http://", "https://")):
        raise ConfigError("[fhir] base_url", "must be an http(s) URL")
    if not settings.server.notify_path.startswith("/"):
        raise ConfigError("[server] notify_path", "must start with /")
    if settings.server.max_body_bytes <= 0:
        raise ConfigError("[server] max_body_bytes", "must be positive")
    if settings.server.max_events_per_notification <= 0:
        raise ConfigError("[server] max_events_per_notification", "must be positive")
    if settings.server.group_commit_max_events < 0:
        raise ConfigError("[server] group_commit_max_events", "must be 0 (off) or more")
    if settings.fhir.events_per_transaction < 0:
        raise ConfigError("[fhir] events_per_transaction", "must be 0 (off) or more")
    if settings.engine.dispatch not in {"flows", "record"}:
        raise ConfigError("[engine] dispatch", "must be 'flows' or 'record'")
    if settings.logging.level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError("[logging] level", "must be DEBUG, INFO, WARNING or ERROR")
    _validate_poll_openemr(settings)
    _validate_delivery(settings)
    _validate_cds(settings.cds)
    for role, coding in settings.roles.items():
        if "|" not in coding:
            raise ConfigError(f"[roles] {role}", "must be 'system|code'")
    _validate_role_fallback(settings)


def _validate_redis(config: RedisConfig) -> None:
    if config.url and config.sentinels:
        raise ConfigError("[redis] sentinels", "give either url or sentinels, not both")
    for i, address in enumerate(config.sentinels):
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"[redis] sentinels[{i}]", f"must be 'host:port', got {address!r}")
    if config.sentinels and not config.sentinel_service:
        raise ConfigError("[redis] sentinel_service", "required with sentinels: the name the sentinels monitor")
    if config.sentinel_db < 0:
        raise ConfigError("[redis] sentinel_db", "must not be negative")
    if config.wait_replicas < defaults.WAIT_REPLICAS_AUTO:
        raise ConfigError("[redis] wait_replicas", "must be -1 (1 with sentinels, else 0) or a number of replicas")
    if config.wait_timeout_ms <= 0:
        raise ConfigError("[redis] wait_timeout_ms", "must be positive")
    if config.wait_replicas > 0 and not config.shared:
        raise ConfigError("[redis] wait_replicas", "needs a Redis with replicas ([redis] url or sentinels)")


def _validate_fhir_auth(fhir: FhirConfig) -> None:
    for key, value, allowed in (
        ("auth", fhir.auth, FHIR_AUTH_MODES),
        ("client_auth", fhir.client_auth, CLIENT_SECRET_AUTH_METHODS),
        ("scope_syntax", fhir.scope_syntax, SCOPE_SYNTAXES),
        ("server", fhir.server, FHIR_SERVER_KINDS),
    ):
        if value not in allowed:
            raise ConfigError(f"[fhir] {key}", f"must be one of {', '.join(allowed)}, got {value!r}")


def _validate_cds(cds: CdsConfig) -> None:
    for alg in cds.algorithms:
        if alg not in CDS_ALGORITHMS:
            raise ConfigError("[cds] algorithms", f"{alg!r} is not one of {', '.join(CDS_ALGORITHMS)}")
    if cds.indicator not in CDS_INDICATORS:
        raise ConfigError("[cds] indicator", f"must be one of {', '.join(CDS_INDICATORS)}")
    for key in ("max_token_seconds", "budget_ms", "feedback_max", "card_ttl_seconds"):
        if getattr(cds, key) <= 0:
            raise ConfigError(f"[cds] {key}", "must be positive")
    if cds.fhir_timeout_seconds <= 0 or cds.leeway_seconds < 0:
        raise ConfigError("[cds] fhir_timeout_seconds", "must be positive (and leeway_seconds not negative)")
    for url in (*cds.jwks_urls, *([cds.public_url] if cds.public_url else [])):
        if not url.startswith(("http://", "https://")):
            raise ConfigError("[cds] public_url" if url == cds.public_url else "[cds] jwks_urls", "must be http(s)")
    if not cds.enabled:
        return
    if not cds.public_url:
        raise ConfigError("[cds] public_url", "required when the CDS Hooks service is enabled (the JWT audience)")
    if not cds.issuers:
        raise ConfigError("[cds] issuers", "required when enabled: the JWT issuers (CDS clients) trusted")
    if not cds.jwks_file and not cds.jwks_urls:
        raise ConfigError("[cds] jwks_file", "required when enabled (or jwks_urls): where the clients' keys are")


def _validate_poll_openemr(settings: Settings) -> None:
    poll, emr = settings.poll, settings.openemr
    if poll.interval_seconds <= 0 or any(v <= 0 for v in poll.intervals.values()):
        raise ConfigError("[poll] interval_seconds", "must be positive")
    if poll.overlap_seconds < 0 or poll.jitter_seconds < 0:
        raise ConfigError("[poll] overlap_seconds", "overlap and jitter must not be negative")
    if not 1 <= poll.page_size <= 1000:
        raise ConfigError("[poll] page_size", "must be between 1 and 1000")
    if poll.appointment_window_days_back < 0 or poll.appointment_window_days_ahead < 0:
        raise ConfigError("[poll] appointment_window_days_back", "window days must not be negative")
    if emr.base_url and not emr.base_url.startswith(("http://", "https://")):
        raise ConfigError("[openemr] base_url", "must be an http(s) URL")
    if emr.client_auth not in {"auto", "client_secret_post", "client_secret_basic", "private_key_jwt"}:
        raise ConfigError(
            "[openemr] client_auth", "must be auto, client_secret_post, client_secret_basic or private_key_jwt"
        )
    if poll.full_scan_max < 0:
        raise ConfigError("[poll] full_scan_max", "must be 0 (no full scans) or more")
    if settings.fhir.writeback == "openemr" and not emr.base_url:
        raise ConfigError("[openemr] base_url", "required when [fhir] writeback = 'openemr'")


def _validate_delivery(settings: Settings) -> None:
    import re

    for key in ("quiet_hours_start", "quiet_hours_end"):
        value = getattr(settings.delivery, key)
        if value and not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value):
            raise ConfigError(f"[delivery] {key}", f"must be HH:MM (24-hour clinic time), got {value!r}")
    if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", settings.clinic.date_only_due_time):
        raise ConfigError(
            "[clinic] date_only_due_time",
            f"must be HH:MM (24-hour clinic time), got {settings.clinic.date_only_due_time!r}",
        )
    for plugin in settings.delivery.plugins:
        if not re.fullmatch(r"[a-z0-9_-]+=[\w.]+(:\w+)?", plugin):
            raise ConfigError("[delivery] plugins", f"entries must be 'name=package.module:Class', got {plugin!r}")
    for key in ("sms_per_minute", "voice_per_minute", "email_per_minute", "webhook_per_minute", "max_attempts"):
        if getattr(settings.delivery, key) < 0:
            raise ConfigError(f"[delivery] {key}", "must not be negative")
    for channel, limit in settings.delivery.per_minute.items():
        if limit < 0:
            raise ConfigError(f"[delivery] per_minute.{channel}", "must not be negative")
    if settings.email.security not in {"starttls", "ssl", "none"}:
        raise ConfigError("[email] security", "must be starttls, ssl or none")
    if settings.sms.base_url and not settings.sms.base_url.startswith(("http://", "https://")):
        raise ConfigError("[sms] base_url", "must be an http(s) URL")
    if settings.scheduler.lock_ttl_seconds <= settings.scheduler.interval_seconds * 2:
        raise ConfigError("[scheduler] lock_ttl_seconds", "must be more than twice interval_seconds")


def _validate_role_fallback(settings: Settings) -> None:
    import re

    from fhir_smartflow.refs import ID_PATTERN

    fallback = settings.role_fallback
    if fallback and not re.fullmatch(rf"(Practitioner|PractitionerRole|Group|CareTeam)/{ID_PATTERN}", fallback):
        raise ConfigError(
            f"[roles] {ROLE_FALLBACK_KEY}",
            f"must be Practitioner/<id>, PractitionerRole/<id>, Group/<id> or CareTeam/<id>, got {fallback!r}",
        )


_SECTIONS: dict[str, type] = {
    "server": ServerConfig,
    "redis": RedisConfig,
    "fhir": FhirConfig,
    "clinic": ClinicConfig,
    "engine": EngineConfig,
    "logging": LoggingConfig,
    "sandbox": SandboxConfig,
    "poll": PollConfig,
    "console": ConsoleConfig,
    "worklist": WorklistConfig,
    "openemr": OpenEmrConfig,
    "scheduler": SchedulerConfig,
    "sms": SmsConfig,
    "email": EmailConfig,
    "webhook_channel": WebhookChannelConfig,
    "delivery": DeliveryConfig,
    "cds": CdsConfig,
}


ENGINE_PATH_KEYS = ("mappings", "flows", "templates")
# The one key of [roles] that is not a role: the fallback recipient of messages no role member gets.
ROLE_FALLBACK_KEY = "fallback"


def _engine_paths_relative_to(engine: dict[str, Any], base: Path) -> dict[str, Any]:
    """The ``[engine]`` table with its relative file paths made relative to ``base`` (the config file's
    directory), so the config works from any working directory. ``shipped:`` values and absolute paths
    stay as they are; so do values of the wrong type (parse_section reports them)."""
    resolved = dict(engine)
    for key in ENGINE_PATH_KEYS:
        values = engine.get(key)
        if isinstance(values, list):
            resolved[key] = [_relative_to(v, base) if isinstance(v, str) else v for v in values]
    return resolved


def _relative_to(value: str, base: Path) -> str:
    if shipped.is_shipped(value) or Path(value).is_absolute() or not value:
        return value
    return os.path.normpath(base / value)


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Load settings from ``path`` (or $SMARTFLOW_CONFIG, or nothing) plus environment overrides."""
    env = os.environ if env is None else env
    if path is None:
        path = env.get("SMARTFLOW_CONFIG") or None
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        p = Path(path)
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(str(p), "config file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(p), f"not valid TOML: {exc}") from None
        source = str(p)
    if path is not None and isinstance(raw.get("engine"), dict):
        raw["engine"] = _engine_paths_relative_to(raw["engine"], Path(path).parent)
    allowed = set(_SECTIONS) | {"roles", "subscriptions", "channels"}
    for key in raw:
        if key not in allowed:
            raise ConfigError(f"[{key}]", "unknown section")
    values: dict[str, Any] = {name: parse_section(cls, raw.get(name, {}), name, env) for name, cls in _SECTIONS.items()}
    if "roles" in raw:
        roles = _coerce(raw["roles"], dict[str, str], "[roles]", from_env=False)
        values["role_fallback"] = roles.pop(ROLE_FALLBACK_KEY, "")
        if roles or not values["role_fallback"]:  # a table naming only the fallback keeps the default roles
            values["roles"] = roles
    if "subscriptions" in raw:
        values["subscriptions"] = _subscriptions(raw["subscriptions"])
    if "channels" in raw:
        values["channels"] = _coerce(raw["channels"], dict[str, dict[str, Any]], "[channels]", from_env=False)
    settings = Settings(**values, source=source)
    _validate(settings)
    return settings


def secret(name: str, env: Mapping[str, str] | None = None) -> str | None:
    """The value of a secret named by a ``*_env`` key, or None when unset or empty."""
    env = os.environ if env is None else env
    value = env.get(name, "")
    return value or None


def read_secret_file(path: str, key: str) -> bytes:
    """The bytes of a secret file named by the config key ``key`` (a private key); ConfigError if unreadable."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror}") from None
