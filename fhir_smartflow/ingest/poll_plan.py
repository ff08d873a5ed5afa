"""How each resource type is polled, decided from what the server's CapabilityStatement declares.

A search parameter the server does not declare is never sent: OpenEMR answers an undeclared one (``_count``,
``_sort``, ``_lastUpdated`` on its 7.0.0 development build) with ``200`` and ``total: 0`` — it only logs
"This search field does not exist" (src/Services/FHIR/FhirServiceBase.php) — so sending it would look like
a quiet server. Strategies:

* ``last-updated``: ``_lastUpdated`` declared.
* ``date-window``: the type is in ``[poll] date_window_types`` and declares ``date``.
* ``full-scan``: neither (OpenEMR 7.0.0-dev's Patient): every resource is read each pass (bounded by
  ``[poll] full_scan_max``) and compared with the content hash stored for it.
* a source of its own (``sources``): the FHIR server does not serve the type but another API does
  (OpenEMR's appointments through the Standard API, openemr/appointments.py).
* ``unsupported``: none of these; the reason says what the server lacks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

# Servers known to answer an undeclared parameter with an empty result instead of ignoring it: only what they
# declare is sent to them. Others get the result parameters _count / _sort (which FHIR servers seldom list among
# their search parameters) as well.
STRICT_SOFTWARE = frozenset({"OpenEMR"})
RESULT_PARAMS = frozenset({"_count", "_sort"})
LAST_UPDATED = "last-updated"
DATE_WINDOW = "date-window"
FULL_SCAN = "full-scan"
UNSUPPORTED = "unsupported"


@dataclass(frozen=True)
class TypePlan:
    resource_type: str
    strategy: str
    reason: str
    versioned: bool = False
    params: frozenset[str] = field(default_factory=frozenset)  # the search parameters the server declares

    def declares(self, name: str) -> bool:
        return name in self.params

    def to_dict(self) -> dict[str, Any]:
        return {"resource_type": self.resource_type, "strategy": self.strategy, "reason": self.reason}


class NothingToPoll(RuntimeError):
    """Every type the poller should watch is unsupported on this server: polling would find nothing."""


def plan_strategies(
    capability: dict[str, Any],
    types: Iterable[str],
    date_window_types: Iterable[str],
    full_scan_max: int = 0,
    sources: Iterable[str] = (),
) -> list[TypePlan]:
    """Choose a strategy per type from the CapabilityStatement's declared search parameters."""
    resources: dict[str, dict[str, Any]] = {}
    common: set[str] = set()
    for rest in capability.get("rest") or []:
        if rest.get("mode", "server") == "server":
            common |= {str(p.get("name")) for p in rest.get("searchParam") or []}
            for res in rest.get("resource") or []:
                resources[str(res.get("type"))] = res
    window, own = set(date_window_types), set(sources)
    software = str((capability.get("software") or {}).get("name") or "")
    if software not in STRICT_SOFTWARE:
        common |= RESULT_PARAMS
    plans: list[TypePlan] = []
    for rtype in sorted(set(types)):
        res = resources.get(rtype)
        if res is None:
            if rtype in own:
                plans.append(TypePlan(rtype, own_strategy(rtype), "not served by the FHIR API: read from its own API"))
            else:
                plans.append(TypePlan(rtype, UNSUPPORTED, "not in the server's CapabilityStatement"))
            continue
        params = frozenset({str(p.get("name")) for p in res.get("searchParam") or []} | common)
        interactions = {str(i.get("code")) for i in res.get("interaction") or []}
        versioned = res.get("versioning") in {"versioned", "versioned-update"}
        if "search-type" not in interactions and interactions:
            plans.append(TypePlan(rtype, UNSUPPORTED, "the server does not allow searching it"))
        elif rtype in window and "date" in params:
            reason = (
                "configured date window ([poll] date_window_types): its _lastUpdated does not move on status changes"
            )
            plans.append(TypePlan(rtype, DATE_WINDOW, reason, versioned, params))
        elif "_lastUpdated" in params:
            plans.append(TypePlan(rtype, LAST_UPDATED, "_lastUpdated search supported", versioned, params))
        elif full_scan_max > 0:
            reason = (
                f"no _lastUpdated search parameter: every pass reads all (at most {full_scan_max}) and compares "
                "content hashes"
            )
            plans.append(TypePlan(rtype, FULL_SCAN, reason, versioned, params))
        else:
            plans.append(
                TypePlan(
                    rtype,
                    UNSUPPORTED,
                    "no _lastUpdated search parameter, and full scans are off ([poll] full_scan_max = 0)",
                )
            )
    return plans


def own_strategy(resource_type: str) -> str:
    return f"own-api:{resource_type}"


def require_something(plans: list[TypePlan]) -> None:
    """Raise NothingToPoll (saying what the server lacks) when no type can be polled."""
    if plans and all(p.strategy == UNSUPPORTED for p in plans):
        reasons = "; ".join(f"{p.resource_type}: {p.reason}" for p in plans)
        raise NothingToPoll(f"the poller can watch none of its resource types on this server ({reasons})")
