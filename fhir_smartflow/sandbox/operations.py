"""The FHIR interactions of the sandbox, independent of HTTP (used by the routes and by Bundles)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fhir_smartflow.sandbox import search
from fhir_smartflow.sandbox.errors import BadRequest, PreconditionFailed, Unprocessable, outcome
from fhir_smartflow.sandbox.profiles import DEFAULT_PROFILE, PROFILES, Profile
from fhir_smartflow.sandbox.rules import Resolver, WriteRules
from fhir_smartflow.sandbox.secrets import keep_secrets, masked
from fhir_smartflow.sandbox.store import SearchPage, Store
from fhir_smartflow.sandbox.subscriptions import parse_subscription
from fhir_smartflow.sandbox.validation import check_type, validate_resource


@dataclass
class Result:
    """One interaction's answer: HTTP status, body (resource / Bundle / OperationOutcome) and the stored version."""

    status: int
    body: dict[str, Any] | None
    stored: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


def version_headers(base_url: str, resource: dict[str, Any]) -> dict[str, str]:
    meta = resource.get("meta") or {}
    version = meta.get("versionId", "1")
    return {
        "Location": f"{base_url}/{resource['resourceType']}/{resource['id']}/_history/{version}",
        "ETag": f'W/"{version}"',
        "Last-Modified": meta.get("lastUpdated", ""),
    }


def parse_etag(value: str | None) -> int | None:
    if not value:
        return None
    text = value.strip().removeprefix("W/").strip('"')
    if not text.isdigit():
        raise BadRequest(f'If-Match must be a version ETag like W/"3", got {value!r}')
    return int(text)


def prepare_write(
    resource: Any, resource_type: str | None = None, profile: Profile = PROFILES[DEFAULT_PROFILE]
) -> dict[str, Any]:
    """Validate a client's resource. Subscriptions are also checked for what the sandbox can serve; their
    status follows the profile (``Profile.activation``)."""
    validate_resource(resource, resource_type)
    assert isinstance(resource, dict)
    if resource["resourceType"] != "Subscription":
        return resource
    try:
        parse_subscription({**resource, "id": resource.get("id") or "new"})
    except Unprocessable as exc:
        channel_problem = (exc.expression or "").startswith("Subscription.channel")
        if profile.activation != "server" or not channel_problem or resource.get("status") != "requested":
            raise  # criteria it cannot evaluate are refused at write (HAPI too)
        # A server that activates Subscriptions itself sets one it cannot activate to `error`, the
        # reason in `reason` (as HAPI does) and in `error`.
        return {**resource, "status": "error", "error": exc.message, "reason": exc.message}
    if profile.activation == "sandbox" and resource.get("status") != "off":
        resource = {**resource, "status": "requested"}
        resource.pop("error", None)
    return resource


