"""Reference target types R4 allows, checked when a flow loads and before every write (strict servers
such as HAPI FHIR and Medplum refuse ``Task.owner = Group``)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import requests

from fhir_smartflow.connections import Keys
from fhir_smartflow.engine.references import allowed_reference_types, reference_type_problems
from fhir_smartflow.fhir.client import FhirClient
from fhir_smartflow.fhir.errors import FhirBadRequest
from fhir_smartflow.fhir.writeback import FhirWriteBack
from fhir_smartflow.flowfiles import load_paths
from tests.support.engine import ROOT, SETTINGS, shipped_engine
from tests.support.plans import SYSTEM, sdc_task

pytestmark = pytest.mark.integration

STAFF_TASK = """\
id = "call-flow"
name = "Call"
trigger = "appointment.no_show"

[[actions]]
name = "Call the patient"
category = "smartflow"
type = "staff-task"
item = "previsit-call"
template = "previsit-call"
owner = {{ group = "{owner}" }}
"""


def _load(tmp_path: Path, owner: str) -> list[str]:
    (tmp_path / "flow.toml").write_text(textwrap.dedent(STAFF_TASK.format(owner=owner)))
    _, errors = load_paths([str(ROOT / "mappings")], [str(tmp_path)], [str(ROOT / "templates")], SETTINGS)
    return [str(e) for e in errors]


def test_a_group_task_owner_is_refused_when_the_flow_loads(tmp_path: Path) -> None:
    (error,) = _load(tmp_path, "Group/front-desk")
    assert "Task.owner cannot be a Group" in error
    for kind in allowed_reference_types("Task", "owner") or ():
        assert kind in error  # the kinds R4 allows are offered
    assert _load(tmp_path, "CareTeam/front-desk") == []


def test_the_shipped_flows_write_only_allowed_reference_types() -> None:
    shipped_engine()  # loads, so no shipped task owner is a Group
    assert "Group" not in (allowed_reference_types("Task", "owner") or ())


def test_a_write_with_a_disallowed_reference_is_refused_before_any_request(sandbox_server: str, redis_conn) -> None:
    target = FhirWriteBack(FhirClient(sandbox_server), SYSTEM, redis_conn, Keys("rt:"))
    task = {**sdc_task(), "owner": {"reference": "Group/front-desk"}}
    assert reference_type_problems(task)
    for write in (
        lambda: target.create_with_status(task, "id-1"),
        lambda: target.create_all([(task, "id-1", "urn:uuid:7b7c1f4e-2d5b-4a55-8a55-0c1c2b3d4e5f")]),
    ):
        with pytest.raises(FhirBadRequest, match=r"Task\.owner: a reference to Group is not allowed"):
            write()
    assert requests.get(f"{sandbox_server}/Task", timeout=5).json().get("entry") is None
