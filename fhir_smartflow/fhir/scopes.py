"""SMART scopes: parsed, compared, and written in the syntax the server knows.

SMART App Launch 2 writes a resource scope as ``context/Type.letters``, the letters an in-order subset of
``cruds`` (create, read, update, delete, search), optionally narrowed by ``?param=value``. SMART 1 had
``.read``, ``.write`` and ``.*``; version 2 reads them as ``.rs``, ``.cud`` and ``.cruds``
(scopes-and-launch-context, "Scopes for requesting clinical data"). Servers differ: Medplum and current
OpenEMR accept version 2, OpenEMR 7.0.0 development builds only ``.read`` / ``.write``.

* ``ResourceScope`` / ``Scopes``: a scope string parsed (either syntax); other scopes (``openid``,
  ``offline_access``, ``api:fhir``, ``launch/patient``, ``system/*.$export``) are kept verbatim.
* ``Scopes.render(syntax)``: the string in SMART v2 or v1 form. v1 has no letter for create alone, so
  ``.cu`` becomes ``.write`` (which also allows delete) — the narrowest v1 can say.
* ``Scopes.missing(needed)``: what of ``needed`` a granted set does not cover (a 403's likely cause,
  doctor's granted-vs-needed comparison).
* ``request_scopes`` / ``forbidden_hint``: the scopes a REST request needs, and what a 403 probably lacks.
* ``offered(needed, supported)``: the needed scopes a server that enumerates its scopes offers, and the rest.
* ``choose_scope_syntax(configuration, override)``: v2 when the server advertises it, v1 when it shows
  only v1 forms, the override (``[fhir] scope_syntax``) when set.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from fhir_smartflow.refs import RESOURCE_TYPE_RE

if TYPE_CHECKING:  # a type only: smart.py builds on oauth.py, which uses these scopes
    from fhir_smartflow.fhir.smart import SmartConfiguration

INTERACTIONS = "cruds"  # SMART v2 letters, in their required order
V1_INTERACTIONS: dict[str, frozenset[str]] = {
    "read": frozenset("rs"),
    "write": frozenset("cud"),
    "*": frozenset(INTERACTIONS),
}
CONTEXTS = ("patient", "user", "system")

_RESOURCE_SCOPE = re.compile(
    r"^(?P<context>patient|user|system)/(?P<type>\*|[A-Za-z][A-Za-z0-9_]*)\.(?P<perm>[a-z*]+)(?:\?(?P<query>.+))?$"
)
_V2_LETTERS = re.compile(r"^c?r?u?d?s?$")


class ScopeSyntax(StrEnum):
    V1 = "v1"
    V2 = "v2"


@dataclass(frozen=True)
class ResourceScope:
    """One resource scope: ``context/resource_type`` with a set of ``cruds`` letters (and a v2 query)."""

    context: str
    resource_type: str  # a type name, or "*"
    interactions: frozenset[str]
    query: str = ""
    syntax: ScopeSyntax = field(default=ScopeSyntax.V2, compare=False)  # how it was written

    @property
    def letters(self) -> str:
        return "".join(ch for ch in INTERACTIONS if ch in self.interactions)

    def v2(self) -> str:
        return f"{self.context}/{self.resource_type}.{self.letters}" + (f"?{self.query}" if self.query else "")

    def v1(self) -> tuple[str, ...]:
        """The v1 scopes allowing at least these interactions: ``.write`` for c/u/d, ``.read`` for r/s.
        ``.write`` comes first: Medplum applies only the first scope naming a type, and a read-only one
        first would make the type read-only there."""
        if self.query:
            raise ValueError(f"{self.v2()}: SMART v1 has no search-parameter constraints")
        base = f"{self.context}/{self.resource_type}"
        found = []
        if self.interactions & V1_INTERACTIONS["write"]:
            found.append(f"{base}.write")
        if self.interactions & V1_INTERACTIONS["read"]:
            found.append(f"{base}.read")
        return tuple(found)

    def render(self, syntax: ScopeSyntax) -> tuple[str, ...]:
        return self.v1() if syntax is ScopeSyntax.V1 else (self.v2(),)

    def applies_to(self, context: str, resource_type: str) -> bool:
        """Whether this grant speaks for ``context/resource_type`` (a query-narrowed grant never does:
        it covers only some resources of the type)."""
        return not self.query and self.context == context and self.resource_type in ("*", resource_type)


def parse_scope(text: str) -> ResourceScope | None:
    """A resource scope in either syntax; None for any other scope (``openid``, ``api:fhir``, an
    operation scope such as ``system/*.$export``, or letters out of ``cruds`` order)."""
    match = _RESOURCE_SCOPE.match(text)
    if match is None:
        return None
    perm = match["perm"]
    if perm in V1_INTERACTIONS:
        interactions, syntax = V1_INTERACTIONS[perm], ScopeSyntax.V1
    elif _V2_LETTERS.match(perm):
        interactions, syntax = frozenset(perm), ScopeSyntax.V2
    else:
        return None
    return ResourceScope(match["context"], match["type"], interactions, match["query"] or "", syntax)


@dataclass(frozen=True)
class Scopes:
    """A set of scopes: resource scopes (parsed) and every other scope, verbatim, in the order given."""

    resources: tuple[ResourceScope, ...] = ()
    other: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Scopes:
        resources: list[ResourceScope] = []
        other: list[str] = []
        for token in text.split():
            scope = parse_scope(token)
            if scope is not None:
                resources.append(scope)
            elif token not in other:
                other.append(token)
        return cls(tuple(resources), tuple(other))

    def merged(self) -> Scopes:
        """One scope per (context, type, query), letters united; sorted by context and type."""
        united: dict[tuple[str, str, str], set[str]] = {}
        for scope in self.resources:
            united.setdefault((scope.context, scope.resource_type, scope.query), set()).update(scope.interactions)
        resources = tuple(
            ResourceScope(context, rtype, frozenset(letters), query)
            for (context, rtype, query), letters in sorted(united.items(), key=_order)
            if letters
        )
        return Scopes(resources, self.other)

    def render(self, syntax: ScopeSyntax) -> str:
        """The scope string in ``syntax`` (resource scopes first, then the others as given)."""
        parts: list[str] = []
        for scope in self.merged().resources:
            parts.extend(s for s in scope.render(syntax) if s not in parts)
        parts.extend(self.other)
        return " ".join(parts)

    def allows(self, context: str, resource_type: str, interaction: str) -> bool:
        return any(s.applies_to(context, resource_type) and interaction in s.interactions for s in self.resources)

    def missing(self, needed: Scopes) -> Scopes:
        """The part of ``needed`` these (granted) scopes do not cover, interaction by interaction; other
        scopes (``openid``, ...) are compared verbatim."""
        lacking = [
            ResourceScope(scope.context, scope.resource_type, frozenset(absent))
            for scope in needed.merged().resources
            if (absent := {i for i in scope.interactions if not self.allows(scope.context, scope.resource_type, i)})
        ]
        return Scopes(tuple(lacking), tuple(s for s in needed.other if s not in self.other)).merged()

    def syntaxes(self) -> set[ScopeSyntax]:
        """The syntaxes these scopes are written in (a server's ``scopes_supported`` tells which it knows)."""
        return {s.syntax for s in self.resources}

    def written_in(self) -> ScopeSyntax:
        """v1 when every resource scope here is written in v1, else v2 (to answer in the grant's terms)."""
        return ScopeSyntax.V1 if self.syntaxes() == {ScopeSyntax.V1} else ScopeSyntax.V2

    def __bool__(self) -> bool:
        return bool(self.resources or self.other)


def _order(item: tuple[tuple[str, str, str], set[str]]) -> tuple[int, str, str]:
    (context, rtype, query), _ = item
    return (CONTEXTS.index(context), rtype if rtype != "*" else "", query)


def choose_scope_syntax(configuration: SmartConfiguration | None, override: str = "auto") -> ScopeSyntax:
    """The scope syntax to request from a server: ``override`` unless "auto"; else v2 when the server
    advertises the ``permission-v2`` capability or lists a v2 scope, v1 when it lists only v1 scopes (or
    advertises only ``permission-v1``), and v2 when it says nothing either way (the current standard)."""
    if override != "auto":
        return ScopeSyntax(override)
    if configuration is None:
        return ScopeSyntax.V2
    capabilities = set(configuration.capabilities)
    if "permission-v2" in capabilities:
        return ScopeSyntax.V2
    listed = Scopes.parse(" ".join(configuration.scopes_supported)).syntaxes()
    if ScopeSyntax.V2 in listed:
        return ScopeSyntax.V2
    if ScopeSyntax.V1 in listed or "permission-v1" in capabilities:
        return ScopeSyntax.V1
    return ScopeSyntax.V2


def offered(needed: Scopes, supported: Scopes) -> tuple[Scopes, Scopes]:
    """``needed`` split into (what the server offers, what it does not), when its ``scopes_supported``
    enumerates resource scopes of that context (OpenEMR lists each one and refuses any other with
    ``invalid_scope``); a server listing none for the context, or a wildcard, offers everything (Medplum
    lists only ``patient/*.rs`` and ``user/*.cruds`` and grants ``system/`` scopes)."""
    kept: list[ResourceScope] = []
    dropped: list[ResourceScope] = []
    for scope in needed.merged().resources:
        listed = [s for s in supported.resources if s.context == scope.context and not s.query]
        if not listed or any(s.resource_type == "*" for s in listed):
            kept.append(scope)
            continue
        allowed = frozenset(i for i in scope.interactions if supported.allows(scope.context, scope.resource_type, i))
        if allowed:
            kept.append(ResourceScope(scope.context, scope.resource_type, allowed))
        if allowed != scope.interactions:
            dropped.append(ResourceScope(scope.context, scope.resource_type, scope.interactions - allowed))
    return Scopes(tuple(kept), needed.other), Scopes(tuple(dropped))


def request_scopes(method: str, path: str, body: Mapping[str, Any] | None = None, context: str = "system") -> Scopes:
    """The scopes a REST request needs (SMART's letter per interaction): ``path`` is relative to the base
    (``Task``, ``Task/1``, ``Task/1/_history/2``, ``Task/_search``, "" for a transaction, whose entries
    count one by one). Requests SMART gives no letter (operations, ``metadata``) need nothing here."""
    if not path:
        if method != "POST" or not body:
            return Scopes()
        entries = [e.get("request") or {} for e in body.get("entry") or [] if isinstance(e, Mapping)]
        found = [
            request_scopes(str(r.get("method") or ""), str(r.get("url") or "").split("?")[0].strip("/"), None, context)
            for r in entries
        ]
        return Scopes(tuple(s for scopes in found for s in scopes.resources)).merged()
    parts = path.split("/")
    rtype = parts[0]
    if not RESOURCE_TYPE_RE.match(rtype) or any(p.startswith("$") for p in parts):
        return Scopes()
    letter = _interaction(method, parts)
    return Scopes((ResourceScope(context, rtype, frozenset(letter)),)) if letter else Scopes()


def _interaction(method: str, parts: list[str]) -> str:
    instance = len(parts) >= 2 and parts[1] not in ("_search", "_history")
    if method in ("GET", "HEAD"):
        return "r" if instance else "s"
    if method == "POST":
        return "s" if parts[1:2] == ["_search"] else ("" if instance else "c")
    if method in ("PUT", "PATCH"):
        return "u"
    if method == "DELETE":
        return "d"
    return ""


def grant_context(granted: str) -> str:
    """The context (``system``, ``user``, ``patient``) of a grant's resource scopes when they share one;
    ``system`` otherwise (the service's own tokens)."""
    contexts = {s.context for s in Scopes.parse(granted).resources}
    return contexts.pop() if len(contexts) == 1 else "system"


def forbidden_hint(granted: str, needed: Scopes) -> str:
    """What to say about a 403: which of ``needed`` the ``granted`` scope string probably lacks (in the
    syntax of the grant), or that the scopes allow the request and the server's own policy refused it."""
    if not needed:
        return ""
    if not granted:
        return f"; the token's scopes are not known here — this request needs {needed.render(ScopeSyntax.V2)}"
    grant = Scopes.parse(granted)
    syntax = grant.written_in()
    lacking = grant.missing(needed)
    if lacking:
        return f'; the token was granted "{granted}" — probably missing {lacking.render(syntax)}'
    split = sorted({s.resource_type for s in needed.resources if _named_twice(grant, s.context, s.resource_type)})
    note = (
        f"; the grant names {', '.join(split)} in more than one scope, and some servers (Medplum) apply only "
        "the first: ask for one scope per type"
        if split
        else ""
    )
    return (
        f'; the token was granted "{granted}", which covers {needed.render(syntax)}: the server\'s own access '
        f"rules (its policy for this client) refused it{note}"
    )


def _named_twice(grant: Scopes, context: str, resource_type: str) -> bool:
    return sum(1 for s in grant.resources if s.context == context and s.resource_type == resource_type) > 1
