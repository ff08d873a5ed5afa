"""``DeliveryClaims``: the send claim of each delivery, in Redis, so a message goes out at most once.

One key per delivery (``Keys.delivery(identifier)``), a JSON object whose ``status`` moves like this::

    absent ──take──▶ sending ──settle──▶ completed | not-done          (final: never sent again)
                        │         └────▶ deferred | retry ──take, once retry_at is due──▶ sending ...
                        │                       └──withdraw──▶ not-done  (its workflow ended)
                        └── the worker died or the deliverer raised: stays "sending" (unknown whether it
                            went out) until `stuck` finds it older than ``[delivery] stuck_after_seconds``
                            and `resolve_unknown` closes it: not-done, reason code ``unknown``

While a claim is ``sending`` its identifier is also in the ``delivery-sending`` sorted set (scored by
when it was taken), so stuck sends are found without scanning every claim.

``take`` is atomic (``SET NX`` from absent, a WATCHed compare-and-swap from a due deferred / retry
claim), so two workers racing for the same delivery send it once. The claim keeps the outcome
(reason, provider id, retry time, whether it failed), so a rerun of the plan after a crash records the
same outcome on the Communication without sending again.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import redis

from fhir_smartflow.connections import Keys
from fhir_smartflow.delivery.outcome import DeliveryOutcome

RECLAIM_EARLY = timedelta(seconds=30)
DEFAULT_RETRY_DELAY = timedelta(minutes=5)  # a deferred / retry outcome that names no time
FINAL = frozenset({"completed", "not-done"})
REARMED = frozenset({"deferred", "retry"})


@dataclass(frozen=True)
class Claim:
    """One delivery's claim as stored (``at`` only while sending, the outcome fields after)."""

    status: str  # sending | completed | not-done | deferred | retry
    reason: str = ""
    provider_id: str | None = None
    retry_at: str | None = None  # ISO instant
    failed: bool = False
    at: str | None = None
    reason_code: str = ""  # the CommunicationNotDoneReason code of a not-done outcome
    # while sending: what a stuck send is resolved on (the Communication's business identifier)
    communication: str = ""
    channel: str = ""

    @property
    def final(self) -> bool:
        return self.status in FINAL

    def reclaimable(self, now: datetime) -> bool:
        """A deferred / retry outcome may be sent again once its time has come (a scheduled job firing a
        little early still counts: the claim swap is atomic, so this cannot send twice)."""
        if self.status not in REARMED:
            return False
        return self.retry_at is None or datetime.fromisoformat(self.retry_at) <= now + RECLAIM_EARLY

    def outcome(self) -> DeliveryOutcome:
        return DeliveryOutcome(
            self.status, self.reason, self.provider_id, failed=self.failed, reason_code=self.reason_code
        )

    @classmethod
    def of(cls, outcome: DeliveryOutcome) -> Claim:
        retry_at = outcome.retry_at.isoformat() if outcome.retry_at else None
        return cls(
            outcome.status,
            outcome.reason,
            outcome.provider_id,
            retry_at,
            outcome.failed,
            reason_code=outcome.reason_code,
        )

    @classmethod
    def load(cls, raw: bytes | None) -> Claim | None:
        if raw is None:
            return None
        try:
            value = json.loads(raw)
        except ValueError:
            return cls("sending")
        if not isinstance(value, dict):
            return cls("sending")
        return cls(
            status=str(value.get("status", "claimed")),
            reason=value.get("reason") or "",
            provider_id=value.get("provider_id"),
            retry_at=value.get("retry_at"),
            failed=bool(value.get("failed", False)),
            at=value.get("at"),
            reason_code=str(value.get("reason_code") or ""),
            communication=str(value.get("communication") or ""),
            channel=str(value.get("channel") or ""),
        )

    def dump(self) -> str:
        if self.status == "sending":
            return json.dumps(
                {"status": "sending", "at": self.at, "communication": self.communication, "channel": self.channel}
            )
        fields = dataclasses.asdict(self)
        for only_while_sending in ("at", "communication", "channel"):
            del fields[only_while_sending]
        return json.dumps(fields)


