"""``FhirWriteBack``: the WriteBackTarget that writes to the FHIR server, idempotently by business identifier.

Two ways to create exactly once (docs/writeback.md):
- conditional create (``If-None-Exist: identifier=system|value``): the server does the check-and-create;
- servers without it: search by identifier, and create only if nothing matched, inside a per-identifier
  Redis lock so two workers cannot both see "nothing" and both create.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import redis

from fhir_smartflow.config import Settings
from fhir_smartflow.connections import Keys
from fhir_smartflow.fhir.client import FhirClient
from fhir_smartflow.fhir.errors import FhirError, FhirUnavailable
from fhir_smartflow.fhir.target import BatchItem, WriteBackTarget

log = logging.getLogger(__name__)

# Resource types without an ``identifier`` element: their business identifier is a meta.tag.
TAG_IDENTIFIED = frozenset({"Provenance"})

# Compare-and-delete: release the lock only if it still holds our token (it may have expired and been
# taken by another worker meanwhile).
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""


def fhir_escape(value: str) -> str:
    """FHIR search-value escaping of ``\\ , $ |``."""
    for ch in ("\\", ",", "$", "|"):
        value = value.replace(ch, "\\" + ch)
    return value


def token_param(system: str, value: str) -> str:
    """``system|value`` URL-encoded for a query string such as If-None-Exist (``|`` stays literal)."""
    return f"{quote(fhir_escape(system), safe=':/')}|{quote(fhir_escape(value), safe=':/')}"


def identifier_search(resource_type: str, system: str, value: str) -> tuple[str, str]:
    """The search parameter (``identifier``, or ``_tag`` for Provenance) and its raw token value."""
    return _identifier_param(resource_type), f"{fhir_escape(system)}|{fhir_escape(value)}"


def if_none_exist(resource_type: str, system: str, value: str) -> str:
    """The conditional-create query (``If-None-Exist`` / ``ifNoneExist``) for a business identifier."""
    return f"{_identifier_param(resource_type)}={token_param(system, value)}"


def _identifier_param(resource_type: str) -> str:
    # R4 Provenance has no identifier element: its business id is a meta.tag.
    return "_tag" if resource_type in TAG_IDENTIFIED else "identifier"


def _log_write(resource_type: str, stored: dict[str, Any], created: bool, identifier: str) -> None:
    log.info(
        "fhir: %s %s/%s (identifier %s)",
        "created" if created else "found existing",
        resource_type,
        stored.get("id"),
        identifier,
    )


class FhirWriteBack(WriteBackTarget):
    """WriteBackTarget on a FHIR server: conditional creates, transactions when the server has them."""

    def __init__(
        self,
        client: FhirClient,
        identifier_system: str,
        conn: redis.Redis,
        keys: Keys,
        conditional_create: bool = True,
        *,
        lock_ttl_ms: int = 120_000,
        lock_wait_seconds: float = 15.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.identifier_system = identifier_system
        self.conn = conn
        self.keys = keys
        self.conditional_create = conditional_create
        self.lock_ttl_ms = lock_ttl_ms
        self.lock_wait_seconds = lock_wait_seconds
        self.sleep = sleep
        self._release = conn.register_script(_RELEASE)
        self._transactions: bool | None = None  # from the CapabilityStatement, asked once

    def supports_transactions(self) -> bool:
        """True when a plan's writes can go in one transaction Bundle: conditional create is on and the
        server's CapabilityStatement lists the ``transaction`` interaction (asked once per process)."""
        if not self.conditional_create:
            return False
        if self._transactions is None:
            try:
                statement = self.client.capabilities()
            except FhirError as exc:
                log.warning("fhir: CapabilityStatement not available (%s); writing resource by resource", exc)
                if not exc.transient:
                    self._transactions = False  # the server has none: do not ask on every plan
                return False
            self._transactions = any(
                i.get("code") == "transaction"
                for rest in statement.get("rest") or []
                if rest.get("mode", "server") == "server"
                for i in rest.get("interaction") or []
            )
        return self._transactions

    def create_all(self, items: list[BatchItem]) -> list[tuple[dict[str, Any], bool]]:
        """Conditionally create every ``(resource, identifier, fullUrl)`` in ONE transaction Bundle:
        each entry ``POST`` with ``ifNoneExist`` on its business identifier, so a rerun creates nothing
        twice. References to an entry's ``urn:uuid`` fullUrl (a Provenance's target) are rewritten by
        the server. Returns ``(stored, created?)`` per item, in order; all or nothing."""
        entries = []
        for resource, identifier, full_url in items:
            rtype = resource["resourceType"]
            entries.append(
                {
                    "fullUrl": full_url,
                    "resource": resource,
                    "request": {
                        "method": "POST",
                        "url": rtype,
                        "ifNoneExist": if_none_exist(rtype, self.identifier_system, identifier),
                    },
                }
            )
        response = self.client.transaction({"resourceType": "Bundle", "type": "transaction", "entry": entries})
        answers = response.get("entry") or []
        if len(answers) != len(items):
            raise FhirError(f"transaction answered {len(answers)} entries for {len(items)}", status=None)
        results: list[tuple[dict[str, Any], bool]] = []
        for (resource, identifier, _), answer in zip(items, answers, strict=True):
            rtype = resource["resourceType"]
            status = str((answer.get("response") or {}).get("status") or "")
            created = status.startswith("201")
            stored = answer.get("resource")
            if not isinstance(stored, dict) or stored.get("resourceType") != rtype:
                location = (answer.get("response") or {}).get("location") or answer.get("fullUrl")
                stored = (
                    self.client.read(self.client.base.relative(location).split("/_history/")[0]) if location else None
                )
            if stored is None:
                raise FhirError(f"transaction entry for {rtype} {identifier} answered {status!r} without a resource")
            _log_write(rtype, stored, created, identifier)
            results.append((stored, created))
        return results

    @classmethod
    def from_settings(cls, client: FhirClient, settings: Settings, conn: redis.Redis) -> FhirWriteBack:
        """The target for ``[fhir]``: identifier system and conditional-create mode from config."""
        return cls(
            client,
            settings.fhir.identifier_system,
            conn,
            Keys(settings.redis.key_prefix),
            conditional_create=settings.fhir.conditional_create,
        )

    # -- WriteBackTarget ---------------------------------------------------------------------------
    def create(self, resource: dict[str, Any], identifier: str) -> dict[str, Any]:
        return self.create_with_status(resource, identifier)[0]

    def create_with_status(self, resource: dict[str, Any], identifier: str) -> tuple[dict[str, Any], bool]:
        """Create unless a resource with this business identifier exists; (stored, created?)."""
        rtype = resource["resourceType"]
        if self.conditional_create:
            condition = if_none_exist(rtype, self.identifier_system, identifier)
            stored, created = self.client.create(resource, if_none_exist=condition)
        else:
            stored, created = self._create_under_lock(resource, identifier)
        _log_write(rtype, stored, created, identifier)
        return stored, created

    def read(self, reference: str) -> dict[str, Any] | None:
        return self.client.read(reference)

    def update(self, resource: dict[str, Any]) -> dict[str, Any]:
        return self.client.update(resource)

    def search(self, resource_type: str, params: dict[str, str]) -> list[dict[str, Any]]:
        return self.client.search(resource_type, params)

    def find_by_identifier(self, resource_type: str, identifier: str) -> dict[str, Any] | None:
        name, raw = identifier_search(resource_type, self.identifier_system, identifier)
        matches = self.client.search(resource_type, {name: raw})
        if len(matches) > 1:
            log.warning(
                "fhir: %d %s resources share identifier %s; using the first", len(matches), resource_type, identifier
            )
        return matches[0] if matches else None

    # -- the fallback for servers without conditional create ------------------------------------------
    def _create_under_lock(self, resource: dict[str, Any], identifier: str) -> tuple[dict[str, Any], bool]:
        rtype = resource["resourceType"]
        existing = self.find_by_identifier(rtype, identifier)  # cheap path: no lock when it exists
        if existing is not None:
            return existing, False
        key = self.keys.lock(f"writeback:{rtype}:{self.identifier_system}|{identifier}")
        token = uuid.uuid4().hex
        deadline = time.monotonic() + self.lock_wait_seconds
        while not self.conn.set(key, token, nx=True, px=self.lock_ttl_ms):
            if time.monotonic() >= deadline:
                raise FhirUnavailable(f"write lock for {rtype} {identifier} still held after {self.lock_wait_seconds}s")
            self.sleep(0.05)
        try:
            # Search again under the lock: another worker may have created it between our first search
            # and the lock (it released the lock only after its create returned).
            existing = self.find_by_identifier(rtype, identifier)
            if existing is not None:
                return existing, False
            return self.client.create(resource)
        finally:
            self._release(keys=[key], args=[token])
