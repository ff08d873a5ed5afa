"""The scopes the service asks for by default: exactly what it reads and writes, per configuration."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from click.testing import CliRunner, Result

from fhir_smartflow.cli import main
from fhir_smartflow.config import FhirConfig, PollConfig, Settings, SubscriptionConfig
from fhir_smartflow.engine.model import Recipients
from fhir_smartflow.fhir.scopes import Scopes, ScopeSyntax
from fhir_smartflow.fhir.service_scopes import needed_scopes, service_uses
from tests.support.engine import shipped_engine
from tests.support.procs import ROOT
from tests.support.toml import write_config

WITH_SUBSCRIPTIONS = dataclasses.replace(Settings(), subscriptions=[SubscriptionConfig(id="sub-1")])


def test_the_default_is_computed_and_covers_every_write_the_service_makes() -> None:
    assert Settings().fhir.scopes == ""  # "" = computed
    needed = needed_scopes(shipped_engine(), WITH_SUBSCRIPTIONS)
    text = needed.render(ScopeSyntax.V2)
    for scope in (
        "system/Provenance.c",
        "system/Flag.c",
        "system/Subscription.crus",
        "system/SubscriptionTopic.rs",
        "system/Task.crus",
        "system/Communication.crus",
        "system/DocumentReference.c",
        "system/Device.crs",
        "system/Patient.rs",
        "system/Consent.rs",
        "system/Questionnaire.rs",
    ):
        assert scope in text.split(), scope
    assert "*" not in text  # no wildcard: only what the service uses
    # The old default ("system/*.rs system/Task.cu system/Communication.c system/DocumentReference.c")
    # lacked these writes: a token granted only that is refused on them.
    old = Scopes.parse("system/*.rs system/Task.cu system/Communication.c system/DocumentReference.c")
    lacking = old.missing(needed).render(ScopeSyntax.V2).split()
    assert {"system/Provenance.c", "system/Flag.c", "system/Subscription.cu", "system/Communication.u"} <= set(lacking)


def test_v1_form_for_servers_that_only_know_read_and_write() -> None:
    text = needed_scopes(shipped_engine(), WITH_SUBSCRIPTIONS).render(ScopeSyntax.V1).split()
    assert {"system/Provenance.write", "system/Task.read", "system/Task.write", "system/Patient.read"} <= set(text)
    assert not [s for s in text if not s.endswith((".read", ".write"))]


def test_the_resource_types_the_flows_watch_and_name_are_read() -> None:
    engine = shipped_engine()
    text = needed_scopes(engine, Settings()).render(ScopeSyntax.V2).split()
    for rtype in engine.resource_types():  # the mappings' trigger resources
        assert any(s.startswith(f"system/{rtype}.") and "r" in s.split(".")[1] for s in text), rtype
    # A message recipient the templates name is read before each delivery.
    template = next(iter(engine.templates.values()))
    named = dataclasses.replace(template, recipients=Recipients(groups=("Group/front-desk",)))
    with_group = dataclasses.replace(engine, templates={**engine.templates, template.id: named})
    assert "system/Group.rs" in needed_scopes(with_group, Settings()).render(ScopeSyntax.V2).split()
    # Configured poll types replace the flows' own.
    polled = dataclasses.replace(Settings(), poll=PollConfig(types=["CarePlan"]))
    assert any(u.resource_type == "CarePlan" and "trigger" in u.why for u in service_uses(engine, polled))


def test_settings_change_what_is_needed() -> None:
    engine = shipped_engine()
    plain = needed_scopes(engine, Settings()).render(ScopeSyntax.V2).split()
    assert not [s for s in plain if s.startswith("system/Subscription")]  # no [[subscriptions]]: no sync
    # Without conditional create the writer searches by identifier before creating.
    searching = dataclasses.replace(Settings(), fhir=FhirConfig(conditional_create=False))
    assert "system/Provenance.cs" in needed_scopes(engine, searching).render(ScopeSyntax.V2).split()
    # OpenEMR write-back writes to OpenEMR, not to the FHIR server: read scopes only.
    openemr = dataclasses.replace(Settings(), fhir=FhirConfig(writeback="openemr"))
    scopes = needed_scopes(engine, openemr)
    assert scopes.resources and all(s.interactions <= frozenset("rs") for s in scopes.resources)


def _scopes_cli(tmp_path: Path, *args: str, **fhir: object) -> Result:
    engine = {"mappings": [str(ROOT / "mappings")], "flows": [str(ROOT / "flows/examples")]}
    engine["templates"] = [str(ROOT / "templates")]
    config = write_config(tmp_path / "c.toml", {"fhir": fhir, "engine": engine}, [{"id": "s", "secret_env": "S"}])
    return CliRunner().invoke(main, ["--config", str(config), "scopes", *args])


def test_the_scopes_command_prints_what_to_register(tmp_path: Path) -> None:
    result = _scopes_cli(tmp_path)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == needed_scopes(shipped_engine(), WITH_SUBSCRIPTIONS).render(ScopeSyntax.V2)
    v1 = _scopes_cli(tmp_path, "--syntax", "v1", "--json", scope_syntax="v2")
    doc = json.loads(v1.stdout)
    assert doc["syntax"] == "v1" and "system/Provenance.write" in doc["scopes"].split()
    assert {"resource_type": "Flag", "letters": "c", "why": "record-prompt actions"} in doc["uses"]
    why = _scopes_cli(tmp_path, "--why").output.splitlines()
    assert any(line.startswith("system/Subscription.crus") and "subscriptions sync" in line for line in why)


def test_the_scopes_command_refuses_flows_that_do_not_load(tmp_path: Path) -> None:
    bad = tmp_path / "flows"
    bad.mkdir()
    (bad / "broken.toml").write_text('id = "x"\n[[actions]]\ntype = "nonsense"\n')
    config = write_config(tmp_path / "c.toml", {"engine": {"flows": [str(bad)], "mappings": [str(ROOT / "mappings")]}})
    result = CliRunner().invoke(main, ["--config", str(config), "scopes"])
    assert result.exit_code == 2 and "run `fhir-smartflow validate`" in result.output
