"""Doctor check for the staff worklist: its registration settings and the EHR's SMART configuration."""

from __future__ import annotations

import requests

from fhir_smartflow.config import secret
from fhir_smartflow.tooling.doctor.model import Check, DoctorContext, Finding

# What the worklist relies on (docs/worklist.md, "A generic SMART-enabled EHR").
WANTED = ("launch-ehr", "sso-openid-connect")


class WorklistSmart(Check):
    name = "worklist-smart"
    about = "the worklist's client settings, and the FHIR server's SMART configuration (PKCE S256, EHR launch)"

    def run(self, ctx: DoctorContext) -> list[Finding]:
        config = ctx.settings.worklist
        if not config.enabled or not config.client_id:
            return [self.skip("no [worklist] client_id: the worklist is not mounted")]
        base = (config.fhir_base_url or ctx.settings.fhir.base_url).rstrip("/")
        if not base:
            return [self.skip("no FHIR base: the worklist uses the embedded sandbox store")]
        found: list[Finding] = []
        if config.client_secret_env and not secret(config.client_secret_env):
            found.append(self.fail(f"${config.client_secret_env} is not set", "export the client secret"))
        if not config.public_url.startswith("https://"):
            found.append(
                self.warn("[worklist] public_url is not https", "serve the worklist over HTTPS and set public_url")
            )
        try:
            answer = requests.get(f"{base}/.well-known/smart-configuration", timeout=10)
            answer.raise_for_status()
            body = answer.json()
        except (requests.RequestException, ValueError) as exc:
            return [
                *found,
                self.fail(f"{base}/.well-known/smart-configuration: {type(exc).__name__}", "check the base"),
            ]
        if "S256" not in (body.get("code_challenge_methods_supported") or []):
            found.append(self.fail("the server does not offer PKCE S256", "enable PKCE in the EHR's OAuth server"))
        missing = [c for c in WANTED if c not in (body.get("capabilities") or [])]
        if missing:
            found.append(self.warn(f"capabilities lack {', '.join(missing)}", "see docs/worklist.md"))
        return found or [self.ok(f"{base}: SMART App Launch with PKCE S256 and EHR launch")]