class Interactions:
    def __init__(self, store: Store, rules: WriteRules | None = None) -> None:
        self.store = store
        self.rules = rules or WriteRules(store, PROFILES[DEFAULT_PROFILE])
        self.profile = self.rules.profile

    def _checked(
        self,
        resource: dict[str, Any],
        resource_type: str,
        known: frozenset[str],
        resolve: Resolver | None,
        current_id: str | None = None,
    ) -> dict[str, Any]:
        """The profile's write rules, under the store lock (what they look up cannot change meanwhile)."""
        if current_id is not None and resource_type == "Subscription":
            resource = self._keep_secrets(resource, current_id)
        self.rules.check_references(resource, known, resolve)
        return resource

    def _keep_secrets(self, resource: dict[str, Any], resource_id: str) -> dict[str, Any]:
        """A client writing back what it read (masked) keeps the stored secrets."""
        if not self.store.exists("Subscription", resource_id):
            return resource
        return keep_secrets(resource, self.store.read("Subscription", resource_id))

    def _shown(self, resource: dict[str, Any]) -> dict[str, Any]:
        if resource.get("resourceType") == "Subscription":
            return masked(resource)
        return resource

    def _stored(self, status: int, stored: dict[str, Any], base_url: str) -> Result:
        shown = self._shown(stored)
        return Result(status, shown, shown, version_headers(base_url, stored))

    # ---- writes --------------------------------------------------------------------------------

    def create(
        self,
        resource_type: str,
        resource: Any,
        if_none_exist: str | None,
        base_url: str,
        resource_id: str | None = None,
        *,
        known: frozenset[str] = frozenset(),
        resolve: Resolver | None = None,
    ) -> Result:
        check_type(resource_type)
        resource = prepare_write(resource, resource_type, self.profile)
        with self.store.transaction():  # the lock is held: two conditional creates cannot both create
            resource = self._checked(resource, resource_type, known, resolve)
            if if_none_exist:
                existing = self.conditional_matches(resource_type, if_none_exist, "If-None-Exist")
                if len(existing) == 1:
                    return self._stored(200, existing[0], base_url)
            stored = self.store.create(resource, resource_id=resource_id, validate=False)
        return self._stored(201, stored, base_url)

    def update(
        self,
        resource_type: str,
        resource_id: str,
        resource: Any,
        if_match: int | None,
        base_url: str,
        *,
        known: frozenset[str] = frozenset(),
        resolve: Resolver | None = None,
    ) -> Result:
        check_type(resource_type)
        resource = prepare_write(resource, resource_type, self.profile)
        with self.store.transaction():
            resource = self._checked(resource, resource_type, known, resolve, resource_id)
            self.rules.check_new_id(resource_type, resource_id)
            stored, created = self.store.update(resource_type, resource_id, resource, if_match=if_match, validate=False)
        return self._stored(201 if created else 200, stored, base_url)

    def conditional_update(
        self,
        resource_type: str,
        query: str,
        resource: Any,
        base_url: str,
        *,
        known: frozenset[str] = frozenset(),
        resolve: Resolver | None = None,
    ) -> Result:
        check_type(resource_type)
        resource = prepare_write(resource, resource_type, self.profile)
        with self.store.transaction():
            existing = self.conditional_matches(resource_type, query, "conditional update")
            target = existing[0]["id"] if existing else None
            resource = self._checked(resource, resource_type, known, resolve, target)
            body_id = resource.get("id")
            if target is not None:
                if body_id and body_id != target:
                    raise BadRequest(f"resource id {body_id!r} does not match the matched {resource_type}/{target}")
                stored, created = self.store.update(resource_type, target, {**resource, "id": target}, validate=False)
            elif body_id:
                self.rules.check_new_id(resource_type, body_id)
                stored, created = self.store.update(resource_type, body_id, resource, validate=False)
            else:
                stored, created = self.store.create(resource, validate=False), True
        return self._stored(201 if created else 200, stored, base_url)

    def delete(self, resource_type: str, resource_id: str) -> Result:
        deleted = self.store.delete(resource_type, resource_id)
        text = f"{resource_type}/{resource_id} deleted" if deleted else f"{resource_type}/{resource_id} was not live"
        return Result(200, outcome("information", "informational", text))

    def conditional_matches(self, resource_type: str, query: str, what: str) -> list[dict[str, Any]]:
        params = parse_qsl(query.split("?", 1)[-1] if "?" in query else query, keep_blank_values=True)
        if not params:
            raise BadRequest(f"{what}: no search parameters given")
        page = self.store.search(resource_type, [*params, ("_count", "2")])
        if page.query.ignored:
            # never treat a condition we cannot evaluate as "matches everything"
            raise BadRequest(f"{what}: unsupported search parameters: {', '.join(page.query.ignored)}")
        if (page.total or 0) > 1:
            raise PreconditionFailed(f"{what}: {page.total} {resource_type} resources match {query!r}")
        return page.resources

    # ---- reads ---------------------------------------------------------------------------------

    def read(self, resource_type: str, resource_id: str, base_url: str) -> Result:
        return self._stored(200, self.store.read(resource_type, resource_id), base_url)

    def vread(self, resource_type: str, resource_id: str, version: str, base_url: str) -> Result:
        if not version.isdigit():
            raise BadRequest(f"version must be a number, got {version!r}")
        return self._stored(200, self.store.vread(resource_type, resource_id, int(version)), base_url)

    def history(self, resource_type: str, resource_id: str, base_url: str) -> Result:
        entries = []
        for version, last_updated, interaction, body in self.store.history(resource_type, resource_id):
            method = {"create": "POST", "update": "PUT", "delete": "DELETE"}[interaction]
            entry: dict[str, Any] = {
                "fullUrl": f"{base_url}/{resource_type}/{resource_id}",
                "request": {
                    "method": method,
                    "url": resource_type if method == "POST" else f"{resource_type}/{resource_id}",
                },
                "response": {
                    "status": {"POST": "201", "PUT": "200", "DELETE": "204"}[method],
                    "lastModified": last_updated,
                    "etag": f'W/"{version}"',
                },
            }
            if body is not None:
                entry["resource"] = self._shown(body)
            entries.append(entry)
        bundle = {"resourceType": "Bundle", "type": "history", "total": len(entries), "entry": entries}
        return Result(200, bundle)

    def search(self, resource_type: str, params: list[tuple[str, str]], base_url: str, strict: bool) -> Result:
        page = self.store.search(resource_type, params)
        if page.query.ignored and strict:
            raise BadRequest(f"unknown or unsupported search parameters: {', '.join(page.query.ignored)}")
        if resource_type == "Subscription":
            page = SearchPage([self._shown(r) for r in page.resources], page.total, page.query)
        return Result(200, searchset(resource_type, params, page, base_url))


def searchset(resource_type: str, params: list[tuple[str, str]], page: SearchPage, base_url: str) -> dict[str, Any]:
    query = page.query
    kept = [(k, v) for k, v in params if k != "_page"]
    self_url = f"{base_url}/{resource_type}" + (f"?{urlencode(kept)}" if kept else "")
    links = [{"relation": "self", "url": self_url}]
    if page.total is not None:
        more = query.offset + len(page.resources) < page.total
    else:  # no count asked for: a full page may have a successor
        more = len(page.resources) == query.count
    if more and not query.summary_count and query.count > 0:
        token = search.encode_page(query.offset + query.count)
        links.append({"relation": "next", "url": f"{base_url}/{resource_type}?{urlencode([*kept, ('_page', token)])}"})
    entries: list[dict[str, Any]] = [
        {"fullUrl": f"{base_url}/{resource_type}/{r['id']}", "resource": r, "search": {"mode": "match"}}
        for r in page.resources
    ]
    if query.ignored:
        entries.append(
            {
                "resource": outcome(
                    "warning", "not-supported", f"search parameters ignored: {', '.join(query.ignored)}"
                ),
                "search": {"mode": "outcome"},
            }
        )
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "link": links}
    if page.total is not None:
        bundle["total"] = page.total
    if entries:
        bundle["entry"] = entries
    return bundle
