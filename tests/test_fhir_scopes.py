"""SMART scopes: parsing both syntaxes, writing v2 or v1, what a grant lacks, and which syntax a server knows."""

from __future__ import annotations

import pytest

from fhir_smartflow.fhir.scopes import (
    ResourceScope,
    Scopes,
    ScopeSyntax,
    choose_scope_syntax,
    forbidden_hint,
    grant_context,
    offered,
    parse_scope,
    request_scopes,
)
from fhir_smartflow.fhir.smart import SmartConfiguration

TOKEN_URL = "https://ehr.example.org/oauth2/token"


def test_v2_and_v1_scopes_parse_to_the_same_interactions() -> None:
    assert parse_scope("system/Task.cu") == ResourceScope("system", "Task", frozenset("cu"))
    assert parse_scope("system/*.rs") == parse_scope("system/*.read")
    assert parse_scope("user/Patient.write").interactions == frozenset("cud")  # v1 write = v2 cud
    assert parse_scope("patient/Observation.*").interactions == frozenset("cruds")
    assert parse_scope("system/Observation.rs?category=laboratory").query == "category=laboratory"
    assert parse_scope("system/Task.cu").syntax is ScopeSyntax.V2
    assert parse_scope("system/Task.write").syntax is ScopeSyntax.V1
    # Not resource scopes: identity, OpenEMR's API scopes, operations, letters out of order.
    for other in ("openid", "offline_access", "api:fhir", "launch/patient", "system/*.$export", "user/Task.dus"):
        assert parse_scope(other) is None, other


def test_rendering_in_v2_and_v1() -> None:
    scopes = Scopes.parse("system/Task.cu system/Task.rs system/Patient.rs system/Provenance.c openid")
    assert scopes.render(ScopeSyntax.V2) == "system/Patient.rs system/Provenance.c system/Task.crus openid"
    assert scopes.render(ScopeSyntax.V1) == (
        "system/Patient.read system/Provenance.write system/Task.write system/Task.read openid"
    )
    # v1 scopes given come out as v2 and back.
    assert Scopes.parse("user/Patient.read user/Task.write").render(ScopeSyntax.V2) == "user/Patient.rs user/Task.cud"
    with pytest.raises(ValueError, match="no search-parameter constraints"):
        Scopes.parse("system/Observation.rs?category=laboratory").render(ScopeSyntax.V1)


def test_missing_compares_interaction_by_interaction_across_syntaxes_and_wildcards() -> None:
    needed = Scopes.parse("system/Task.crus system/Provenance.c system/Patient.rs system/Flag.c")
    granted = Scopes.parse("system/*.rs system/Task.cu")
    assert granted.missing(needed).render(ScopeSyntax.V2) == "system/Flag.c system/Provenance.c"
    v1_granted = Scopes.parse("system/*.read system/Task.write system/Provenance.write")
    assert v1_granted.missing(needed).render(ScopeSyntax.V2) == "system/Flag.c"
    # Another context does not count; a query-narrowed grant does not cover the whole type.
    assert Scopes.parse("user/*.cruds").missing(Scopes.parse("system/Flag.c")).render(ScopeSyntax.V2) == (
        "system/Flag.c"
    )
    narrowed = Scopes.parse("system/Flag.c?status=active")
    assert narrowed.missing(Scopes.parse("system/Flag.c")).render(ScopeSyntax.V2) == "system/Flag.c"
    assert not Scopes.parse("system/*.cruds").missing(needed)


def _config(scopes: object = (), capabilities: tuple[str, ...] = ()) -> SmartConfiguration:
    return SmartConfiguration(TOKEN_URL, scopes_supported=tuple(scopes), capabilities=capabilities)


