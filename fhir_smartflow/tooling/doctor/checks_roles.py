"""Doctor check: every role the enabled flows send staff messages to is held by someone on the FHIR server.

A staff message or notify for a role no active PractitionerRole holds is written not-done and goes to
``[roles] fallback`` (docs/flows.md); this check says so before the first one happens.
"""

from __future__ import annotations

from fhir_smartflow.channels import STAFF
from fhir_smartflow.engine.action_types import ACTION_TYPES
from fhir_smartflow.engine.model import Engine
from fhir_smartflow.fhir.errors import FhirError
from fhir_smartflow.tooling.doctor.model import Check, DoctorContext, Finding


def routed_roles(engine: Engine) -> dict[str, list[str]]:
    """Role → the enabled flows that address staff messages (or failure notices) to it."""
    roles: dict[str, list[str]] = {}
    for flow in engine.flows.values():
        if not flow.enabled:
            continue
        for action in flow.actions:
            spec = ACTION_TYPES[action.type]
            template = engine.templates.get(action.template) if action.template else None
            named: list[str] = []
            owner_role = action.owner.value if action.owner is not None and action.owner.kind == "role" else None
            if owner_role and (spec.audience == STAFF or action.notify_on_failure):
                named.append(owner_role)
            if template is not None and spec.audience == STAFF:
                named += template.recipients.roles
            for role in named:
                users = roles.setdefault(role, [])
                if flow.id not in users:
                    users.append(flow.id)
    return roles


class RoleMembers(Check):
    name = "role-members"
    about = "every role the flows send staff messages to is held by an active PractitionerRole"

    def run(self, ctx: DoctorContext) -> list[Finding]:
        roles = routed_roles(ctx.engine)
        if not roles:
            return [self.skip("no enabled flow sends staff messages to a role")]
        fallback = ctx.settings.role_fallback
        capabilities = ctx.facts.get("capabilities") or ctx.client.capabilities()
        served = {str(r.get("type")) for rest in capabilities.get("rest") or [] for r in rest.get("resource") or []}
        if "PractitionerRole" not in served:
            where = f"go to the fallback {fallback}" if fallback else "are written not-done and reach nobody"
            return [
                self.warn(
                    f"the server offers no PractitionerRole: messages to {', '.join(sorted(roles))} {where}",
                    "address those messages to practitioners or groups"
                    + ("" if fallback else ", or set [roles] fallback"),
                )
            ]
        findings: list[Finding] = []
        for role in sorted(roles):
            coding = ctx.settings.roles[role]
            try:
                found = ctx.client.search("PractitionerRole", {"role": coding, "active": "true", "_count": "1"})
            except FhirError as exc:
                findings.append(self.fail(f"PractitionerRole?role={coding}: {exc}", "check [fhir] base_url and scopes"))
                continue
            if found:
                findings.append(self.ok(f"{role}: held ({coding})"))
                continue
            where = f"they go to the fallback {fallback}" if fallback else "they are written not-done and reach nobody"
            findings.append(
                self.warn(
                    f"{role} ({coding}): no active PractitionerRole holds it; messages of "
                    f"{', '.join(roles[role])} to it: {where}",
                    f"give a PractitionerRole the code {coding}" + ("" if fallback else ", or set [roles] fallback"),
                )
            )
        if fallback:
            try:
                present = ctx.client.read(fallback) is not None
            except FhirError as exc:
                findings.append(self.fail(f"GET {fallback}: {exc}", "check [roles] fallback"))
            else:
                if not present:
                    findings.append(self.warn(f"[roles] fallback {fallback} does not exist", f"create {fallback}"))
        return findings
