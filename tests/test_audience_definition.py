"""The allowed-audience extension: its StructureDefinition (export command and the docs file) and its use on
a Flag (canonical URL, confidentiality label)."""

from __future__ import annotations

import json
from pathlib import Path

from fhir.resources.R4B.flag import Flag
from fhir.resources.R4B.structuredefinition import StructureDefinition

from fhir_smartflow.engine import resources as fr
from fhir_smartflow.engine.definitions import allowed_audience
from tests.support.procs import run_cli

DOC = Path(__file__).resolve().parents[1] / "docs" / "StructureDefinition-allowed-audience.json"


def test_export_structuredefinition_prints_a_valid_r4_definition_of_the_url_flags_carry() -> None:
    printed = run_cli("export", "structuredefinition", "allowed-audience")
    assert printed.returncode == 0, printed.stderr
    definition = json.loads(printed.stdout)
    StructureDefinition.model_validate(definition)
    assert definition["url"] == fr.ALLOWED_AUDIENCE_URL and definition["url"].startswith(("http://", "https://"))
    assert (definition["type"], definition["derivation"], definition["fhirVersion"]) == (
        "Extension",
        "constraint",
        "4.0.1",
    )
    assert definition["context"] == [{"type": "element", "expression": "Flag"}]
    value = next(e for e in definition["differential"]["element"] if e["path"] == "Extension.value[x]")
    assert [t["code"] for t in value["type"]] == ["CodeableConcept", "Reference"]
    fixed = next(e for e in definition["differential"]["element"] if e["path"] == "Extension.url")
    assert fixed["fixedUri"] == fr.ALLOWED_AUDIENCE_URL

    default = run_cli("export", "structuredefinition", "--json")
    assert default.returncode == 0 and json.loads(default.stdout) == definition
    unknown = run_cli("export", "structuredefinition", "nope")
    assert unknown.returncode == 2 and unknown.stderr.strip().splitlines() == [
        "unknown StructureDefinition 'nope'; known: allowed-audience"
    ]


def test_the_published_file_is_what_the_command_prints() -> None:
    assert json.loads(DOC.read_text()) == allowed_audience()


def test_flag_extensions_match_their_definition_and_are_labelled_restricted() -> None:
    flag = fr.build_flag(
        identifier_system="urn:x",
        identifier_value="fl/1",
        text="Review answers",
        subject="Patient/p1",
        author="Device/x",
        start="2026-03-10T18:30:00Z",
        roles=[fr.concept("http://terminology.hl7.org/CodeSystem/practitioner-role|doctor", "clinician")],
        practitioners=["PractitionerRole/pr1"],
    )
    Flag.model_validate(flag)
    definition = allowed_audience()
    value = next(e for e in definition["differential"]["element"] if e["path"] == "Extension.value[x]")
    allowed = {"CodeableConcept": "valueCodeableConcept", "Reference": "valueReference"}
    for ext in flag["extension"]:
        assert ext["url"] == definition["url"]
        [(key, _)] = [(k, v) for k, v in ext.items() if k != "url"]
        assert key in {allowed[t["code"]] for t in value["type"]}
    targets = next(t for t in value["type"] if t["code"] == "Reference")["targetProfile"]
    assert any(t.endswith("/" + flag["extension"][1]["valueReference"]["reference"].split("/")[0]) for t in targets)
    assert flag["meta"]["security"] == [{"system": fr.CONFIDENTIALITY, "code": "R", "display": "restricted"}]
