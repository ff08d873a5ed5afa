"""Record-prompt Flags → CDS Hooks cards, for one user (pure: no I/O).

A Flag is ours when it carries our identifier system (``[fhir] identifier_system``) as an identifier or a
``meta.tag``; its audience is the ``allowed-audience`` extension the record-prompt builder writes
(engine/resources.py: one ``valueCodeableConcept`` per role, one ``valueReference`` per practitioner; the
older ``urn:`` URL is read too). A prompt without an audience is shown to every staff user (Practitioner
or PractitionerRole); a patient or related person viewing a record never gets a record prompt.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fhir_smartflow.engine.resources import ALLOWED_AUDIENCE_URLS
from fhir_smartflow.instants import parse_instant

STAFF_TYPES = ("Practitioner", "PractitionerRole")
# The R4 core extension flag-priority (codes of http://hl7.org/fhir/flag-priority-code) → card indicator.
FLAG_PRIORITY_URL = "http://hl7.org/fhir/StructureDefinition/flag-priority"
PRIORITY_INDICATORS = {"PH": "critical", "PM": "warning", "PL": "info", "PN": "info"}
SUMMARY_MAX = 140


@dataclass(frozen=True)
class Audience:
    """Who a prompt is for: role codings ``(system, code)`` and practitioner / role references."""

    roles: frozenset[tuple[str, str]]
    references: frozenset[str]

    @property
    def unrestricted(self) -> bool:
        return not self.roles and not self.references


@dataclass(frozen=True)
class User:
    """The user in context: ``reference`` is ``context.userId``; ``roles`` the codings of the
    PractitionerRoles known to be theirs; ``references`` themselves, their roles and their practitioner;
    ``roles_known``: whether their roles could be looked up (else role-limited prompts stay hidden)."""

    reference: str
    references: frozenset[str]
    roles: frozenset[tuple[str, str]]
    roles_known: bool

    @property
    def staff(self) -> bool:
        return self.reference.split("/", 1)[0] in STAFF_TYPES


@dataclass(frozen=True)
class Prompt:
    flag: str  # Flag/<id>
    text: str
    indicator: str
    flow_id: str | None
    audience: Audience


def is_ours(resource: dict[str, Any], system: str) -> bool:
    idents = resource.get("identifier") or []
    tags = (resource.get("meta") or {}).get("tag") or []
    return any(isinstance(i, dict) and i.get("system") == system for i in [*idents, *tags])


def _codings(concept: Any) -> Iterable[tuple[str, str]]:
    codings = concept.get("coding") if isinstance(concept, dict) else None
    for coding in codings if isinstance(codings, list) else []:
        if isinstance(coding, dict) and coding.get("system") and coding.get("code"):
            yield (str(coding["system"]), str(coding["code"]))


def audience_of(flag: dict[str, Any]) -> Audience:
    roles: set[tuple[str, str]] = set()
    refs: set[str] = set()
    for ext in flag.get("extension") or []:
        if not isinstance(ext, dict) or ext.get("url") not in ALLOWED_AUDIENCE_URLS:
            continue
        roles.update(_codings(ext.get("valueCodeableConcept")))
        ref = (ext.get("valueReference") or {}).get("reference")
        if isinstance(ref, str) and ref:
            refs.add(ref)
    return Audience(frozenset(roles), frozenset(refs))


def _indicator(flag: dict[str, Any], default: str) -> str:
    for ext in flag.get("extension") or []:
        if isinstance(ext, dict) and ext.get("url") == FLAG_PRIORITY_URL:
            for _, code in _codings(ext.get("valueCodeableConcept")):
                if code in PRIORITY_INDICATORS:
                    return PRIORITY_INDICATORS[code]
    return default


def _flow_id(flag: dict[str, Any], system: str) -> str | None:
    """The flow that wrote the Flag: its identifier value is ``<flow>/<action>/<kind>/<digest>``."""
    for ident in flag.get("identifier") or []:
        if not isinstance(ident, dict):
            continue
        value = ident.get("value")
        if ident.get("system") == system and isinstance(value, str) and value.count("/") >= 3:
            return value.rsplit("/", 3)[0]
    return None


def prompts(flags: Iterable[dict[str, Any]], patient_id: str, system: str, now: datetime, default: str) -> list[Prompt]:
    """The active, current record prompts of ours about ``Patient/<patient_id>``, in a stable order."""
    found: dict[str, Prompt] = {}
    for flag in flags:
        if not isinstance(flag, dict) or flag.get("resourceType") != "Flag" or not flag.get("id"):
            continue
        if flag.get("status") != "active" or not is_ours(flag, system):
            continue
        if (flag.get("subject") or {}).get("reference") != f"Patient/{patient_id}":
            continue
        end = parse_instant((flag.get("period") or {}).get("end") or "")
        if end is not None and end < now:
            continue
        text = (flag.get("code") or {}).get("text")
        if not isinstance(text, str) or not text.strip():
            continue
        ref = f"Flag/{flag['id']}"
        found[ref] = Prompt(ref, text.strip(), _indicator(flag, default), _flow_id(flag, system), audience_of(flag))
    return [found[k] for k in sorted(found)]


def user_from(user_ref: str, resources: Sequence[dict[str, Any]], roles_known: bool) -> User:
    """The user with what is known of them: their own resource and PractitionerRoles (only roles whose
    ``practitioner`` is the user, or the user's own PractitionerRole, count)."""
    kind, _, ident = user_ref.partition("/")
    refs = {user_ref}
    own_practitioner = user_ref if kind == "Practitioner" else None
    for res in resources:
        if res.get("resourceType") == "PractitionerRole" and kind == "PractitionerRole" and res.get("id") == ident:
            own_practitioner = (res.get("practitioner") or {}).get("reference") or own_practitioner
    if own_practitioner:
        refs.add(own_practitioner)
    roles: set[tuple[str, str]] = set()
    for res in resources:
        if res.get("resourceType") != "PractitionerRole" or res.get("active") is False:
            continue
        practitioner = (res.get("practitioner") or {}).get("reference")
        mine = (kind == "PractitionerRole" and res.get("id") == ident) or (
            own_practitioner is not None and practitioner == own_practitioner
        )
        if mine:
            refs.add(f"PractitionerRole/{res.get('id')}")
            roles.update(_codings_all(res.get("code")))
    return User(user_ref, frozenset(refs), frozenset(roles), roles_known)


def _codings_all(concepts: Any) -> Iterable[tuple[str, str]]:
    for concept in concepts if isinstance(concepts, list) else []:
        yield from _codings(concept)


def shown_to(prompt: Prompt, user: User) -> bool:
    """Whether ``user`` is in the prompt's audience (unrestricted prompts: every staff user)."""
    if not user.staff:
        return False
    audience = prompt.audience
    if audience.unrestricted:
        return True
    return bool(audience.references & user.references) or bool(audience.roles & user.roles)


def needs_roles(found: Sequence[Prompt], user: User) -> bool:
    """Whether some prompt can only be decided with the user's roles."""
    return user.staff and any(p.audience.roles and not (p.audience.references & user.references) for p in found)


def card(prompt: Prompt, uuid: str, source_label: str, worklist_url: str) -> dict[str, Any]:
    """One CDS Hooks card: summary (< 140 characters; the whole text in detail when longer), indicator,
    source, and a SMART link to the worklist when one is configured."""
    summary = prompt.text if len(prompt.text) < SUMMARY_MAX else prompt.text[: SUMMARY_MAX - 2].rstrip() + "…"
    out: dict[str, Any] = {
        "uuid": uuid,
        "summary": summary,
        "indicator": prompt.indicator,
        "source": {"label": source_label},
    }
    if summary != prompt.text:
        out["detail"] = prompt.text
    if worklist_url:
        context = json.dumps({"flag": prompt.flag}, separators=(",", ":"))
        out["links"] = [{"label": "Open the worklist", "url": worklist_url, "type": "smart", "appContext": context}]
    return out
