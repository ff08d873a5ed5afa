"""The service's own Device: every resource we write names it (requester, sender, author, Provenance agent).

Servers that check references on write refuse a reference to a Device that does not exist, and servers that
assign ids refuse a client-chosen one (Medplum: ``PUT Device/fhir-smartflow`` → 400 Invalid id). So the
Device is created by a conditional create on its identifier (``[fhir] identifier_system`` | ``[fhir]
device_id``) and the id the server assigned is the one every reference uses (``with_service_device``).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Protocol

from fhir_smartflow.config import Settings
from fhir_smartflow.defaults import SERVICE_NAME
from fhir_smartflow.fhir.client import FhirClient
from fhir_smartflow.fhir.errors import FhirError
from fhir_smartflow.fhir.writeback import fhir_escape, if_none_exist

log = logging.getLogger(__name__)


class DeviceServer(Protocol):
    def search(self, resource_type: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]: ...

    def create(self, resource: dict[str, Any], if_none_exist: str | None = None) -> tuple[dict[str, Any], bool]: ...


def service_device(settings: Settings) -> dict[str, Any]:
    """The Device resource (R4) that stands for this service."""
    return {
        "resourceType": "Device",
        "identifier": [{"system": settings.fhir.identifier_system, "value": settings.fhir.device_id}],
        "status": "active",
        "deviceName": [{"name": SERVICE_NAME, "type": "user-friendly-name"}],
    }


def find_service_device(server: DeviceServer, settings: Settings) -> dict[str, Any] | None:
    """The service's Device on the server, found by its identifier; None when there is none."""
    system, value = settings.fhir.identifier_system, settings.fhir.device_id
    matches = server.search("Device", {"identifier": f"{fhir_escape(system)}|{fhir_escape(value)}"})
    ours = [m for m in matches if {"system": system, "value": value} in _identifiers(m)]
    return ours[0] if ours else None


def ensure_service_device(server: DeviceServer, settings: Settings) -> tuple[str, bool]:
    """The server-assigned id of the service's Device, created when missing: (id, created?)."""
    device = service_device(settings)
    if settings.fhir.conditional_create:
        condition = if_none_exist("Device", settings.fhir.identifier_system, settings.fhir.device_id)
        stored, created = server.create(device, if_none_exist=condition)
    else:
        found = find_service_device(server, settings)
        stored, created = (found, False) if found is not None else server.create(device)
    if created:
        log.info("fhir: created the service's Device/%s", stored.get("id"))
    return str(stored["id"]), created


def with_service_device(settings: Settings, server: DeviceServer | None = None) -> Settings:
    """``settings`` with ``[fhir] device_id`` replaced by the id the server gave the service's Device, so
    every reference we write names a Device that exists. The embedded sandbox store (no base_url) and the
    OpenEMR write-back (its own author) keep the configured id. A server that cannot be reached now (the
    service starts anyway, its writes retried) leaves the configured id, with an error saying so; a
    server that refuses the Device raises its FhirError. ``server``: default a client for ``[fhir]``
    asking once (a start does not wait through the retry backoff)."""
    if not settings.fhir.base_url or settings.fhir.writeback != "fhir":
        return settings
    if server is None:
        server = FhirClient.asking_once(settings)
    try:
        device_id, _ = ensure_service_device(server, settings)
    except FhirError as exc:
        if not exc.transient:
            raise
        log.error(
            "fhir: the service's Device could not be found or created (%s); references name Device/%s until "
            "the next start",
            exc,
            settings.fhir.device_id,
        )
        return settings
    return dataclasses.replace(settings, fhir=dataclasses.replace(settings.fhir, device_id=device_id))


def _identifiers(resource: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"system": i.get("system"), "value": i.get("value")} for i in resource.get("identifier") or []]
