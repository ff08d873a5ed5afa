"""Doctor checks of the FHIR server side: what it says about its base URL, auth and scopes, the service's
Device, and the Subscriptions the flows need (present, active, pointing at this webhook, with the secret
it expects), plus what the webhook recorded of each subscription (handshakes, heartbeats, gaps)."""

from __future__ import annotations

from datetime import UTC, datetime

from fhir_smartflow.config import secret
from fhir_smartflow.connections import Keys
from fhir_smartflow.fhir.device import find_service_device
from fhir_smartflow.fhir.errors import FhirError, TokenRefused
from fhir_smartflow.fhir.scopes import Scopes
from fhir_smartflow.fhir.server_info import base_url_advice, first_page_links
from fhir_smartflow.fhir.service_scopes import needed_scopes
from fhir_smartflow.tooling.doctor.model import Check, DoctorContext, Finding
from fhir_smartflow.tooling.subscriptions import build_subscriptions, find_stored, stored_problems

SYNC = "run `fhir-smartflow subscriptions sync` (with the --endpoint the server reaches this webhook at)"
# A secret the server masks on read cannot be compared: deliveries it signs or sends show it (webhook-auth).


def _fhir(ctx: DoctorContext) -> bool:
    return bool(ctx.settings.fhir.base_url) and ctx.settings.fhir.writeback == "fhir"


class BaseUrlMatches(Check):
    name = "fhir-base-url"
    about = "the server's own URL (implementation.url, paging links) lies under [fhir] base_url"

    def run(self, ctx: DoctorContext) -> list[Finding]:
        if not ctx.settings.fhir.base_url:
            return [self.skip("no [fhir] base_url")]
        capabilities = ctx.facts.get("capabilities") or ctx.client.capabilities()
        advice = base_url_advice(ctx.client.base_url, capabilities, first_page_links(ctx.client))
        if advice:
            return [self.fail(advice.problem, advice.fix)]
        return [self.ok(f"the server's links lie under {ctx.client.base_url}")]


class AuthScopes(Check):
    name = "fhir-auth"
    about = "a token is granted and its scopes cover what the flows read and write"

    def run(self, ctx: DoctorContext) -> list[Finding]:
        if not _fhir(ctx):
            return [self.skip("not a FHIR write-back")]
        auth = ctx.client.http.auth
        if auth is None:
            return [self.ok("[fhir] auth = none: the server asks for no token")]
        try:
            auth.token()
        except TokenRefused as exc:
            return [self.fail(f"token refused: {exc.error} {exc.description}".strip(), "check the client and scopes")]
        except FhirError as exc:
            return [self.fail(f"no token: {exc}", "check [fhir] auth, client_id and the secret's environment")]
        granted = auth.granted_scopes()
        if not granted:
            return [self.ok("token granted (the server did not say which scopes)")]
        lacking = Scopes.parse(granted).missing(needed_scopes(ctx.engine, ctx.settings))
        if lacking.resources:
            shown = lacking.render(Scopes.parse(granted).written_in())
            return [
                self.fail(
                    f"the token lacks {shown}", "grant these scopes to the client (`fhir-smartflow scopes --why`)"
                )
            ]
        return [self.ok("token granted; its scopes cover the flows")]


class ServiceDevice(Check):
    name = "service-device"
    about = "the service's Device exists (every written resource references it)"

    def run(self, ctx: DoctorContext) -> list[Finding]:
        if not _fhir(ctx):
            return [self.skip("not a FHIR write-back")]
        device = find_service_device(ctx.client, ctx.settings)
        if device is None:
            fhir = ctx.settings.fhir
            return [
                self.fail(
                    f"no Device with identifier {fhir.identifier_system}|{fhir.device_id}",
                    "start the worker or run `fhir-smartflow subscriptions sync` (both create it)",
                )
            ]
        return [self.ok(f"Device/{device.get('id')}")]


