"""``ChannelDeliverer``: the Deliverer protocol over channel plugins.

For one Deliver action it decides whether, where and when to send: FHIR-only channels succeed at once;
a patient's opt-out (Consent or configured extension) makes it not-done; the address comes from
``telecom``; patient-facing SMS / voice wait out quiet hours; a per-channel rate limit spreads bursts;
transient provider failures are retried with backoff (briefly inline, then as a scheduled retry),
permanent ones become not-done with the provider's error. A not-done outcome is ``failed`` when the
message could not be delivered (no usable address, channel not configured, provider rejection, retries
exhausted) and not when it was declined (opt-out). Logs carry identifiers only (no PHI at INFO).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from typing import Any
from zoneinfo import ZoneInfo

import redis

from fhir_smartflow.channels import (
    FAILED_PERMANENT,
    REFERENCE,
    SENT,
    Channel,
    ChannelSpec,
    DeliveryResult,
    OutboundMessage,
)
from fhir_smartflow.config import Settings
from fhir_smartflow.connections import Keys
from fhir_smartflow.delivery.outcome import DeliveryOutcome
from fhir_smartflow.engine.plan import Deliver
from fhir_smartflow.fhir.scrub import scrub_text
from fhir_smartflow.instants import parse_instant
from fhir_smartflow.metrics import Metrics
from fhir_smartflow.retry import RetryPolicy

log = logging.getLogger(__name__)

# Codes of this system in a deny provision of an active Consent name the channel opted out of.
CHANNEL_CODE_SYSTEM = "urn:fhir-smartflow:channel"
ALL_CHANNELS_CODE = "all"
_ATTEMPTS_TTL_SECONDS = 7 * 24 * 3600


class ChannelDeliverer:
    """Implements ``Deliverer`` (delivery/outcome.py)."""

    def __init__(
        self,
        settings: Settings,
        channels: dict[str, Channel],
        conn: redis.Redis,
        keys: Keys,
        metrics: Metrics | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.cfg = settings.delivery
        self.channels = channels
        self.conn = conn
        self.keys = keys
        self.metrics = metrics
        self.sleep = sleep
        self.tz = ZoneInfo(settings.clinic.timezone)
        self.policy = RetryPolicy(
            max_retries=self.cfg.max_attempts,
            base_seconds=self.cfg.retry_base_seconds,
            max_seconds=self.cfg.retry_max_seconds,
        )
        self.inline_policy = RetryPolicy(
            max_retries=self.cfg.inline_retries, base_seconds=0.25, max_seconds=self.cfg.inline_max_delay_seconds
        )

    def deliver(
        self, action: Deliver, recipient: dict[str, Any] | None, consents: list[dict[str, Any]], now: datetime
    ) -> DeliveryOutcome:
        outcome, status = self._decide(action, recipient, consents, now)
        self._count(action.channel, status)
        log.info(
            "delivery %s via %s to %s: %s%s",
            action.identifier,
            action.channel,
            action.recipient,
            outcome.status,
            f" until {outcome.retry_at.isoformat()}" if outcome.retry_at else "",
        )
        if outcome.reason:
            log.debug("delivery %s reason: %s", action.identifier, outcome.reason)
        return outcome

    # -- decisions --------------------------------------------------------------------------------------

    def _decide(
        self, action: Deliver, recipient: dict[str, Any] | None, consents: list[dict[str, Any]], now: datetime
    ) -> tuple[DeliveryOutcome, str]:
        channel = self.channels.get(action.channel)
        if channel is None:
            unconfigured = f"channel {action.channel!r} is not configured"
            return DeliveryOutcome("not-done", unconfigured, failed=True, reason_code="system-error"), "unconfigured"
        message = self._message(action, "")
        spec = channel.spec
        if spec.fhir_only:  # the Communication is the message: no address, no opt-out
            return self._send(channel, message, action, now)
        is_patient = bool(recipient) and recipient.get("resourceType") == "Patient"
        if is_patient:
            reason = opt_out_reason(recipient, consents, action.channel, now, self.cfg.optout_extension)
            if reason:
                return DeliveryOutcome("not-done", reason, reason_code="patient-objection"), "opted-out"
        address = resolve_address(spec, action.recipient, recipient, now)
        if address is None:
            where = (recipient or {}).get("resourceType", "recipient")
            reason = f"no usable {spec.address} in {where}.telecom"
            code = "invalid-phone-number" if spec.address == "phone" else "recipient-unavailable"
            return DeliveryOutcome("not-done", reason, failed=True, reason_code=code), "no-address"
        if is_patient and action.channel in self.cfg.quiet_hours_channels:
            resume = quiet_hours_resume(now, self.tz, self.cfg.quiet_hours_start, self.cfg.quiet_hours_end)
            if resume is not None:
                window = f"{self.cfg.quiet_hours_start}-{self.cfg.quiet_hours_end} {self.tz.key}"
                return DeliveryOutcome("deferred", f"quiet hours ({window})", retry_at=resume), "quiet-hours"
        retry_at = self._rate_limited(action.channel, now)
        if retry_at is not None:
            return DeliveryOutcome(
                "deferred", f"{action.channel} rate limit reached", retry_at=retry_at
            ), "rate-limited"
        return self._send(channel, self._message(action, address), action, now)

    def _message(self, action: Deliver, address: str) -> OutboundMessage:
        return OutboundMessage(
            channel=action.channel,
            to=address,
            body=action.body,
            subject=action.subject,
            idempotency_key=action.identifier,
            metadata={"communication": action.communication, "recipient": action.recipient, "action": action.action},
        )

    def _send(
        self, channel: Channel, message: OutboundMessage, action: Deliver, now: datetime
    ) -> tuple[DeliveryOutcome, str]:
        attempt = 0
        while True:
            try:
                result = channel.send(message)
            except Exception as exc:  # a plugin bug or an unexpected client error: treat as transient
                log.warning("channel %s raised %s for %s", action.channel, type(exc).__name__, action.identifier)
                result = DeliveryResult.transient(f"channel error: {type(exc).__name__}")
            # A provider's error may quote the number or the message: never keep those (logs, statusReason).
            error = scrub_text(result.error or "", known=(message.to, message.body, message.subject or ""))
            if result.status == SENT:
                self.conn.delete(self._attempts_key(action.identifier))
                return DeliveryOutcome("completed", provider_id=result.provider_id), SENT
            if result.status == FAILED_PERMANENT:
                return DeliveryOutcome(
                    "not-done",
                    f"{action.channel} delivery failed: {error}",
                    failed=True,
                    reason_code="system-error",
                ), FAILED_PERMANENT
            self._count(action.channel, "failed-transient")
            attempt += 1
            hint = str(int(result.retry_after)) if result.retry_after is not None else None
            delay = self.inline_policy.delay(attempt, hint)
            wanted = float(result.retry_after) if result.retry_after is not None else delay
            if attempt <= self.cfg.inline_retries and wanted <= self.cfg.inline_max_delay_seconds:
                self.sleep(delay)
                continue
            rounds = self._next_round(action.identifier)
            if rounds >= self.cfg.max_attempts:
                self.conn.delete(self._attempts_key(action.identifier))
                reason = f"{action.channel} delivery failed after {rounds} attempts: {error}"
                return DeliveryOutcome("not-done", reason, failed=True, reason_code="system-error"), "gave-up"
            retry_at = now + timedelta(seconds=self.policy.delay(rounds, hint))
            return DeliveryOutcome("retry", error, retry_at=retry_at), "retry"

    def _rate_limited(self, channel: str, now: datetime) -> datetime | None:
        """Fixed one-minute windows per channel (shared by all workers through Redis). Over the limit,
        the overflow is spread over the following windows instead of all retrying at once."""
        limit = self.cfg.rate_per_minute(channel)
        if limit <= 0:
            return None
        window = int(now.timestamp()) // 60
        key = f"{self.keys.prefix}ratelimit:{channel}:{window}"
        pipe = self.conn.pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, 120)
        count = int(pipe.execute()[0])
        if count <= limit:
            return None
        windows_ahead = (count - limit - 1) // limit + 1
        return datetime.fromtimestamp((window + windows_ahead) * 60, UTC)

    def _attempts_key(self, identifier: str) -> str:
        return f"{self.keys.prefix}delivery-attempts:{identifier}"

    def _next_round(self, identifier: str) -> int:
        pipe = self.conn.pipeline(transaction=True)
        pipe.incr(self._attempts_key(identifier))
        pipe.expire(self._attempts_key(identifier), _ATTEMPTS_TTL_SECONDS)
        return int(pipe.execute()[0])

    def _count(self, channel: str, status: str) -> None:
        # Written at once, not with the job's batched counters: a worker killed later in the job must
        # not take the count of a message that went out with it (the re-run finds it sent, not counted).
        if self.metrics is not None:
            self.metrics.inc("deliveries", pipe=self.conn, channel=channel, status=status)


# -- pure helpers ------------------------------------------------------------------------------------------


def resolve_address(spec: ChannelSpec, reference: str, resource: dict[str, Any] | None, now: datetime) -> str | None:
    """The address for a channel from ``resource.telecom``: the channel's system (``spec.address``), not
    ``old``, period current, lowest ``rank`` first (unranked last); a number of the channel's preferred
    ``use`` (sms: mobile) wins over others. A channel addressed by reference (webhook) gets the recipient's
    FHIR reference."""
    if spec.address == REFERENCE:
        return reference
    system = spec.address
    if not resource:
        return None
    candidates = []
    for index, telecom in enumerate(resource.get("telecom") or []):
        if telecom.get("system") != system or not telecom.get("value") or telecom.get("use") == "old":
            continue
        if not _period_current(telecom.get("period"), now):
            continue
        not_preferred = 1 if spec.prefer_use and telecom.get("use") != spec.prefer_use else 0
        candidates.append((not_preferred, telecom.get("rank", 1 << 30), index, telecom["value"]))
    return min(candidates)[3] if candidates else None


def opt_out_reason(
    patient: dict[str, Any], consents: list[dict[str, Any]], channel: str, now: datetime, extension_url: str = ""
) -> str | None:
    """Why ``patient`` must not be contacted over ``channel``, or None.

    Opt-out = an active Consent for this patient with a provision (top level or nested) of type ``deny``,
    current by its period, whose ``action``, ``purpose`` or ``code`` carries a coding of system
    ``urn:fhir-smartflow:channel`` with the channel's code (sms | voice | email | webhook) or ``all``.
    Or, when ``[delivery] optout_extension`` is set, a Patient extension with that URL whose valueCode /
    valueString names the channel or ``all`` (valueBoolean true = all channels).
    """
    own_ref = f"Patient/{patient.get('id')}" if patient.get("id") else None
    for consent in consents:
        if consent.get("resourceType") != "Consent" or consent.get("status") != "active":
            continue
        subject = (consent.get("patient") or {}).get("reference")
        if own_ref and subject and subject != own_ref:
            continue
        if _provision_denies(consent.get("provision") or {}, channel, now):
            return f"patient opted out of {channel} (Consent/{consent.get('id', '?')})"
    if extension_url:
        for ext in patient.get("extension") or []:
            if ext.get("url") != extension_url:
                continue
            value = ext.get("valueCode", ext.get("valueString"))
            if ext.get("valueBoolean") is True or value in (channel, ALL_CHANNELS_CODE):
                return f"patient opted out of {channel} (Patient extension {extension_url})"
    return None


def _provision_denies(provision: dict[str, Any], channel: str, now: datetime) -> bool:
    if provision.get("type") == "deny" and _period_current(provision.get("period"), now):
        codings = [c for cc in provision.get("action") or [] for c in cc.get("coding") or []]
        codings += list(provision.get("purpose") or [])
        codings += [c for cc in provision.get("code") or [] for c in cc.get("coding") or []]
        if any(
            c.get("system") == CHANNEL_CODE_SYSTEM and c.get("code") in (channel, ALL_CHANNELS_CODE) for c in codings
        ):
            return True
    return any(_provision_denies(p, channel, now) for p in provision.get("provision") or [])


def _period_current(period: dict[str, Any] | None, now: datetime) -> bool:
    if not period:
        return True
    # A bare end date covers its whole day.
    start = parse_instant(period.get("start"))
    end = parse_instant(period.get("end"), date_only="end-of-day")
    return (start is None or start <= now) and (end is None or now <= end)


def quiet_hours_resume(now: datetime, tz: ZoneInfo, start: str, end: str) -> datetime | None:
    """When ``now`` is inside the clinic's quiet hours, the UTC instant they end; else None."""
    if not start or not end or start == end:
        return None
    begin, finish = dtime.fromisoformat(start), dtime.fromisoformat(end)
    local = now.astimezone(tz)
    t = local.time().replace(tzinfo=None)
    inside = (t >= begin or t < finish) if begin > finish else (begin <= t < finish)
    if not inside:
        return None
    day = local.date() if t < finish else local.date() + timedelta(days=1)
    return datetime.combine(day, finish).replace(tzinfo=tz, fold=0).astimezone(UTC)
