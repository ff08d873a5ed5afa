"""What users did with our cards (CDS Hooks feedback): kept in Redis and shown in the run history.

Each card we return gets a random ``uuid``, remembered for ``[cds] card_ttl_seconds`` with the Flag, patient,
flow and user it was shown for (``<prefix>cds:card:<uuid>``). A feedback entry (``accepted`` / ``overridden``)
for a known card becomes one record, pushed on the bounded list ``<prefix>cds:feedback`` (``[cds]
feedback_max`` newest) and added to the run history (worker/history.py) under the patient and the flow, so
``fhir-smartflow history --patient …`` lists it. Records hold references, codes and times only: an override
reason's free-text ``userComment`` is not kept (it may name the patient).
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from typing import Any

import redis

from fhir_smartflow.instants import format_instant, parse_instant
from fhir_smartflow.worker.history import RunHistory

OUTCOMES = ("accepted", "overridden")
MAX_FEEDBACK_PER_CALL = 50
KIND = "cds-feedback"


class BadFeedback(ValueError):
    """The feedback body is not CDS Hooks feedback (answered 400, nothing recorded)."""


def _reason(entry: dict[str, Any]) -> dict[str, str] | None:
    override = entry.get("overrideReason")
    reason = override.get("reason") if isinstance(override, dict) else None
    if not isinstance(reason, dict):
        return None
    kept = {k: str(reason[k])[:200] for k in ("system", "code", "display") if isinstance(reason.get(k), str)}
    return kept or None


def parse_feedback(body: Any) -> list[dict[str, Any]]:
    """The entries of a feedback body, checked: ``card`` (string), ``outcome``, ``outcomeTimestamp``."""
    if not isinstance(body, dict) or not isinstance(body.get("feedback"), list) or not body["feedback"]:
        raise BadFeedback("the body must be an object with a non-empty 'feedback' array")
    entries = body["feedback"]
    if len(entries) > MAX_FEEDBACK_PER_CALL:
        raise BadFeedback(f"at most {MAX_FEEDBACK_PER_CALL} feedback entries per call")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise BadFeedback(f"feedback[{i}] is not an object")
        if not isinstance(entry.get("card"), str) or not entry["card"] or len(entry["card"]) > 100:
            raise BadFeedback(f"feedback[{i}].card must be the card's uuid")
        if entry.get("outcome") not in OUTCOMES:
            raise BadFeedback(f"feedback[{i}].outcome must be one of {', '.join(OUTCOMES)}")
        if parse_instant(str(entry.get("outcomeTimestamp") or "")) is None:
            raise BadFeedback(f"feedback[{i}].outcomeTimestamp must be an ISO timestamp")
        if entry["outcome"] == "accepted" and not isinstance(entry.get("acceptedSuggestions"), list):
            raise BadFeedback(f"feedback[{i}].acceptedSuggestions is required for an accepted outcome")
    return entries


class FeedbackLog:
    def __init__(self, conn: redis.Redis, prefix: str, history: RunHistory, max_records: int, card_ttl: int) -> None:
        self.conn = conn
        self.prefix = prefix
        self.history = history
        self.max_records = max_records
        self.card_ttl = card_ttl

    def _card_key(self, uuid: str) -> str:
        return f"{self.prefix}cds:card:{uuid}"

    @property
    def list_key(self) -> str:
        return f"{self.prefix}cds:feedback"

    def remember_cards(self, cards: dict[str, dict[str, Any]]) -> None:
        """uuid → what the card was about (Flag, patient, flow, user, hookInstance)."""
        if not cards:
            return
        pipe = self.conn.pipeline(transaction=False)
        for uuid, about in cards.items():
            pipe.set(self._card_key(uuid), json.dumps(about, separators=(",", ":")), ex=self.card_ttl)
        pipe.execute()

    def record(self, entries: list[dict[str, Any]], client: str) -> list[str]:
        """Record each entry; returns the history ids. Feedback on a card we do not know (expired, or never
        ours) is recorded in the list only, without a patient."""
        raws = self.conn.mget([self._card_key(e["card"]) for e in entries])
        ids: list[str] = []
        pipe = self.conn.pipeline(transaction=False)
        for entry, raw in zip(entries, raws, strict=True):
            about = json.loads(raw) if raw else {}
            when = parse_instant(str(entry["outcomeTimestamp"]))
            base = {
                "kind": KIND,
                "card": entry["card"],
                "outcome": entry["outcome"],
                "outcome_at": format_instant(when, "auto") if when else None,
                "reason": _reason(entry),
                "accepted_suggestions": len(entry.get("acceptedSuggestions") or []),
                "flag": about.get("flag"),
                "patient": about.get("patient"),
                "flow": about.get("flow"),
                "user": about.get("user"),
                "client": client,
            }
            if about:
                build = functools.partial(_history_record, feedback=base)
                ids.append(self.history.add(build, base["patient"], _flows(base)))
            pipe.lpush(self.list_key, json.dumps(base, separators=(",", ":")))
        pipe.ltrim(self.list_key, 0, self.max_records - 1)
        pipe.execute()
        return ids

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in self.conn.lrange(self.list_key, 0, limit - 1)]


def _flows(record: dict[str, Any]) -> list[str]:
    return [record["flow"]] if record.get("flow") else []


def _history_record(run_id: str, at: datetime, feedback: dict[str, Any]) -> dict[str, Any]:
    """The history record: the shape `history` prints (trigger, flows), and the feedback itself."""
    return {
        "id": run_id,
        "at": format_instant(at, "auto"),
        "kind": KIND,
        "trigger": {
            "name": f"cds.card.{feedback['outcome']}",
            "focus": feedback["flag"],
            "patient": feedback["patient"],
        },
        "flows": [{"id": f, "ran": False, "reason": "feedback"} for f in _flows(feedback)],
        # the keys of a flow run's record, empty, so readers of the history need no special case
        "plan": {},
        "written": [],
        "deliveries": [],
        "scheduled": [],
        "cancelled": [],
        "errors": [],
        "feedback": feedback,
    }