class DeliveryClaims:
    """The claims of one service (key prefix), each kept ``ttl`` seconds after its last change."""

    def __init__(self, conn: redis.Redis, keys: Keys, ttl: int) -> None:
        self.conn = conn
        self.keys = keys
        self.ttl = ttl

    def get(self, identifier: str) -> Claim | None:
        return Claim.load(self.conn.get(self.keys.delivery(identifier)))

    @property
    def sending_key(self) -> str:
        return f"{self.keys.prefix}delivery-sending"

    def take(
        self, identifier: str, previous: Claim | None, now: datetime, *, communication: str = "", channel: str = ""
    ) -> bool:
        """absent → sending, or a due deferred / retry claim → sending if nobody changed it meanwhile."""
        sending = Claim("sending", at=now.isoformat(), communication=communication, channel=channel)
        # Listed first: a worker killed right after taking the claim still leaves it findable.
        self.conn.zadd(self.sending_key, {identifier: now.timestamp()})
        if previous is None:
            taken = bool(self.conn.set(self.keys.delivery(identifier), sending.dump(), nx=True, ex=self.ttl))
        else:
            taken = self._swap(identifier, previous, sending)
        if not taken:
            self._unlist_unless_sending(identifier)
        return taken

    def settle(self, identifier: str, outcome: DeliveryOutcome, now: datetime) -> DeliveryOutcome:
        """sending → the outcome; a deferred / retry outcome without a time is re-armed for the default
        delay. Returns the outcome as stored."""
        if outcome.status in REARMED and outcome.retry_at is None:
            outcome = dataclasses.replace(outcome, retry_at=now + DEFAULT_RETRY_DELAY)
        with self.conn.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.delivery(identifier), Claim.of(outcome).dump(), ex=self.ttl)
            pipe.zrem(self.sending_key, identifier)
            pipe.execute()
        return outcome

    def stuck(self, taken_before: datetime, limit: int = 100) -> list[tuple[str, Claim]]:
        """Claims still sending that were taken before ``taken_before`` (their worker died mid-send)."""
        found: list[tuple[str, Claim]] = []
        for raw in self.conn.zrangebyscore(self.sending_key, "-inf", taken_before.timestamp(), start=0, num=limit):
            identifier = raw.decode()
            claim = self.get(identifier)
            if claim is None or claim.status != "sending":
                self._unlist_unless_sending(identifier)  # settled meanwhile, or expired
                continue
            found.append((identifier, claim))
        return found

    def stuck_count(self, taken_before: datetime) -> int:
        """How many sends taken before ``taken_before`` are listed as still sending (for doctor)."""
        return int(self.conn.zcount(self.sending_key, "-inf", taken_before.timestamp()))

    def resolve_unknown(self, identifier: str, claim: Claim, reason: str) -> DeliveryOutcome | None:
        """sending → not-done with reason code ``unknown`` (never sent again), unless it changed meanwhile."""
        outcome = DeliveryOutcome("not-done", reason, failed=True, reason_code="unknown")
        if not self._swap(identifier, claim, Claim.of(outcome)):
            return None
        self.conn.zrem(self.sending_key, identifier)
        return outcome

    def _unlist_unless_sending(self, identifier: str) -> None:
        claim = self.get(identifier)
        if claim is None or claim.status != "sending":
            self.conn.zrem(self.sending_key, identifier)

    def restore(self, identifier: str, outcome: DeliveryOutcome) -> None:
        """Put back a final claim found recorded elsewhere (the Communication in the FHIR store) unless a
        claim appeared meanwhile."""
        self.conn.set(self.keys.delivery(identifier), Claim.of(outcome).dump(), nx=True, ex=self.ttl)

    def withdraw(self, identifier: str, reason: str) -> DeliveryOutcome | None:
        """deferred / retry → not-done (its workflow ended, its task was closed) unless a worker took it
        meanwhile; the outcome to record, or None when there was nothing to withdraw."""
        previous = self.get(identifier)
        if previous is None or previous.status not in REARMED:
            return None  # sent, being sent or already closed
        outcome = DeliveryOutcome("not-done", reason)
        return outcome if self._swap(identifier, previous, Claim.of(outcome)) else None

    def _swap(self, identifier: str, previous: Claim, new: Claim) -> bool:
        key = self.keys.delivery(identifier)
        with self.conn.pipeline() as pipe:
            try:
                pipe.watch(key)
                if Claim.load(pipe.get(key)) != previous:
                    return False
                pipe.multi()
                pipe.set(key, new.dump(), ex=self.ttl)
                pipe.execute()
                return True
            except redis.WatchError:
                return False


def rearmed_identifier(identifier: str, at: datetime) -> str:
    """The Schedule identifier of a deferred / retried delivery: one per re-arm time."""
    return f"{identifier}@{at.astimezone(UTC).strftime('%Y%m%dT%H%M%SZ')}"
