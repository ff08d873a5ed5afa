"""Coded reasons for a Communication that was not done (R4 ``Communication.statusReason``).

The codes are those of the CommunicationNotDoneReason code system published with R4
(http://terminology.hl7.org/CodeSystem/communication-not-done-reason, 6 concepts)."""

from __future__ import annotations

from typing import Any

NOT_DONE_REASON_SYSTEM = "http://terminology.hl7.org/CodeSystem/communication-not-done-reason"

NOT_DONE_REASONS: dict[str, str] = {
    "unknown": "Unknown",
    "system-error": "System Error",
    "invalid-phone-number": "Invalid Phone Number",
    "recipient-unavailable": "Recipient Unavailable",
    "family-objection": "Family Objection",
    "patient-objection": "Patient Objection",
}


def not_done_status_reason(code: str, text: str) -> dict[str, Any]:
    """``statusReason`` with the coded reason and the human text; an unknown code is a programming error."""
    if code not in NOT_DONE_REASONS:
        raise ValueError(f"{code!r} is not a CommunicationNotDoneReason code")
    return {
        "coding": [{"system": NOT_DONE_REASON_SYSTEM, "code": code, "display": NOT_DONE_REASONS[code]}],
        "text": text or NOT_DONE_REASONS[code],
    }
