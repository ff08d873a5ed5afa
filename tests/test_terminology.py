"""docs/terminology.md lists every code the service writes: its tables and the code's constants agree.

The expected rows are read from the code (constants, the built-in channels' media, the ``[roles]``
defaults); the documented rows from the doc's tables. A code changed on one side only fails here.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from fhir_smartflow import shipped
from fhir_smartflow.channels import BUILTIN_CHANNELS, ONLINE_WRITTEN, channel_spec
from fhir_smartflow.config import Settings
from fhir_smartflow.delivery.deliverer import ALL_CHANNELS_CODE, CHANNEL_CODE_SYSTEM
from fhir_smartflow.engine import provenance
from fhir_smartflow.engine import resources as fr
from fhir_smartflow.engine.action_types import ACTION_TYPES
from fhir_smartflow.engine.not_done import NOT_DONE_REASON_SYSTEM, NOT_DONE_REASONS
from fhir_smartflow.tooling import plandefinition as pd
from fhir_smartflow.worker.execute import BUSINESS_STATUS_SYSTEM

DOC = Path(__file__).resolve().parents[1] / "docs" / "terminology.md"
ROW = re.compile(r"^\|[^|]*\|\s*`([^`]+)`\s*\|\s*`([^`]+)`\s*\|([^|]*)\|([^|]*)\|\s*$")
UCUM_DISPLAYS = {"min": "minute", "h": "hour", "d": "day", "wk": "week"}
NO_DISPLAY = "—"

Key = tuple[str, str]


def documented() -> dict[Key, tuple[str, str]]:
    """(system, code) -> (display, source) of every table row of the doc."""
    rows: dict[Key, tuple[str, str]] = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        match = ROW.match(line)
        if match:
            system, code, display, source = (g.strip() for g in match.groups())
            rows[(system, code)] = (display, source)
    return rows


def in_code() -> dict[Key, str | None]:
    """(system, code) -> display (None: the code carries none, e.g. a configured role)."""
    codes: dict[Key, str | None] = {}
    for system_code in Settings().roles.values():
        system, _, code = system_code.partition("|")
        codes[(system, code)] = None
    for name in BUILTIN_CHANNELS:
        medium = channel_spec(name).medium
        if medium is not None:
            codes[(medium.system, medium.code)] = medium.display
    codes[(ONLINE_WRITTEN.system, ONLINE_WRITTEN.code)] = ONLINE_WRITTEN.display
    tables = [
        (fr.COMMUNICATION_CATEGORY, fr.COMMUNICATION_CATEGORIES),
        (NOT_DONE_REASON_SYSTEM, NOT_DONE_REASONS),
        (fr.SDC_TEMP, fr.SDC_CODES),
        (fr.LOINC, dict(fr.NOTE_TYPES.values())),
        (fr.DOCUMENT_CATEGORY, dict([fr.DOCUMENT_CATEGORY_CODE])),
        (fr.FLAG_CATEGORY, dict([fr.FLAG_CATEGORY_CODE])),
        (fr.CONFIDENTIALITY, dict([fr.RESTRICTED])),
        (provenance.DATA_OPERATION_SYSTEM, provenance.DATA_OPERATIONS),
        (provenance.PARTICIPANT_TYPE_SYSTEM, provenance.PARTICIPANT_TYPES),
        (provenance.ENTITY_ROLE_SYSTEM, provenance.ENTITY_ROLES),
        (pd.PLAN_TYPE, dict([pd.WORKFLOW_DEFINITION])),
        (pd.ACTION_TYPE, dict([pd.CREATE])),
        (pd.UCUM, {code: UCUM_DISPLAYS[code] for code in pd.UCUM_CODES.values()}),
    ]
    for system, displays in tables:
        codes.update({(system, code): display for code, display in displays.items()})
    local = [
        (pd.SMARTFLOW_ACTION_TYPE, list(ACTION_TYPES)),
        (CHANNEL_CODE_SYSTEM, [*BUILTIN_CHANNELS, ALL_CHANNELS_CODE]),
        (BUSINESS_STATUS_SYSTEM, ["overdue"]),
    ]
    for system, names in local:
        codes.update({(system, code): None for code in names})
    return codes


def test_the_doc_lists_exactly_the_codes_in_the_code() -> None:
    doc, code = documented(), in_code()
    assert sorted(set(code) - set(doc)) == [], "written by the code, missing from docs/terminology.md"
    assert sorted(set(doc) - set(code)) == [], "in docs/terminology.md, not written by the code"


def test_displays_agree_and_every_published_code_names_its_source() -> None:
    doc, code = documented(), in_code()
    for key, display in code.items():
        documented_display, source = doc[key]
        if display is not None:
            assert documented_display == display, key
        if key[0].startswith("urn:fhir-smartflow:"):
            assert documented_display == NO_DISPLAY and source.startswith("local"), key
        else:
            assert documented_display not in ("", NO_DISPLAY), key
            assert re.match(r"https?://\S+$", source), f"{key}: source must be the URL of the published content"


def test_the_example_config_has_the_default_role_codes() -> None:
    example = tomllib.loads((shipped.root() / shipped.EXAMPLE_CONFIG).read_text(encoding="utf-8"))
    assert example["roles"] == Settings().roles
    assert Settings().roles["case-manager"] == "http://snomed.info/sct|768832004"  # Case manager (occupation)


def test_sms_is_the_precise_participation_mode() -> None:
    assert (channel_spec("sms").medium.code, channel_spec("sms").medium.display) == ("SMSWRIT", "SMS message")
