"""`openemr` write-back target: canonical resources in the local store, mirrored natively into OpenEMR.

OpenEMR's FHIR API cannot store Task / Communication / Flag and answers 405 to DocumentReference writes,
so the canonical resources live in the local store (the sandbox store, SQLite file) and a native copy
goes to OpenEMR through the Standard API:

* Task owned by staff (staff-task, staff-message) → a patient message (pnote) to the owner's OpenEMR user.
* Communication to staff that is not ``basedOn`` a Task (the Task's message already says it) → a message.
* Communication to the patient through the portal → a patient message to ``[openemr] portal_messages_to``
  (the Standard API cannot write into the portal mailbox; see docs/openemr.md).
* DocumentReference (patient note) → a text/plain document in ``[openemr] document_category``.
* Flag (record prompt) → one patient message per allowed user (OpenEMR has no API for chart alerts).

Each mirror write happens at most once: ``<prefix>openemr:mirror:<identifier>`` is claimed (``pending``)
before the POST and set to ``done:<openemr id>`` after; a failure that proves nothing was stored releases
the claim so a retry sends it; an answer lost in flight leaves the claim, and after
``claim_timeout_seconds`` a document is looked up by its content (OpenEMR keeps the bytes; the name it lists is
the stored file's uuid, not the uploaded name; a text note ends with its ``Ref:`` line, so its bytes are its
own), while a message (which the Standard API cannot list) is marked ``unknown`` with an ERROR rather than risk
a second copy.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import redis

from fhir_smartflow.config import OpenEmrConfig
from fhir_smartflow.engine.resources import ALLOWED_AUDIENCE_URLS
from fhir_smartflow.fhir.target import WriteBackTarget
from fhir_smartflow.metrics import Metrics
from fhir_smartflow.openemr.api import StandardApi
from fhir_smartflow.openemr.errors import OpenEmrAmbiguousWrite, OpenEmrError, OpenEmrTransientError
from fhir_smartflow.refs import parse_reference

log = logging.getLogger(__name__)
FIND_RECENT = 20  # documents of the category compared when looking for a lost upload


def _ref(value: Any) -> str:
    return str((value or {}).get("reference") or "") if isinstance(value, dict) else ""


def _patient_uuid(resource: dict[str, Any]) -> str | None:
    for key in ("for", "subject"):
        ref = parse_reference(_ref(resource.get(key)))
        if ref is not None and ref.resource_type == "Patient":
            return ref.id
    return None


def _safe_name(identifier: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", identifier)[:180]


def _texts(items: Any, key: str = "text") -> list[str]:
    return [str(i[key]) for i in (items or []) if isinstance(i, dict) and i.get(key)]


class OpenEmrWriteBack(WriteBackTarget):
    """WriteBackTarget: local store first (canonical), then the idempotent OpenEMR mirror."""

    def __init__(
        self,
        local: WriteBackTarget,
        api: StandardApi,
        config: OpenEmrConfig,
        conn: redis.Redis,
        prefix: str,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.local = local
        self.identifier_system = local.identifier_system
        self.api = api
        self.config = config
        self.conn = conn
        self.prefix = prefix
        self.metrics = metrics
        self.clock = clock

    # -- WriteBackTarget ---------------------------------------------------------------------------
    def create(self, resource: dict[str, Any], identifier: str) -> dict[str, Any]:
        return self.create_with_status(resource, identifier)[0]

    def create_with_status(self, resource: dict[str, Any], identifier: str) -> tuple[dict[str, Any], bool | None]:
        """(stored, created?) from the local store; the mirror runs either way."""
        stored, created = self.local.create_with_status(resource, identifier)
        self.mirror(stored, identifier)
        return stored, created

    def read(self, reference: str) -> dict[str, Any] | None:
        return self.local.read(reference)

    def update(self, resource: dict[str, Any]) -> dict[str, Any]:
        # Status changes stay in the local store; the OpenEMR message is not rewritten (docs: known limits).
        return self.local.update(resource)

    def search(self, resource_type: str, params: dict[str, str]) -> list[dict[str, Any]]:
        return self.local.search(resource_type, params)

    def find_by_identifier(self, resource_type: str, identifier: str) -> dict[str, Any] | None:
        return self.local.find_by_identifier(resource_type, identifier)

    # -- mirror ------------------------------------------------------------------------------------
    def mirror_kind(self, resource: dict[str, Any]) -> str | None:
        rtype = resource.get("resourceType")
        if rtype == "DocumentReference":
            return "document"
        if rtype == "Flag":
            return "flag"
        if rtype == "Task":
            owner = _ref(resource.get("owner"))
            if owner:
                return None if owner.startswith("Patient/") else "message"
            return "message" if resource.get("performerType") else None  # owned by a role
        if rtype == "Communication":
            recipients = [_ref(r) for r in resource.get("recipient") or []]
            if any(r.startswith("Patient/") for r in recipients):
                channel = json.dumps([resource.get("medium"), resource.get("category")]).lower()
                return "portal" if "portal" in channel and self.config.portal_messages_to else None
            # A Communication about a Task (basedOn, by reference or by identifier): the Task's message says it.
            based_on_task = any(
                b.get("type") == "Task" or _ref(b).startswith("Task/") for b in resource.get("basedOn") or []
            )
            return "message" if recipients and not based_on_task else None
        return None

    def mirror(self, resource: dict[str, Any], identifier: str) -> None:
        kind = self.mirror_kind(resource)
        if kind is None:
            return
        puuid = _patient_uuid(resource)
        if puuid is None:
            log.warning("not mirrored to OpenEMR: %s %s has no patient", resource.get("resourceType"), identifier)
            return
        if kind == "document":
            self._once(
                identifier,
                "document",
                lambda: self._send_document(puuid, resource, identifier),
                verify=lambda: self._find_document(puuid, resource, identifier),
            )
            return
        for username in self._recipients(kind, resource):
            key = identifier if kind != "flag" else f"{identifier}#{username}"
            self._once(key, kind, lambda u=username: self._send_message(puuid, u, resource, identifier))

    def _recipients(self, kind: str, resource: dict[str, Any]) -> list[str]:
        """OpenEMR usernames from [openemr.users]: "Practitioner/<id>" (any reference) or "role:<name>"."""
        users = self.config.users
        if kind == "portal":
            return [self.config.portal_messages_to]
        keys: list[str] = []
        if kind == "flag":  # the prompt's allowed audience: practitioners and roles
            for ext in resource.get("extension") or []:
                if ext.get("url") in ALLOWED_AUDIENCE_URLS:
                    keys.append(_ref(ext.get("valueReference")))
                    keys.append(f"role:{(ext.get('valueCodeableConcept') or {}).get('text', '')}")
        elif resource.get("resourceType") == "Task":
            keys.append(_ref(resource.get("owner")))
            keys += [f"role:{c.get('text', '')}" for c in resource.get("performerType") or []]
        else:
            keys += [_ref(r) for r in resource.get("recipient") or []]
        names: list[str] = []
        for key in keys:
            for name in users.get(key, "").split(","):
                if name.strip() and name.strip() not in names:
                    names.append(name.strip())
        if kind != "flag":
            return names[:1] or [self.config.default_user]
        fallback = users.get("record-prompt") or self.config.default_user
        return names or [n.strip() for n in fallback.split(",") if n.strip()]

    def _message_text(self, resource: dict[str, Any], identifier: str) -> str:
        rtype = resource["resourceType"]
        lines: list[str] = []
        if rtype == "Task":
            code = resource.get("code") or {}
            lines.append(str(resource.get("description") or code.get("text") or "Task"))
            due = ((resource.get("restriction") or {}).get("period") or {}).get("end")
            if due:
                lines.append(f"Due: {due}")
            lines += _texts(resource.get("note"))
        elif rtype == "Flag":
            lines.append("Record prompt: " + str((resource.get("code") or {}).get("text") or "see the chart"))
            lines.append("(Shown as a message: OpenEMR has no API for chart alerts.)")
        else:
            lines += [p["contentString"] for p in resource.get("payload") or [] if p.get("contentString")]
        if self.config.link_base and resource.get("id"):
            lines.append(f"Open: {self.config.link_base.rstrip('/')}/{rtype}/{resource['id']}")
        lines.append(f"Ref: {identifier}")
        return "\n".join(lines)

    def _send_message(self, puuid: str, username: str, resource: dict[str, Any], identifier: str) -> str:
        pid = self.api.patient_pid(puuid)
        message = {
            "title": self.config.message_title,
            "body": self._message_text(resource, identifier),
            "groupname": self.config.message_group,
            "from": self.config.from_user,
            "to": username,
            "message_status": "New",
        }
        return "message:" + self.api.post_message(pid, message)

    def _document_file(self, resource: dict[str, Any], identifier: str) -> tuple[str, bytes, str]:
        attachment = next((c.get("attachment") or {} for c in resource.get("content") or [] if c.get("attachment")), {})
        mimetype = str(attachment.get("contentType") or "text/plain").split(";")[0]
        if attachment.get("data"):
            content = base64.b64decode(attachment["data"])
        else:
            content = str(resource.get("description") or "").encode()
            mimetype = "text/plain"
        if mimetype == "text/plain":  # the reference makes the bytes unique, so a lost upload is found by them
            content = content.rstrip(b"\n") + f"\n\nRef: {identifier}\n".encode()
        suffix = ".pdf" if mimetype == "application/pdf" else ".txt"
        return _safe_name(identifier) + suffix, content, mimetype

    def _send_document(self, puuid: str, resource: dict[str, Any], identifier: str) -> str:
        pid = self.api.patient_pid(puuid)
        filename, content, mimetype = self._document_file(resource, identifier)
        self.api.upload_document(pid, self.config.document_category, filename, content, mimetype)
        digest = hashlib.sha256(content).hexdigest()
        # OpenEMR answers `true`, no id. Remember where the last upload went, so `doctor` can see it filed.
        self.conn.set(f"{self.prefix}openemr:last_document", f"{pid}:{digest}")
        return f"document:sha256:{digest[:16]}"

    def _find_document(self, puuid: str, resource: dict[str, Any], identifier: str) -> str | None:
        """The document of an earlier attempt whose answer was lost: same bytes, same patient, same category
        (the newest few only: a lost answer is recent)."""
        pid = self.api.patient_pid(puuid)
        _, content, mimetype = self._document_file(resource, identifier)
        listed = self.api.list_documents(pid, self.config.document_category)
        recent = sorted(listed, key=lambda d: int(str(d.get("id") or 0)), reverse=True)[:FIND_RECENT]
        for doc in recent:
            if str(doc.get("mimetype") or mimetype).split(";")[0] != mimetype:
                continue
            if self.api.download_document(pid, str(doc["id"])) == content:
                return f"document:{doc['id']}"
        return None

    def _key(self, identifier: str) -> str:
        return f"{self.prefix}openemr:mirror:{identifier}"

    def _count(self, kind: str, result: str) -> None:
        if self.metrics:
            self.metrics.inc("openemr_mirrors", kind=kind, result=result)

    def _once(
        self, identifier: str, kind: str, send: Callable[[], str], verify: Callable[[], str | None] | None = None
    ) -> None:
        key = self._key(identifier)
        claim = f"pending:{self.clock():.3f}"
        if not self.conn.set(key, claim, nx=True):
            existing = (self.conn.get(key) or b"").decode()
            if existing.startswith(("done:", "unknown:")):
                self._count(kind, "existing")
                return
            age = self.clock() - float(existing.split(":", 1)[1] or 0) if existing.startswith("pending:") else 1e9
            if age < self.config.claim_timeout_seconds:
                raise OpenEmrTransientError(f"OpenEMR mirror of {identifier} is in progress elsewhere")
            # A stale claim: an earlier attempt died or lost OpenEMR's answer after sending.
            found = verify() if verify else None
            if found:
                self.conn.set(key, f"done:{found}")
                self._count(kind, "existing")
                return
            if verify is None:
                self.conn.set(key, f"unknown:{self.clock():.0f}")
                self._count(kind, "unknown")
                log.error(
                    "OpenEMR %s for %s may or may not have been created (an earlier attempt got no answer); "
                    "not sending again to avoid a duplicate — check the patient's messages",
                    kind,
                    identifier,
                )
                return
            if self.conn.set(key, claim, xx=True, get=True) != existing.encode():
                raise OpenEmrTransientError(f"OpenEMR mirror of {identifier} was taken over by another worker")
        try:
            result = send()
        except OpenEmrAmbiguousWrite:
            self._count(kind, "ambiguous")
            raise  # keep the claim: the stale-claim rule above decides later
        except OpenEmrError:
            self.conn.delete(key)  # OpenEMR answered: nothing was stored, a retry may send it
            self._count(kind, "failed")
            raise
        self.conn.set(key, f"done:{result}")
        self._count(kind, "created")
        log.info("mirrored %s to OpenEMR as %s", identifier, result)
