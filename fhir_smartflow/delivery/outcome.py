"""The seam between the executor and channel delivery: the ``Deliverer`` it calls and what comes back."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from fhir_smartflow.engine.plan import Deliver


@dataclass(frozen=True)
class DeliveryOutcome:
    """What became of one Deliver action; the executor maps it onto the Communication."""

    status: str  # completed | not-done | deferred | retry
    reason: str = ""  # statusReason text for not-done, why deferred / retried
    provider_id: str | None = None  # the channel provider's message id
    retry_at: datetime | None = None  # for deferred (quiet hours, rate limit) and retry
    # not-done because delivery failed (provider rejection, no usable address, retries exhausted, channel
    # not configured), as opposed to declined (patient opt-out, withdrawn): the owner may need to know.
    failed: bool = False
    # the CommunicationNotDoneReason code (engine/not_done.py) for a not-done outcome; empty = "unknown"
    reason_code: str = ""


class Deliverer(Protocol):
    """Resolves the recipient's address and preferences, applies quiet hours / opt-out / rate limits, sends.
    ``ChannelDeliverer`` (delivery/deliverer.py) is the implementation."""

    def deliver(
        self, action: Deliver, recipient: dict[str, Any] | None, consents: list[dict[str, Any]], now: datetime
    ) -> DeliveryOutcome: ...
