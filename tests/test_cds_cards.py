"""Record-prompt Flags → cards for one user, the feedback body check and the [cds] settings (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from fhir_smartflow.cds import cards as c
from fhir_smartflow.cds.data import resources_of
from fhir_smartflow.cds.feedback import BadFeedback, parse_feedback
from fhir_smartflow.config import ConfigError, load_settings
from fhir_smartflow.defaults import IDENTIFIER_SYSTEM
from fhir_smartflow.engine import resources as fr

NOW = datetime(2026, 3, 1, tzinfo=UTC)
NURSE = "http://terminology.hl7.org/CodeSystem/practitioner-role|nurse"


def flag(fid: str, text: str = "Review the record", **kw: Any) -> dict[str, Any]:
    built = fr.build_flag(
        identifier_system=IDENTIFIER_SYSTEM,
        identifier_value=f"intake/{fid}/Flag/0123456789abcdef0123",
        text=text,
        subject="Patient/p1",
        author="Device/d",
        start="2026-01-01T00:00:00Z",
        end=kw.pop("end", None),
        roles=[fr.concept(r, "nurse") for r in kw.pop("roles", ())],
        practitioners=kw.pop("practitioners", ()),
    )
    return {**built, "id": fid, **kw}


def shown(flags: list[dict[str, Any]], user: c.User) -> list[str]:
    return [p.flag for p in c.prompts(flags, "p1", IDENTIFIER_SYSTEM, NOW, "info") if c.shown_to(p, user)]


def role(rid: str, practitioner: str, code: str = NURSE, active: bool = True) -> dict[str, Any]:
    system, _, value = code.partition("|")
    return {
        "resourceType": "PractitionerRole",
        "id": rid,
        "active": active,
        "practitioner": {"reference": practitioner},
        "code": [{"coding": [{"system": system, "code": value}]}],
    }


def test_only_our_active_current_prompts_about_this_patient() -> None:
    foreign = {**flag("foreign"), "identifier": [{"system": "urn:other", "value": "x"}]}
    tagged = {**foreign, "id": "tagged", "meta": {"tag": [{"system": IDENTIFIER_SYSTEM, "code": "v"}]}}
    flags = [
        flag("ok"),
        foreign,
        tagged,
        flag("inactive", status="inactive"),
        flag("ended", end="2026-02-01T00:00:00Z"),
        flag("other-patient", subject={"reference": "Patient/p2"}),
        flag("no-text", code={}),
    ]
    found = c.prompts(flags, "p1", IDENTIFIER_SYSTEM, NOW, "info")
    assert [p.flag for p in found] == ["Flag/ok", "Flag/tagged"]
    assert found[0].flow_id == "intake" and found[1].flow_id is None


def test_audience_by_practitioner_role_and_the_older_extension_url() -> None:
    legacy = flag("legacy")
    legacy["extension"] = [{"url": fr.LEGACY_ALLOWED_AUDIENCE_URL, "valueReference": {"reference": "Practitioner/a"}}]
    flags = [flag("for-a", practitioners=["Practitioner/a"]), flag("nurses", roles=[NURSE]), flag("all"), legacy]
    doctor = c.user_from("Practitioner/a", [], roles_known=True)
    assert shown(flags, doctor) == ["Flag/all", "Flag/for-a", "Flag/legacy"]
    nurse = c.user_from("Practitioner/n", [role("r1", "Practitioner/n")], roles_known=True)
    assert shown(flags, nurse) == ["Flag/all", "Flag/nurses"]
    # a role of someone else, or an inactive one, does not count
    other = c.user_from(
        "Practitioner/x", [role("r1", "Practitioner/n"), role("r2", "Practitioner/x", active=False)], True
    )
    assert shown(flags, other) == ["Flag/all"]
    # as a PractitionerRole user: its own code, and its practitioner's references
    as_role = c.user_from("PractitionerRole/r9", [role("r9", "Practitioner/a")], roles_known=True)
    assert shown(flags, as_role) == ["Flag/all", "Flag/for-a", "Flag/legacy", "Flag/nurses"]
    assert shown(flags, c.user_from("Patient/p1", [], True)) == []
    assert c.needs_roles(c.prompts(flags, "p1", IDENTIFIER_SYSTEM, NOW, "info"), doctor)


def test_card_text_indicator_and_link() -> None:
    long_text = "x" * 200
    urgent = flag("urgent", text=long_text)
    urgent["extension"] = [
        {"url": c.FLAG_PRIORITY_URL, "valueCodeableConcept": {"coding": [{"system": "s", "code": "PH"}]}}
    ]
    (prompt,) = c.prompts([urgent], "p1", IDENTIFIER_SYSTEM, NOW, "warning")
    card = c.card(prompt, "u-1", "Source", "")
    assert card["indicator"] == "critical" and len(card["summary"]) < 140 and card["detail"] == long_text
    assert "links" not in card
    (plain,) = c.prompts([flag("p")], "p1", IDENTIFIER_SYSTEM, NOW, "warning")
    linked = c.card(plain, "u-2", "Source", "https://w.example/launch")
    assert linked["indicator"] == "warning" and "detail" not in linked
    assert linked["links"][0]["type"] == "smart" and linked["links"][0]["url"] == "https://w.example/launch"


def test_prefetch_values() -> None:
    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": flag("a")}, {}]}
    assert [r["id"] for r in resources_of(bundle)] == ["a"]
    assert resources_of(None) == [] and resources_of({"resourceType": "Practitioner", "id": "x"})[0]["id"] == "x"


@pytest.mark.parametrize(
    "body",
    [
        None,
        {"feedback": []},
        {"feedback": [{"card": "c", "outcome": "ignored", "outcomeTimestamp": "2026-01-01T00:00:00Z"}]},
        {"feedback": [{"card": "c", "outcome": "overridden"}]},
        {"feedback": [{"card": "c", "outcome": "accepted", "outcomeTimestamp": "2026-01-01T00:00:00Z"}]},
        {"feedback": [{"outcome": "overridden", "outcomeTimestamp": "2026-01-01T00:00:00Z"}]},
    ],
)
def test_bad_feedback_is_refused(body: Any) -> None:
    with pytest.raises(BadFeedback):
        parse_feedback(body)


def test_cds_settings_are_checked(tmp_path: Any) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[cds]\nenabled = true\npublic_url = "https://s.example"\nissuers = ["https://ehr"]\n')
    with pytest.raises(ConfigError, match="jwks_file"):
        load_settings(path, env={})
    path.write_text('[cds]\nalgorithms = ["HS256"]\n')
    with pytest.raises(ConfigError, match="algorithms"):
        load_settings(path, env={})
    path.write_text('[cds]\nenabled = true\nissuers = ["https://ehr"]\njwks_file = "k.json"\n')
    with pytest.raises(ConfigError, match="public_url"):
        load_settings(path, env={})
