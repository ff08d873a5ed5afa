"""The registry of doctor checks, in the order they run (later checks may reuse what earlier ones found)."""

from __future__ import annotations

import redis

from fhir_smartflow.fhir.errors import FhirError
from fhir_smartflow.tooling.doctor.checks_console import ConsoleReady
from fhir_smartflow.tooling.doctor.checks_delivery import StuckDeliveries
from fhir_smartflow.tooling.doctor.checks_openemr import (
    FlowResourceTypes,
    OpenEmrCategory,
    OpenEmrReadToken,
    OpenEmrWriteToken,
)
from fhir_smartflow.tooling.doctor.checks_roles import RoleMembers
from fhir_smartflow.tooling.doctor.checks_servers import (
    AuthScopes,
    BaseUrlMatches,
    ServiceDevice,
    SubscriptionActivity,
    SubscriptionsActive,
    WebhookAuth,
)
from fhir_smartflow.tooling.doctor.checks_worklist import WorklistSmart
from fhir_smartflow.tooling.doctor.model import Check, DoctorContext, Finding


class RedisReachable(Check):
    name = "redis"
    about = "the queue's Redis answers and accepts writes"

    def run(self, ctx: DoctorContext) -> list[Finding]:
        if ctx.settings.embedded_queue:
            return [self.fail("no [redis] url: the embedded in-process queue is not for production", "set [redis] url")]
        try:
            ctx.redis.ping()
            probe = f"{ctx.settings.redis.key_prefix}doctor:probe"
            ctx.redis.set(probe, "1", ex=10)
        except redis.RedisError as exc:
            return [self.fail(f"{type(exc).__name__}: {exc}", "start Redis or fix [redis] url")]
        return [self.ok("reachable and writable")]


class FhirReachable(Check):
    name = "fhir-base"
    about = "the FHIR base answers /metadata, and what software it is"

    def run(self, ctx: DoctorContext) -> list[Finding]:
        if not ctx.settings.fhir.base_url:
            return [self.fail("no [fhir] base_url: writes would go to the built-in sandbox", "set [fhir] base_url")]
        try:
            capabilities = ctx.client.capabilities()
        except FhirError as exc:
            return [self.fail(f"GET {ctx.settings.fhir.base_url}/metadata: {exc}", "check [fhir] base_url and auth")]
        software = capabilities.get("software") or {}
        ctx.facts["capabilities"] = capabilities
        name = " ".join(str(software.get(k, "")) for k in ("name", "version")).strip() or "unnamed software"
        return [self.ok(f"{name}, FHIR {capabilities.get('fhirVersion', '?')}")]


CHECKS: dict[str, type[Check]] = {
    RedisReachable.name: RedisReachable,
    FhirReachable.name: FhirReachable,
    BaseUrlMatches.name: BaseUrlMatches,
    AuthScopes.name: AuthScopes,
    ServiceDevice.name: ServiceDevice,
    SubscriptionsActive.name: SubscriptionsActive,
    SubscriptionActivity.name: SubscriptionActivity,
    WebhookAuth.name: WebhookAuth,
    OpenEmrReadToken.name: OpenEmrReadToken,
    OpenEmrWriteToken.name: OpenEmrWriteToken,
    OpenEmrCategory.name: OpenEmrCategory,
    FlowResourceTypes.name: FlowResourceTypes,
    RoleMembers.name: RoleMembers,
    ConsoleReady.name: ConsoleReady,
    StuckDeliveries.name: StuckDeliveries,
    WorklistSmart.name: WorklistSmart,
}


def run_checks(ctx: DoctorContext, names: list[str] | None = None) -> list[Finding]:
    """Run the named checks (all when None), each isolated: a check that raises reports a failure."""
    findings: list[Finding] = []
    for name, cls in CHECKS.items():
        if names and name not in names:
            continue
        check = cls()
        try:
            findings += check.run(ctx)
        except Exception as exc:
            findings.append(check.fail(f"the check itself failed: {type(exc).__name__}: {exc}", "report this"))
    return findings
