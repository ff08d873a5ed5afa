"""`subscriptions sync` against the activation rules of real servers (the SubscriptionServer protocol is
ours; these fakes follow Medplum's and HAPI FHIR's documented Subscription behaviour).

Medplum evaluates only ``active`` Subscriptions and never activates a ``requested`` one, and signs with the
``subscription-secret`` extension; HAPI FHIR activates ``requested`` ones itself (or sets ``error``)."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any

from fhir.resources.R4B.subscription import Subscription

from fhir_smartflow.config import load_settings
from fhir_smartflow.engine.model import Engine, Flow, MappingRule
from fhir_smartflow.fhir.server_info import base_url_advice, declares_topic_subscriptions, self_urls
from fhir_smartflow.sandbox.capability import capability_statement
from fhir_smartflow.tooling import subscriptions as subs

MEDPLUM_CAPS = {"resourceType": "CapabilityStatement", "software": {"name": "Medplum", "version": "5.0.2"}}
HAPI_CAPS = {"resourceType": "CapabilityStatement", "software": {"name": "HAPI FHIR Server", "version": "8.0.0"}}
CONFIG = """
[[subscriptions]]
id = "medplum"
auth = "hmac"
secret_env = "S_HMAC"
criteria = "Appointment?"
[[subscriptions]]
id = "tasks"
secret_env = "S_HDR"
criteria = "Task?"
"""
ENV = {"S_HMAC": "signing-secret", "S_HDR": "header-secret"}


class StrictServer:
    """Stores Subscriptions with server-assigned ids; ``activates``: requested → active on the next read
    (HAPI), else a requested one stays requested (Medplum). ``mask`` shows secrets as ``****``."""

    def __init__(self, *, activates: bool, mask: bool = False, refuse: str = "") -> None:
        self.activates = activates
        self.mask = mask
        self.refuse = refuse  # criteria HAPI sets to error, with this text
        self.stored: dict[str, dict[str, Any]] = {}
        self.writes: list[dict[str, Any]] = []
        self._ids = itertools.count(1)

    def _shown(self, resource: dict[str, Any]) -> dict[str, Any]:
        shown = copy.deepcopy(resource)
        if self.mask:
            for ext in shown.get("extension") or []:
                if ext["url"] == subs.EXT_SECRET:
                    ext["valueString"] = "****"
            channel = shown["channel"]
            if channel.get("header"):
                channel["header"] = [h.split(":")[0] + ": ****" for h in channel["header"]]
        return shown

    def search(self, resource_type: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return [self._shown(r) for r in self.stored.values()]

    def create(self, resource: dict[str, Any], if_none_exist: str | None = None) -> tuple[dict[str, Any], bool]:
        stored = {**copy.deepcopy(resource), "id": str(next(self._ids)), "meta": {**resource["meta"], "versionId": "1"}}
        self.writes.append(copy.deepcopy(stored))
        self.stored[stored["id"]] = stored
        return self._shown(stored), True

    def update(self, resource: dict[str, Any], condition: str | None = None) -> dict[str, Any]:
        stored = copy.deepcopy(resource)
        self.writes.append(copy.deepcopy(stored))
        self.stored[stored["id"]] = stored
        return self._shown(stored)

    def read(self, reference: str) -> dict[str, Any] | None:
        current = self.stored.get(reference.split("/")[1])
        if current is None:
            return None
        if self.activates and current["status"] == "requested":
            if self.refuse and current["criteria"] == self.refuse:
                current.update(status="error", error="Subscription criteria is not valid: unknown parameter")
            else:
                current["status"] = "active"
        return self._shown(current)


def _resources(tmp_path: Path, **kwargs: Any) -> list[dict[str, Any]]:
    config = tmp_path / "c.toml"
    config.write_text(CONFIG)
    settings = load_settings(config, env={})
    rules = (
        MappingRule("appointment.booked", "Appointment", search="Appointment?"),
        MappingRule("task.completed", "Task", search="Task?"),
    )
    engine = Engine(mappings=rules, flows={"f": Flow("f", "F", "appointment.booked", ())}, templates={})
    return subs.build_subscriptions(engine, settings, "classic", "https://h.example/n", env=ENV, **kwargs)


def _sync(server: StrictServer, resources: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return subs.sync_subscriptions(server, resources, kind=kind, wait_seconds=0, sleep=lambda _s: None)


def test_the_kind_of_server_comes_from_its_software_name_unless_configured() -> None:
    assert subs.server_kind(MEDPLUM_CAPS) == "medplum"
    assert subs.server_kind(HAPI_CAPS) == "hapi"
    assert subs.server_kind({"software": {"name": "Firely Server"}}) == "generic"
    assert subs.server_kind(MEDPLUM_CAPS, "hapi") == "hapi"


def test_medplum_gets_active_subscriptions_that_carry_the_signing_secret(tmp_path: Path) -> None:
    server = StrictServer(activates=False)
    report = _sync(server, _resources(tmp_path, show_secrets=True), "medplum")
    assert [(r["action"], r["status"]) for r in report] == [("created", "active")] * 2
    appointment = next(s for s in server.stored.values() if s["criteria"] == "Appointment?")
    assert {"url": subs.EXT_SECRET, "valueString": "signing-secret"} in appointment["extension"]
    assert "header" not in appointment["channel"]
    for sub in server.stored.values():
        Subscription.model_validate(sub)
    # An hmac entry carries its secret: no "match no secret" warning for it.
    assert subs.unauthenticated(_resources(tmp_path)) == []


def test_an_existing_requested_subscription_is_activated_on_medplum(tmp_path: Path) -> None:
    server = StrictServer(activates=False)
    resources = _resources(tmp_path, show_secrets=True)
    _sync(server, resources, "generic")  # an earlier sync wrote them requested
    assert {s["status"] for s in server.stored.values()} == {"requested"}
    report = _sync(server, resources, "medplum")
    assert {r["action"] for r in report} == {"activated"}
    assert {s["status"] for s in server.stored.values()} == {"active"}


def test_hapi_activates_requested_ones_and_its_error_text_is_reported(tmp_path: Path) -> None:
    server = StrictServer(activates=True, refuse="Task?")
    report = _sync(server, _resources(tmp_path, show_secrets=True), "hapi")
    assert [w["status"] for w in server.writes] == ["requested", "requested"]
    by_criteria = {r["criteria"]: r for r in report}
    assert by_criteria["Appointment?"]["status"] == "active"
    failing = subs.not_active(report)
    assert [(r["criteria"], r["status"], r["error"]) for r in failing] == [
        ("Task?", "error", "Subscription criteria is not valid: unknown parameter")
    ]


def test_a_second_sync_on_a_correct_setup_changes_nothing(tmp_path: Path) -> None:
    for kind, activates in (("medplum", False), ("hapi", True)):
        server = StrictServer(activates=activates, mask=True)  # secrets shown masked on read
        resources = _resources(tmp_path, show_secrets=True)
        _sync(server, resources, kind)
        written = len(server.writes)
        report = _sync(server, resources, kind)
        assert {r["action"] for r in report} == {"unchanged"}, kind
        assert len(server.writes) == written and subs.not_active(report) == []


def test_a_changed_subscription_is_updated_without_dropping_active_or_the_secret(tmp_path: Path) -> None:
    server = StrictServer(activates=True)
    _sync(server, _resources(tmp_path, show_secrets=True), "hapi")
    assert {s["status"] for s in server.stored.values()} == {"active"}
    changed = _resources(tmp_path, show_secrets=True)
    for sub in changed:
        sub["channel"]["endpoint"] = "https://h.example/v2"
    report = _sync(server, changed, "hapi")
    assert {r["action"] for r in report} == {"updated"}
    assert [w["status"] for w in server.writes[-2:]] == ["active", "active"]  # never back to requested
    appointment = next(s for s in server.stored.values() if s["criteria"] == "Appointment?")
    assert {"url": subs.EXT_SECRET, "valueString": "signing-secret"} in appointment["extension"]
    # A wrong secret on the server is not "unchanged".
    appointment["extension"] = [{"url": subs.EXT_SECRET, "valueString": "stale"}]
    (row,) = [r for r in _sync(server, changed, "hapi") if r["criteria"] == "Appointment?"]
    assert row["action"] == "updated"


def test_topic_based_support_is_read_from_the_capability_statement() -> None:
    assert declares_topic_subscriptions(capability_statement("http://s/fhir", "1", "2026-01-01"))
    assert not declares_topic_subscriptions(MEDPLUM_CAPS)
    hapi_backport = {
        **HAPI_CAPS,
        "rest": [{"mode": "server", "resource": [{"type": "Subscription", "supportedProfile": [
            "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription|1.1.0"]}]}],
    }  # fmt: skip
    assert declares_topic_subscriptions(hapi_backport)


def test_base_url_advice_names_what_to_set() -> None:
    caps = {"implementation": {"url": "http://localhost:8103/fhir/R4"}}
    assert self_urls(caps) == ["http://localhost:8103/fhir/R4"]
    advice = base_url_advice("http://127.0.0.1:8103/fhir/R4", caps)
    assert advice is not None and 'set [fhir] base_url = "http://localhost:8103/fhir/R4"' in advice.fix
    assert base_url_advice("http://localhost:8103/fhir/R4", caps) is None
    links = ["http://localhost:8103/fhir/R4/Subscription?_count=1&_offset=1"]
    advice = base_url_advice("http://127.0.0.1:8103/fhir/R4", {}, links)
    assert advice is not None and "paging links" in advice.problem and '"http://localhost:8103/fhir/R4"' in str(advice)
    assert base_url_advice("http://localhost:8103/fhir/R4", {}, links) is None
