"""Staff messages written by the flows: Communications to the user, a role they hold or a group they are in.

R4 Communication has no "read" status; ``received`` (when it reached its recipient) is set when the user
opens it, which is what "marked read" means here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fhir_smartflow.worklist.fhir import UserFhir
from fhir_smartflow.worklist.tasks import Identity, local

SHOWN = frozenset({"completed", "in-progress", "preparation"})


def groups_of(fhir: UserFhir, practitioner: str) -> list[str]:
    found = []
    for group in fhir.search("Group", {"member": practitioner, "_count": "100"}):
        members = [local((m.get("entity") or {}).get("reference", "")) for m in group.get("member") or []]
        if practitioner in members:  # filtered here too: a server may ignore `member`
            found.append(f"Group/{group['id']}")
    return found


@dataclass(frozen=True)
class Message:
    id: str
    sent: str
    text: str
    read: bool


def text_of(comm: dict[str, Any]) -> str:
    return " ".join(str(p.get("contentString", "")) for p in comm.get("payload") or [] if p.get("contentString"))


def addressed_to(comm: dict[str, Any], targets: set[str]) -> bool:
    return any(local(r.get("reference", "")) in targets for r in comm.get("recipient") or [])


def my_messages(fhir: UserFhir, who: Identity, groups: list[str]) -> list[Message]:
    targets = {*who.owners, *groups}
    found: dict[str, dict[str, Any]] = {}
    for target in sorted(targets):
        for comm in fhir.search("Communication", {"recipient": target, "_count": "200"}):
            found[comm["id"]] = comm
    rows = [
        Message(c["id"], c.get("sent", ""), text_of(c), bool(c.get("received")))
        for c in found.values()
        if c.get("status") in SHOWN and addressed_to(c, targets) and text_of(c)
    ]
    return sorted(rows, key=lambda m: m.sent, reverse=True)


def open_message(
    fhir: UserFhir, comm_id: str, who: Identity, groups: list[str], now: datetime
) -> dict[str, Any] | None:
    """The message, marked received (read) on first opening; None when it is not addressed to the user."""
    comm, etag = fhir.read("Communication", comm_id)
    if not addressed_to(comm, {*who.owners, *groups}):
        return None
    if not comm.get("received"):
        comm = fhir.update({**comm, "received": now.isoformat(timespec="seconds")}, etag)
    return comm
