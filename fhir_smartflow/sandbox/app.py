"""The sandbox FHIR store as a Flask app (mounted by `serve` at /sandbox/fhir, or run alone).

Routes are relative (``/<type>``); absolute URLs come from the request's script root, so the same app
works mounted under a prefix (werkzeug DispatcherMiddleware) or at the root of its own server.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any
from urllib.parse import parse_qsl

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from fhir_smartflow.config import Settings
from fhir_smartflow.sandbox import cds_client, smart, smart_authorize
from fhir_smartflow.sandbox.bundles import BundleProcessor
from fhir_smartflow.sandbox.capability import capability_statement
from fhir_smartflow.sandbox.errors import BadRequest, SandboxError, UnsupportedMediaType, error_outcome, outcome
from fhir_smartflow.sandbox.faults import FaultInjector, FaultPlan
from fhir_smartflow.sandbox.notifier import Notifier
from fhir_smartflow.sandbox.operations import Interactions, Result, parse_etag
from fhir_smartflow.sandbox.profiles import DEFAULT_PROFILE, PROFILES, Profile, profile_named
from fhir_smartflow.sandbox.rules import WriteRules
from fhir_smartflow.sandbox.smart import SmartAuth
from fhir_smartflow.sandbox.smart_authorize import SmartAuthorization
from fhir_smartflow.sandbox.store import Store
from fhir_smartflow.sandbox.topic_operations import TopicOperations, operation_parameters

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
JSON_TYPES = frozenset({"application/fhir+json", "application/json", "application/json+fhir"})
MAX_BODY_BYTES = 16 * 1024 * 1024


@dataclass
class SandboxState:
    """What the app holds; reachable as ``app.extensions["sandbox"]`` (tests and `serve` use it)."""

    store: Store
    notifier: Notifier
    faults: FaultInjector | None
    base_url: str | None
    profile: Profile = PROFILES[DEFAULT_PROFILE]
    auth: SmartAuth | None = None  # the token endpoint and scope checks (strict profiles with clients)
    authorization: SmartAuthorization | None = None  # SMART App Launch ([sandbox.apps] and [sandbox.users])

    def close(self) -> None:
        self.notifier.stop()


def _software_version() -> str:
    try:
        return package_version("fhir-smartflow")
    except PackageNotFoundError:  # pragma: no cover - bare checkout
        return "0"


def _fhir(body: dict[str, Any] | None, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    text = "" if body is None else json.dumps(body)
    response = Response(text, status=status, mimetype=FHIR_JSON)
    for name, value in (headers or {}).items():
        if value:
            response.headers[name] = value
    return response


def _json_body() -> Any:
    mimetype = (request.mimetype or "").lower()
    if mimetype not in JSON_TYPES:
        raise UnsupportedMediaType(
            f"Content-Type must be application/fhir+json or application/json, got {mimetype or 'none'!r}"
        )
    try:
        return json.loads(request.get_data(cache=False) or b"null")
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None


def _prefer(name: str) -> str | None:
    for part in request.headers.get("Prefer", "").split(";"):
        key, _, value = part.strip().partition("=")
        if key.strip().lower() == name:
            return value.strip().strip('"')
    return None


def create_sandbox_app(
    settings: Settings,
    store: Store | None = None,
    *,
    base_url: str | None = None,
    faults: bool | None = None,
    start_notifier: bool = True,
    profile: str | None = None,
) -> Flask:
    """The sandbox app. ``base_url``: the absolute URL it writes into links (default: ``[sandbox]
    public_base_url``, else taken from each request); ``faults``: enable ``/$faults`` (default:
    ``settings.sandbox.faults``); ``profile``: the server behaviours (default: ``[sandbox] profile``)."""
    chosen = profile_named(profile or settings.sandbox.profile)
    auth = (
        SmartAuth.from_config(settings.sandbox.clients) if chosen.enforce_scopes and settings.sandbox.clients else None
    )
    store = store or Store(settings.sandbox.database)
    base_url = base_url or settings.sandbox.public_base_url
    fixed_base = base_url.rstrip("/") if base_url else None
    initial_base = fixed_base or f"http://{settings.server.host}:{settings.server.port}{settings.sandbox.path}"
    notifier = Notifier(store, initial_base, profile=chosen)
    enable_faults = settings.sandbox.faults if faults is None else faults
    state = SandboxState(store, notifier, FaultInjector() if enable_faults else None, fixed_base, chosen, auth)
    ops = Interactions(store, WriteRules(store, chosen, lambda: state.base_url or notifier.base_url))
    topic_operations = TopicOperations(store, chosen)
    bundles = BundleProcessor(ops, resources_by_default=chosen.transaction_resources_by_default)

    app = Flask("fhir_smartflow.sandbox")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.extensions["sandbox"] = state

    def base() -> str:
        if state.base_url:
            return state.base_url
        learned = request.host_url.rstrip("/") + request.script_root
        notifier.base_url = learned  # notifications carry the URL clients actually reach us at
        return learned

    def answer(result: Result) -> Response:
        returned = _prefer("return")
        if result.stored is not None and returned == "minimal":
            return _fhir(None, result.status, result.headers)
        if result.stored is not None and returned == "OperationOutcome":
            info = outcome("information", "informational", f"{result.stored['resourceType']}/{result.stored['id']}")
            return _fhir(info, result.status, result.headers)
        return _fhir(result.body, result.status, result.headers)

    @app.errorhandler(SandboxError)
    def sandbox_error(exc: SandboxError) -> Response:
        return _fhir(error_outcome(exc), exc.status)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        code = {404: "not-found", 405: "not-supported", 413: "too-costly"}.get(exc.code or 500, "exception")
        return _fhir(outcome("error", code, exc.description or exc.name), exc.code or 500)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("sandbox: unexpected error on %s %s", request.method, request.path)
        return _fhir(outcome("fatal", "exception", f"internal error: {type(exc).__name__}"), 500)

    @app.before_request
    def inject_faults() -> Response | None:
        if state.faults is None or request.path.startswith("/$faults"):
            return None
        fault = state.faults.apply(request.method)
        if fault.status is None:
            return None
        headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
        return _fhir(outcome("error", "transient", f"injected fault: HTTP {fault.status}"), fault.status, headers)

    launches = settings.sandbox.apps and settings.sandbox.users
    authorization = SmartAuthorization.from_config(settings.sandbox.apps, settings.sandbox.users) if launches else None
    state.authorization = authorization
    if authorization is not None:
        smart_authorize.install(app, authorization, base, auth)
    if auth is not None:
        smart.install(app, auth, configuration=authorization is None)
    cds_client.install(app, cds_client.CdsClient(settings, ops), base)  # the sandbox as a CDS Hooks client

    # ---- fault control ---------------------------------------------------------------------------

    @app.route("/$faults", methods=["GET", "POST", "DELETE"])
    def fault_control() -> Response:
        if state.faults is None:
            return _fhir(outcome("error", "forbidden", "fault injection is off (start the sandbox with --faults)"), 403)
        if request.method == "POST":
            state.faults.configure(FaultPlan.from_json(_json_body()))
        elif request.method == "DELETE":
            state.faults.clear()
        return Response(json.dumps(state.faults.state()), mimetype="application/json")

    # ---- FHIR --------------------------------------------------------------------------------------

    @app.get("/metadata")
    def metadata() -> Response:
        token_url = smart.token_url() if state.auth else None
        statement = capability_statement(
            base(),
            _software_version(),
            datetime.now(UTC).isoformat(),
            profile=chosen.name,
            topics=chosen.topic_subscriptions,
            token_url=token_url,
        )
        if state.authorization is not None:
            smart_authorize.add_security(statement, base())
        return _fhir(statement)

    @app.post("/")
    def transaction() -> Response:
        return _fhir(bundles.process(_json_body(), base(), returned=_prefer("return")))

    @app.get("/<rtype>")
    def search_get(rtype: str) -> Response:
        params = list(request.args.items(multi=True))
        return answer(ops.search(rtype, params, base(), strict=_prefer("handling") == "strict"))

    @app.post("/<rtype>/_search")
    def search_post(rtype: str) -> Response:
        if (request.mimetype or "") != "application/x-www-form-urlencoded":
            raise UnsupportedMediaType("POST _search takes application/x-www-form-urlencoded parameters")
        params = list(request.args.items(multi=True)) + parse_qsl(
            request.get_data(as_text=True), keep_blank_values=True
        )
        return answer(ops.search(rtype, params, base(), strict=_prefer("handling") == "strict"))

    @app.post("/<rtype>")
    def create(rtype: str) -> Response:
        return answer(ops.create(rtype, _json_body(), request.headers.get("If-None-Exist"), base()))

    @app.put("/<rtype>")
    def conditional_update(rtype: str) -> Response:
        query = request.query_string.decode()
        if not query:
            raise BadRequest("PUT on a type needs search parameters (conditional update) or an id in the URL")
        return answer(ops.conditional_update(rtype, query, _json_body(), base()))

    @app.get("/<rtype>/<rid>")
    def read(rtype: str, rid: str) -> Response:
        return answer(ops.read(rtype, rid, base()))

    @app.put("/<rtype>/<rid>")
    def update(rtype: str, rid: str) -> Response:
        if_match = parse_etag(request.headers.get("If-Match"))
        return answer(ops.update(rtype, rid, _json_body(), if_match, base()))

    @app.delete("/<rtype>/<rid>")
    def delete(rtype: str, rid: str) -> Response:
        return answer(ops.delete(rtype, rid))

    @app.route("/Subscription/<sid>/$status", methods=["GET", "POST"])
    def subscription_status(sid: str) -> Response:
        return _fhir(topic_operations.status(sid, base()))

    @app.route("/Subscription/<sid>/$events", methods=["GET", "POST"])
    def subscription_events(sid: str) -> Response:
        args = dict(request.args)
        if request.method == "POST" and request.content_length:
            args.update(operation_parameters(_json_body()))
        return _fhir(topic_operations.events(sid, args, base()))

    @app.get("/<rtype>/<rid>/_history")
    def history(rtype: str, rid: str) -> Response:
        return answer(ops.history(rtype, rid, base()))

    @app.get("/<rtype>/<rid>/_history/<vid>")
    def vread(rtype: str, rid: str, vid: str) -> Response:
        return answer(ops.vread(rtype, rid, vid, base()))

    if start_notifier:
        notifier.start()
    return app