def test_scope_syntax_follows_what_the_server_advertises() -> None:
    # Medplum: permission-v1 and permission-v2 capabilities, v2 scopes listed.
    medplum = _config(("patient/*.rs", "user/*.cruds", "openid"), ("permission-v1", "permission-v2"))
    assert choose_scope_syntax(medplum) is ScopeSyntax.V2
    # OpenEMR 7.0.0-dev: only .read / .write scopes in scopes_supported, no permission capability.
    openemr_dev = _config(("openid", "api:fhir", "system/Patient.read", "user/Appointment.write"))
    assert choose_scope_syntax(openemr_dev) is ScopeSyntax.V1
    assert choose_scope_syntax(_config(capabilities=("permission-v1",))) is ScopeSyntax.V1
    assert choose_scope_syntax(_config(("system/Patient.read", "system/Patient.rs"))) is ScopeSyntax.V2
    assert choose_scope_syntax(_config(capabilities=("permission-v2",))) is ScopeSyntax.V2
    # Nothing said either way, or no configuration at all: the current standard.
    assert choose_scope_syntax(_config(("openid",))) is ScopeSyntax.V2
    assert choose_scope_syntax(None) is ScopeSyntax.V2
    # The override wins.
    assert choose_scope_syntax(medplum, "v1") is ScopeSyntax.V1
    assert choose_scope_syntax(openemr_dev, "v2") is ScopeSyntax.V2


def test_the_scopes_a_request_needs() -> None:
    def needs(method: str, path: str, body: dict | None = None, context: str = "system") -> str:
        return request_scopes(method, path, body, context).render(ScopeSyntax.V2)

    assert needs("GET", "Patient/1") == "system/Patient.r"
    assert needs("GET", "Patient/1/_history/2") == "system/Patient.r"
    assert needs("GET", "Task") == "system/Task.s"
    assert needs("POST", "Task/_search") == "system/Task.s"
    assert needs("POST", "Provenance") == "system/Provenance.c"
    assert needs("PUT", "Subscription/s1") == "system/Subscription.u"
    assert needs("DELETE", "Task/1", context="user") == "user/Task.d"
    assert needs("GET", "metadata") == needs("POST", "Subscription/s1/$events") == ""
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"request": {"method": "POST", "url": "Task", "ifNoneExist": "identifier=x|y"}},
            {"request": {"method": "POST", "url": "Provenance"}},
            {"request": {"method": "PUT", "url": "Task/1"}},
        ],
    }
    assert needs("POST", "", bundle) == "system/Provenance.c system/Task.cu"


def test_what_a_403_says_about_scopes() -> None:
    needed = Scopes.parse("system/Provenance.c")
    hint = forbidden_hint("system/*.rs system/Task.cu", needed)
    assert hint == '; the token was granted "system/*.rs system/Task.cu" — probably missing system/Provenance.c'
    # A v1 grant gets the answer in v1.
    assert forbidden_hint("system/*.read", needed).endswith("probably missing system/Provenance.write")
    # The scopes allow it: the server's own policy refused (Medplum AccessPolicy, OpenEMR ACL).
    assert "access rules" in forbidden_hint("system/*.cruds", needed)
    # Medplum applies only the first scope naming a type: a read-only one first makes the type read-only.
    split = forbidden_hint("system/Task.rs system/Task.cu", Scopes.parse("system/Task.c"))
    assert "names Task in more than one scope" in split
    # A static token: the scopes are not known here, say what the request needs.
    assert (
        forbidden_hint("", needed) == "; the token's scopes are not known here — this request needs system/Provenance.c"
    )
    assert forbidden_hint("system/*.rs", Scopes()) == ""
    assert grant_context("user/Patient.rs user/Task.cu openid") == "user"
    assert grant_context("") == grant_context("user/Patient.rs system/Task.cu") == "system"


def test_what_a_server_that_lists_its_scopes_offers() -> None:
    needed = Scopes.parse("system/Patient.rs system/Appointment.rs system/Task.crus")
    # OpenEMR 7.0.0-dev: each scope listed, no Appointment, Task read-only for system clients.
    openemr = Scopes.parse("openid api:fhir system/Patient.read system/Task.read user/Appointment.read")
    kept, dropped = offered(needed, openemr)
    assert kept.render(ScopeSyntax.V1) == "system/Patient.read system/Task.read"
    assert dropped.render(ScopeSyntax.V2) == "system/Appointment.rs system/Task.cu"
    # Medplum lists no system/ scopes at all, and grants them: everything is offered.
    medplum = Scopes.parse("patient/*.rs user/*.cruds openid")
    assert offered(needed, medplum) == (needed.merged(), Scopes())
    assert offered(needed, Scopes.parse("system/*.read system/Patient.read"))[1] == Scopes()
