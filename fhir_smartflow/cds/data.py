"""What a patient-view call needs, from the request's prefetch or, within the deadline, the FHIR server.

Prefetch keys (``PREFETCH``): the patient's active Flags, the user's own resource and the user's
PractitionerRoles. A key the CDS client left out is fetched through ``fhirAuthorization`` only when the
request's ``fhirServer`` is the configured FHIR base (the one client and URL guard of fhir/), with a short
timeout and no retries, all at once; what has not arrived by the deadline stays unknown (the answer uses
what is known and the log names what was missing, never the patient).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from fhir_smartflow.fhir.client import FhirClient
from fhir_smartflow.fhir.errors import FhirError
from fhir_smartflow.fhir.tokens import StaticTokenProvider
from fhir_smartflow.fhir.urls import BaseUrl
from fhir_smartflow.retry import RetryPolicy

log = logging.getLogger(__name__)

FLAGS, USER, USER_ROLES = "patientFlags", "user", "userRoles"
PREFETCH: dict[str, str] = {
    FLAGS: "Flag?patient={{context.patientId}}&status=active",
    USER: "{{context.userId}}",
    USER_ROLES: "PractitionerRole?practitioner={{userPractitionerId}}",
}


def resources_of(value: Any) -> list[dict[str, Any]]:
    """A prefetch value as resources: a searchset Bundle's entries, one resource, or none (``null``)."""
    if not isinstance(value, dict):
        return []
    if value.get("resourceType") == "Bundle":
        entries = value.get("entry") if isinstance(value.get("entry"), list) else []
        return [e["resource"] for e in entries if isinstance(e, dict) and isinstance(e.get("resource"), dict)]
    return [value] if isinstance(value.get("resourceType"), str) else []


@dataclass
class Gathered:
    flags: list[dict[str, Any]] | None = None  # None: not known
    user: list[dict[str, Any]] = field(default_factory=list)
    roles_known: bool = False
    missing: list[str] = field(default_factory=list)  # prefetch keys neither given nor fetched in time
    fetched: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class FhirAccess:
    """The FHIR server a call may be answered from: the configured base, with the request's token."""

    client: FhirClient

    @classmethod
    def from_request(cls, body: dict[str, Any], configured_base: str, timeout: float) -> FhirAccess | None:
        auth, server = body.get("fhirAuthorization"), body.get("fhirServer")
        if not isinstance(auth, dict) or not isinstance(server, str):
            return None
        token = auth.get("access_token")
        if not isinstance(token, str) or not token or str(auth.get("token_type", "")).lower() != "bearer":
            return None
        try:
            same = BaseUrl(server).url == BaseUrl(configured_base).url
        except ValueError:
            same = False
        if not same:
            log.warning("cds: fhirServer is not the configured FHIR base; answering from prefetch only")
            return None
        provider = StaticTokenProvider(token, "the fhirAuthorization token of a CDS Hooks call")
        return cls(FhirClient(configured_base, auth=provider, timeout=timeout, retry=RetryPolicy(max_retries=0)))


def gather(
    prefetch: dict[str, Any],
    patient_id: str,
    user_ref: str,
    access: FhirAccess | None,
    pool: ThreadPoolExecutor,
    deadline: float,
    clock: Callable[[], float] = time.monotonic,
) -> Gathered:
    out = Gathered()
    kind, _, user_id = user_ref.partition("/")
    if FLAGS in prefetch:
        out.flags = resources_of(prefetch[FLAGS])
    if USER in prefetch:
        out.user += resources_of(prefetch[USER])
    if USER_ROLES in prefetch:
        out.user += resources_of(prefetch[USER_ROLES])
    own_role = any(r.get("resourceType") == "PractitionerRole" and r.get("id") == user_id for r in out.user)
    out.roles_known = USER_ROLES in prefetch or (kind == "PractitionerRole" and own_role)
    wanted: dict[str, Callable[[], list[dict[str, Any]]]] = {}
    if access is not None:
        client = access.client
        if out.flags is None:
            wanted[FLAGS] = lambda: client.search("Flag", {"patient": patient_id, "status": "active"})
        if kind == "PractitionerRole" and not own_role:
            wanted[USER] = lambda: [r for r in [client.read(user_ref)] if r]
        elif kind == "Practitioner" and not out.roles_known:
            wanted[USER_ROLES] = lambda: client.search("PractitionerRole", {"practitioner": user_ref})
    futures: dict[str, Future[list[dict[str, Any]]]] = {key: pool.submit(fn) for key, fn in wanted.items()}
    if futures:
        wait(futures.values(), timeout=max(0.0, deadline - clock()))
    for key, future in futures.items():
        if not future.done():
            out.missing.append(key)
            future.cancel()
            continue
        try:
            found = future.result()
        except (FhirError, ValueError) as exc:
            log.warning("cds: fetching %s failed: %s", key, type(exc).__name__)
            out.missing.append(key)
            continue
        out.fetched.append(key)
        if key == FLAGS:
            out.flags = found
        else:
            out.user += found
            out.roles_known = True
    if out.flags is None and FLAGS not in out.missing:
        out.missing.append(FLAGS)
    return out