class SubscriptionsActive(Check):
    name = "subscriptions"
    about = "for every trigger the flows use, a Subscription exists, is active, points here, has the secret"

    def run(self, ctx: DoctorContext) -> list[Finding]:
        if not ctx.settings.fhir.base_url:
            return [self.skip("no [fhir] base_url")]
        missing_env = [s.secret_env for s in ctx.settings.subscriptions if not secret(s.secret_env)]
        if missing_env:
            return [self.fail(f"not set: ${', $'.join(missing_env)}", "export the webhook's secrets")]
        endpoint = f"http://localhost{ctx.settings.server.notify_path}"  # only the path is compared
        wanted = build_subscriptions(ctx.engine, ctx.settings, "classic", endpoint, show_secrets=True)
        findings = []
        for sub in wanted:
            label = sub["criteria"]
            stored = find_stored(ctx.client, sub)
            if stored is None:
                findings.append(self.fail(f"{label}: no Subscription (nothing fires on it)", SYNC))
                continue
            problems = stored_problems(stored, sub, ctx.settings.server.notify_path)
            where = f"Subscription/{stored.get('id')} ({label})"
            if problems:
                findings.append(self.fail(f"{where} {'; '.join(problems)}", SYNC))
            else:
                findings.append(self.ok(f"{where} active"))
        return findings or [self.ok("the enabled flows need no Subscription")]


class SubscriptionActivity(Check):
    name = "subscription-activity"
    about = "per subscription: the last handshake / heartbeat and notification seen, and recorded gaps"

    def run(self, ctx: DoctorContext) -> list[Finding]:
        keys = Keys(ctx.settings.redis.key_prefix)
        findings = []
        for sub in ctx.settings.subscriptions:
            record = {k.decode(): v.decode() for k, v in ctx.redis.hgetall(keys.subscription(sub.id)).items()}
            gaps = int(ctx.redis.llen(keys.gaps(sub.id)))
            if not record:
                findings.append(
                    self.warn(f"{sub.id}: nothing received yet", "change a resource it covers and run doctor again")
                )
                continue
            parts = [f"last notification {record.get('last_seen', '-')}"]
            if record.get("status_at"):
                at = datetime.fromtimestamp(float(record["status_at"]), UTC).isoformat()
                parts.append(f"last {record.get('last_status_type', 'status')} {at}")
            if gaps:
                findings.append(
                    self.warn(
                        f"{sub.id}: {', '.join(parts)}; {gaps} gap(s) recorded",
                        "see `fhir-smartflow health` (missed notifications are re-fetched by gap recovery)",
                    )
                )
            else:
                findings.append(self.ok(f"{sub.id}: {', '.join(parts)}; no gaps"))
        return findings or [self.skip("no [[subscriptions]] configured")]


class WebhookAuth(Check):
    name = "webhook-auth"
    about = "no delivery was refused for wrong credentials since the last one accepted (a wrong secret)"

    def run(self, ctx: DoctorContext) -> list[Finding]:
        keys = Keys(ctx.settings.redis.key_prefix)
        raw = ctx.redis.hgetall(keys.webhook())
        failure = {k.decode(): v.decode() for k, v in raw.items()}
        last_failure = failure.get("last_auth_failure")
        if not last_failure:
            return [self.ok("no delivery refused for its credentials")]
        accepted = [ctx.redis.hget(keys.subscription(s.id), "last_seen") for s in ctx.settings.subscriptions]
        last_accepted = max((a.decode() for a in accepted if a), default="")
        if last_accepted and datetime.fromisoformat(last_accepted) > datetime.fromisoformat(last_failure):
            return [self.ok(f"the last refused delivery ({last_failure}) came before the last accepted one")]
        reason = failure.get("last_auth_failure_reason", "invalid")
        return [
            self.fail(
                f"a delivery was refused at {last_failure} ({reason} credentials) and none accepted since: a "
                "Subscription on the server carries a wrong or no secret (servers that mask secrets only show it so)",
                "run `fhir-smartflow subscriptions sync --rewrite-secrets` (with the same --endpoint)",
            )
        ]
