"""Which OAuth scopes the OpenEMR bridge asks for, written the way the server knows them.

OpenEMR 7.0.0 development builds know SMART v1 scopes only (``.read`` / ``.write``); current releases know
v1 and v2 (docs/openemr.md). The server says which in ``.well-known/smart-configuration``: its
``scopes_supported`` (one list nested in another) lists the FHIR scopes it knows, so each read scope is
taken in the first form the server lists (v2, else v1) and dropped when it lists neither. The Standard API
scopes are not in that list; they follow the syntax ``choose_scope_syntax`` picks (fhir/scopes.py).

* read (``client_credentials``): ``system/<Type>`` read + search for the types polled and read as context;
* write (authorization code): the Standard API routes the mirror uses — ``user/patient`` read (the pid of
  a patient uuid), ``user/message`` create, ``user/document`` create, read and search (the lost-upload
  check), ``user/appointment`` read (appointment statuses) — and ``openid offline_access api:oemr
  api:fhir`` (a refresh token; the Standard API; OpenEMR 7.0.0-dev refuses ``openid`` without
  ``api:fhir``).
"""

from __future__ import annotations

from collections.abc import Iterable

from fhir_smartflow.fhir.scopes import ResourceScope, Scopes, ScopeSyntax, choose_scope_syntax
from fhir_smartflow.fhir.smart import SmartConfiguration

USER_RESOURCES = Scopes.parse("user/patient.rs user/message.c user/document.crs user/appointment.rs")
USER_OTHER = ("openid", "offline_access", "api:oemr", "api:fhir")
# The scope of each Standard API call (v2 spelling; rendered in the granted syntax when one is missing).
ROUTE_SCOPES = {
    "patient": "user/patient.rs",
    "message": "user/message.c",
    "document.c": "user/document.c",
    "document.rs": "user/document.rs",
    "appointment": "user/appointment.rs",
}


def user_scopes(configuration: SmartConfiguration | None, override: str = "auto") -> str:
    """The scope string of `openemr authorize` (and of the registration's user part)."""
    syntax = choose_scope_syntax(configuration)
    if override != "auto":
        return override
    return Scopes(USER_RESOURCES.resources, USER_OTHER).render(syntax)


def read_scopes(configuration: SmartConfiguration | None, types: Iterable[str]) -> str:
    """``system/<Type>`` read + search for each type, in the form the server lists (v2 first, then v1)."""
    listed = set(configuration.scopes_supported) if configuration else set()
    syntax = choose_scope_syntax(configuration)
    chosen: list[str] = []
    for rtype in sorted(set(types)):
        scope = ResourceScope("system", rtype, frozenset("rs"))
        forms = [scope.v2(), *scope.v1()]
        if listed:
            found = next((f for f in forms if f in listed), None)
            if found:
                chosen.append(found)
        else:
            chosen.extend(scope.render(syntax))
    return " ".join(chosen)


def describe_missing(needed: str, granted: str) -> str:
    """The scope a refused call most likely lacks, written like the granted ones (v1 when they are v1)."""
    have = Scopes.parse(granted)
    lacking = have.missing(Scopes.parse(needed))
    if not lacking:
        return needed
    syntax = ScopeSyntax.V1 if ScopeSyntax.V1 in have.syntaxes() and ScopeSyntax.V2 not in have.syntaxes() else None
    return lacking.render(syntax or ScopeSyntax.V2)
