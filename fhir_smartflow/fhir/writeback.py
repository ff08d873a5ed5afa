"""``FhirWriteBack``: the WriteBackTarget that writes to the FHIR server, idempotently by business identifier.

Two ways to create exactly once (docs/writeback.md):
- conditional create (``If-None-Exist: identifier=system|value``): the server does the check-and-create;
- servers without it: search by identifier, and create only if nothing matched, inside a per-identifier
  Redis lock so two workers cannot both see "nothing" and both create.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import redis

from fhir_smartflow.config import Settings
from fhir_smartflow.connections import Keys
from fhir_smartflow.engine.provenance import versioned_reference
from fhir_smartflow.engine.references import reference_type_problems
from fhir_smartflow.fhir.client import FhirClient
from fhir_smartflow.fhir.errors import FhirBadRequest, FhirError, FhirUnavailable, error_for_status, outcome_text
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


def check_reference_targets(resource: dict[str, Any]) -> None:
    """Refuse, before any request, a resource whose references name a type its R4 element does not
    allow (strict servers refuse the write anyway, with a vaguer message): FhirBadRequest, permanent."""
    problems = reference_type_problems(resource)
    if problems:
        raise FhirBadRequest(f"not written: {'; '.join(problems)}")


def _targets_an_entry(resource: dict[str, Any], full_urls: set[str]) -> bool:
    return resource.get("resourceType") == "Provenance" and any(
        (t or {}).get("reference") in full_urls for t in resource.get("target") or []
    )


def _retarget(provenance: dict[str, Any], stored_at: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The Provenance with each fullUrl target replaced by the stored resource's versioned reference."""
    targets = []
    for target in provenance.get("target") or []:
        stored = stored_at.get((target or {}).get("reference", ""))
        targets.append({**target, "reference": versioned_reference(stored)} if stored else target)
    return {**provenance, "target": targets}


def _entry_error(answer: dict[str, Any], rtype: str, identifier: str, status: str) -> FhirError:
    """The error of a transaction entry that stored nothing, with the server's OperationOutcome text
    (``response.outcome``, else the entry's resource) and the typed error of its status."""
    outcome = (answer.get("response") or {}).get("outcome") or answer.get("resource")
    said = outcome_text(outcome)
    code = status.split(" ", 1)[0]
    where = f"transaction entry for {rtype} {identifier}"
    if code.isdigit() and int(code) >= 400:
        err = error_for_status(int(code), json.dumps(outcome) if said else None, url=rtype, method="POST")
        return type(err)(f"{where}: {err.message}", status=err.status, outcome=err.outcome, method="POST")
    detail = f": {said}" if said else ""
    return FhirError(f"{where} answered {status!r} without a resource{detail}", outcome=outcome)


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

    def supports_transactions(self) -> bool:
        """True when a plan's writes can go in one transaction Bundle: conditional create is on and the
        server's CapabilityStatement lists the ``transaction`` interaction (asked once per process)."""
        return self.conditional_create and self.client.supports_interaction("transaction")

    def create_all(self, items: list[BatchItem]) -> list[tuple[dict[str, Any], bool]]:
        """Conditionally create every ``(resource, identifier, fullUrl)``: each entry ``POST`` with
        ``ifNoneExist`` on its business identifier, so a rerun creates nothing twice. The resources go in
        one transaction Bundle; a Provenance whose target is another entry's ``urn:uuid`` fullUrl goes in
        a second one, its target rewritten to the version the first stored (``Type/id/_history/v``, as
        the one-by-one path writes it; servers rewrite a fullUrl only to ``Type/id``). Returns
        ``(stored, created?)`` per item, in order. Nothing is checked in before a refusal of the first
        Bundle; a refused second one leaves the resources written, and the rerun finds them."""
        for resource, _, _ in items:
            check_reference_targets(resource)
        full_urls = {full_url for _, _, full_url in items}
        later = [i for i, (resource, _, _) in enumerate(items) if _targets_an_entry(resource, full_urls)]
        first = [i for i in range(len(items)) if i not in later]
        results = dict(zip(first, self._transaction([items[i] for i in first]), strict=True))
        if later:
            stored_at = {items[i][2]: results[i][0] for i in first}
            versioned = [(_retarget(items[i][0], stored_at), items[i][1], items[i][2]) for i in later]
            results.update(zip(later, self._transaction(versioned), strict=True))
        return [results[i] for i in range(len(items))]

    def _transaction(self, items: list[BatchItem]) -> list[tuple[dict[str, Any], bool]]:
        """One transaction Bundle of conditional creates; ``(stored, created?)`` per item, in order."""
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
                    self.client.read(self.client.base.relative(location).split("/_history/")[0])
                    if location and status.startswith("2")
                    else None
                )
            if stored is None:
                raise _entry_error(answer, rtype, identifier, status)
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
        check_reference_targets(resource)
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
        check_reference_targets(resource)
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
