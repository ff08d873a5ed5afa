"""The console's file stores on a real directory: stale saves refused, invalid content refused with the
loader's errors, atomic writes, history with who and when, diffs, and the flow version bump."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from fhir_smartflow.config import Settings, load_settings
from fhir_smartflow.console.accounts import ConsoleUser
from fhir_smartflow.console.audit import Audit
from fhir_smartflow.console.keys import ConsoleKeys
from fhir_smartflow.console.reload import ReloadBus
from fhir_smartflow.console.store import FlowStore, InvalidFile, NotEditable, StaleEdit, TemplateStore
from fhir_smartflow.flowfiles import load_paths
from tests.support.console import Site, copy_site
from tests.support.net import free_port

ALICE = ConsoleUser("alice", "admin")
BOB = ConsoleUser("bob", "admin")


def _clock() -> datetime:
    return datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


def _settings(site: Site, tmp_path: Path) -> Settings:
    config = tmp_path / "smartflow.toml"
    config.write_text(
        f'[engine]\nflows = ["{site.flows}"]\ntemplates = ["{site.templates}"]\nmappings = ["{site.mappings}"]\n'
    )
    return load_settings(config, env={})


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return copy_site(tmp_path)


@pytest.fixture
def flows(site: Site, tmp_path: Path) -> FlowStore:
    return FlowStore(
        _settings(site, tmp_path),
        site.flows,
        tmp_path / "history" / "flows",
        audit=Audit(None, ConsoleKeys("t:"), _clock),
        clock=_clock,
    )


def test_save_writes_the_file_the_loader_reads_and_keeps_comments(flows: FlowStore, site: Site) -> None:
    current = flows.read("intake-forms")
    text = current.text.replace('name = "Intake forms on registration"', 'name = "Intake packet"')
    saved = flows.save("intake-forms", text, current.etag, ALICE)
    on_disk = (site.flows / "intake-forms.toml").read_text()
    assert on_disk == saved.text == text  # a name change is not a behaviour change: no version bump
    assert on_disk.startswith("# Scenario 1")
    assert not [p for p in site.flows.iterdir() if p.name.startswith(".")]  # no temporary file left
    engine, errors = load_paths([str(site.mappings)], [str(site.flows)], [str(site.templates)], flows.settings)
    assert errors == [] and engine is not None
    assert engine.flows["intake-forms"].name == "Intake packet"


def test_stale_save_is_refused_and_shows_the_newer_version(flows: FlowStore, site: Site) -> None:
    opened = flows.read("intake-forms")  # both administrators open the same version
    first = flows.save("intake-forms", opened.text.replace("Intake forms on", "A on"), opened.etag, ALICE)
    with pytest.raises(StaleEdit) as refused:
        flows.save("intake-forms", opened.text.replace("Intake forms on", "B on"), opened.etag, BOB)
    assert refused.value.current == first
    assert (site.flows / "intake-forms.toml").read_text() == first.text
    with pytest.raises(StaleEdit):  # "new" file over an existing one
        flows.save("intake-forms", opened.text, None, BOB)


def test_invalid_save_is_refused_with_the_loaders_field_errors(flows: FlowStore, site: Site) -> None:
    current = flows.read("intake-forms")
    bad = current.text.replace('weekend = "next-monday"', 'weekend = "someday"').replace(
        'unit = "days", direction', 'unit = "fortnights", direction'
    )
    with pytest.raises(InvalidFile) as refused:
        flows.save("intake-forms", bad, current.etag, ALICE)
    errors = [e for e in refused.value.errors if e.file.endswith("intake-forms.toml")]
    fields = {e.field for e in errors}
    assert any("weekend" in f for f in fields) and any("due" in f for f in fields), errors
    assert all(e.line for e in errors) and all(e.reason for e in errors)
    assert (site.flows / "intake-forms.toml").read_text() == current.text  # nothing written
    assert flows.history("intake-forms") == []
    with pytest.raises(InvalidFile) as syntax:
        flows.save("intake-forms", current.text + "\n[[actions]\n", current.etag, ALICE)
    assert syntax.value.errors[0].line and "TOML" in syntax.value.errors[0].reason


def test_behaviour_change_bumps_the_version_keeping_layout(flows: FlowStore) -> None:
    current = flows.read("intake-forms")
    text = current.text.replace("amount = 3,", "amount = 4,")
    saved = flows.save("intake-forms", text, current.etag, ALICE)
    assert 'version = "2"' in saved.text
    assert saved.text == text.replace('version = "1"', 'version = "2"')  # only that line changed
    # An editor that bumps the version itself is left alone.
    again = flows.save(
        "intake-forms", saved.text.replace("amount = 4,", "amount = 5,").replace('"2"', '"7"'), saved.etag, ALICE
    )
    assert 'version = "7"' in again.text


def test_history_keeps_every_version_with_who_and_when_and_diffs(flows: FlowStore) -> None:
    current = flows.read("intake-forms")
    one = flows.save("intake-forms", current.text.replace("amount = 3,", "amount = 4,"), current.etag, ALICE)
    flows.save("intake-forms", one.text.replace("Intake forms on", "Forms on"), one.etag, BOB)
    history = flows.history("intake-forms")
    assert [(v.number, v.user, v.action) for v in history] == [
        (1, "", "found"),
        (2, "alice", "save"),
        (3, "bob", "save"),
    ]
    assert history[1].at == "2026-03-04T05:06:07+00:00"
    assert flows.version_text("intake-forms", 1) == current.text
    diff = flows.diff("intake-forms", 1, 2)
    assert "-due = { amount = 3," in diff and "+due = { amount = 4," in diff and '+version = "2"' in diff
    actions = [(e.user, e.action, e.target) for e in flows.audit.recent()]  # type: ignore[union-attr]
    assert actions == [("bob", "flow.save", "intake-forms"), ("alice", "flow.save", "intake-forms")]


def test_new_template_is_created_and_names_are_checked(site: Site, tmp_path: Path) -> None:
    templates = TemplateStore(_settings(site, tmp_path), site.templates, tmp_path / "h" / "templates", clock=_clock)
    text = (site.templates / "weekly-checkin.toml").read_text().replace('id = "weekly-checkin"', 'id = "checkin-2"')
    saved = templates.save("checkin-2", text, None, ALICE)
    assert templates.read("checkin-2") == saved and "checkin-2" in templates.list()
    assert [v.action for v in templates.history("checkin-2")] == ["create"]
    with pytest.raises(NotEditable):
        templates.save("../escape", text, None, ALICE)


def test_shipped_only_configuration_is_not_editable(tmp_path: Path) -> None:
    store = FlowStore(Settings(), None, tmp_path / "h", clock=_clock)
    assert not store.writable and store.list() == []
    with pytest.raises(NotEditable, match="no flow directory"):
        store.save("x", "", None, ALICE)


def test_a_save_while_redis_is_down_is_written_and_says_it_was_not_announced(site: Site, tmp_path: Path) -> None:
    down = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5)
    keys = ConsoleKeys("t:")
    store = FlowStore(
        _settings(site, tmp_path),
        site.flows,
        tmp_path / "h",
        audit=Audit(down, keys, _clock),
        bus=ReloadBus(down, keys, _clock),
        clock=_clock,
    )
    current = store.read("intake-forms")
    saved = store.save("intake-forms", current.text.replace("Intake forms on", "Forms on"), current.etag, ALICE)
    assert not saved.announced
    assert (site.flows / "intake-forms.toml").read_text() == saved.text
    assert [v.user for v in store.history("intake-forms")] == ["", "alice"]


def test_delete_keeps_history_and_refuses_a_template_a_flow_uses(flows: FlowStore, site: Site, tmp_path: Path) -> None:
    templates = TemplateStore(flows.settings, site.templates, tmp_path / "h" / "templates", clock=_clock)
    used = templates.read("intake-forms")
    with pytest.raises(InvalidFile) as refused:
        templates.delete("intake-forms", used.etag, ALICE)
    assert any("intake-forms" in e.reason or "template" in e.field for e in refused.value.errors), refused.value.errors
    assert (site.templates / "intake-forms.toml").exists()
    flow = flows.read("weekly-checkin")
    with pytest.raises(StaleEdit):
        flows.delete("weekly-checkin", "not-the-etag", ALICE)
    flows.delete("weekly-checkin", flow.etag, ALICE)
    assert "weekly-checkin" not in flows.list()
    assert [v.action for v in flows.history("weekly-checkin")] == ["found", "delete"]
    assert flows.version_text("weekly-checkin", 2) == flow.text
