"""Doctor checks of an OpenEMR installation ([fhir] writeback = "openemr"); each skips otherwise.

* ``openemr-read-token``: the backend-services token is granted (a newly registered client is stored
  disabled by OpenEMR and answers ``invalid_client`` until an administrator enables it).
* ``openemr-write-token``: a user-context token is stored and a read-only Standard API call works with it.
* ``openemr-category``: the last uploaded document is listed under ``/Categories/<document_category>``.
* ``flow-resource-types``: every resource type the enabled flows need is served (the FHIR API, or the
  Standard API for Appointment); a send-form action without ``form_title`` needs Questionnaire.
"""

from __future__ import annotations

import hashlib

from fhir_smartflow.fhir.errors import FhirError, TokenRefused
from fhir_smartflow.openemr.errors import OpenEmrError
from fhir_smartflow.tooling.doctor.model import Check, DoctorContext, Finding

ENABLE = "an OpenEMR administrator enables the client: Administration → System → API Clients → Enable"


def _openemr(ctx: DoctorContext) -> bool:
    return ctx.settings.fhir.writeback == "openemr"


class OpenEmrReadToken(Check):
    name = "openemr-read-token"
    about = "OpenEMR grants the backend-services (read) token: the client is registered and enabled"

    def run(self, ctx: DoctorContext) -> list[Finding]:
        if not _openemr(ctx):
            return [self.skip("not an OpenEMR write-back")]
        auth = ctx.client.http.auth
        if auth is None:
            return [self.fail("[fhir] auth is none", 'set [fhir] auth = "smart-backend" with the registered client')]
        try:
            auth.token()
        except TokenRefused as exc:
            fix = ENABLE if exc.error == "invalid_client" else "ask only for scopes `openemr register` printed"
            return [self.fail(f"token refused: {exc.error} {exc.description}", fix)]
        except FhirError as exc:
            return [self.fail(f"token endpoint: {exc}", "check [fhir] base_url")]
        return [self.ok("read token granted")]


class OpenEmrWriteToken(Check):
    name = "openemr-write-token"
    about = "a user-context (write) token is stored and the Standard API accepts it"

    def run(self, ctx: DoctorContext) -> list[Finding]:
        if not _openemr(ctx):
            return [self.skip("not an OpenEMR write-back")]
        from fhir_smartflow.openemr.factory import standard_api

        api = standard_api(ctx.settings, ctx.redis)
        if not api.tokens.has_refresh_token():
            return [self.fail("no refresh token stored", "run `fhir-smartflow openemr authorize`")]
        try:
            api.appointments()
        except OpenEmrError as exc:
            return [self.fail(str(exc), "re-run `fhir-smartflow openemr authorize` (and see the scope named)")]
        ctx.facts["openemr_api"] = api
        return [self.ok(f"write token works (scopes: {api.tokens.granted_scopes() or '-'})")]


class OpenEmrCategory(Check):
    name = "openemr-category"
    about = "patient notes are filed in [openemr] document_category"

    def run(self, ctx: DoctorContext) -> list[Finding]:
        if not _openemr(ctx):
            return [self.skip("not an OpenEMR write-back")]
        category = ctx.settings.openemr.document_category
        last = ctx.redis.get(f"{ctx.settings.redis.key_prefix}openemr:last_document")
        api = ctx.facts.get("openemr_api")
        if not last or api is None:
            return [
                self.warn(
                    "not verified yet: OpenEMR has no API that lists categories, and no note was uploaded yet",
                    f"create the document category {category!r} (a child of 'Categories') in OpenEMR",
                )
            ]
        pid, digest = last.decode().split(":", 1)
        for doc in api.list_documents(pid, category):
            if hashlib.sha256(api.download_document(pid, str(doc["id"]))).hexdigest() == digest:
                return [self.ok(f"the last note is filed under {category!r}")]
        return [
            self.fail(f"the last uploaded note is not listed under {category!r}", f"check the category {category!r}")
        ]


class FlowResourceTypes(Check):
    name = "flow-resource-types"
    about = "the server offers every resource type the enabled flows need"

    def run(self, ctx: DoctorContext) -> list[Finding]:
        capabilities = ctx.facts.get("capabilities") or ctx.client.capabilities()
        served = {str(r.get("type")) for rest in capabilities.get("rest") or [] for r in rest.get("resource") or []}
        if _openemr(ctx):
            served |= {"Appointment", "Task", "Communication", "DocumentReference", "Flag"}  # own API / local store
        needed = ctx.engine.resource_types() - {"Task"}
        forms = [
            f"{flow.id}: {a.name}"
            for flow in ctx.engine.flows.values()
            if flow.enabled
            for a in flow.actions
            if a.type == "send-form" and not a.form_title
        ]
        if forms:
            needed.add("Questionnaire")
        missing = sorted(needed - served)
        if not missing:
            return [self.ok(f"all served: {', '.join(sorted(needed))}")]
        findings = []
        for rtype in missing:
            why = f" (send-form titles: {'; '.join(forms)})" if rtype == "Questionnaire" else ""
            fix = (
                'give the action a form_title = "..."' if rtype == "Questionnaire" else "disable the flows that need it"
            )
            findings.append(self.warn(f"the flows need {rtype}, which this server does not offer{why}", fix))
        return findings
