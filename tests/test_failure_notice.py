"""notify_on_failure through the real service runtime (engine pipeline, executor, ChannelDeliverer, the SMS
plugin) against the sandbox store over HTTP and a Twilio-shaped provider: a failed text of the shipped
missed-appointment flow reaches the case managers as one in-EHR staff message, however often the event
is dispatched; a patient's opt-out is not a failure."""

from __future__ import annotations

from typing import Any

import pytest
from fhir.resources.R4B.communication import Communication

from fhir_smartflow.config import load_settings
from fhir_smartflow.events import ResourceEvent
from fhir_smartflow.fhir.client import FhirClient
from fhir_smartflow.worker.runtime import Runtime, build_service_runtime
from tests.support.channels import SID, TOKEN, TwilioFake
from tests.support.fhir import seed
from tests.support.service import write_service_config

pytestmark = pytest.mark.integration

FHIR = {"Content-Type": "application/fhir+json"}
SYSTEM = "urn:fhir-smartflow:id"
SNOMED = "http://snomed.info/sct"
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
CHANNEL_CODES = "urn:fhir-smartflow:channel"
REJECTED = (400, {}, {"code": 21211, "message": "The 'To' number is not a valid phone number.", "status": 400})


@pytest.fixture
def twilio(serve_app) -> tuple[TwilioFake, str]:
    fake = TwilioFake()
    return fake, serve_app(fake.app).url


@pytest.fixture
def rt(sandbox_server: str, redis_conn, redis_url, twilio, tmp_path, monkeypatch) -> Runtime:
    monkeypatch.setenv("NF_SMS_TOKEN", TOKEN)
    extra = f"""
[delivery]
quiet_hours_start = ""
quiet_hours_end = ""
[sms]
base_url = "{twilio[1]}"
account_sid = "{SID}"
token_env = "NF_SMS_TOKEN"
from_number = "+15550000000"
"""
    config = write_service_config(tmp_path, prefix="nf:", redis_url=redis_url, fhir_base=sandbox_server, extra=extra)
    return build_service_runtime(load_settings(config), redis_conn)


def staff(store: str) -> None:
    """Two case managers (one retired) and a nurse: the notice goes to the active case manager only."""
    seed(store, {"resourceType": "Practitioner", "id": "cm"})
    roles = (("cm-role", "768832004", True), ("old-cm", "768832004", False), ("rn", "224535009", True))
    for rid, code, active in roles:
        coding = {"system": SNOMED, "code": code}
        role = {"resourceType": "PractitionerRole", "id": rid, "active": active, "code": [{"coding": [coding]}]}
        seed(store, {**role, "practitioner": {"reference": "Practitioner/cm"}})


def no_show(store: str, pid: str, phone: str = "") -> ResourceEvent:
    patient: dict[str, Any] = {"resourceType": "Patient", "id": pid, "name": [{"given": ["Nora"], "family": "Fail"}]}
    if phone:
        patient["telecom"] = [{"system": "phone", "value": phone, "use": "mobile"}]
    seed(store, patient)
    appointment = seed(
        store,
        {
            "resourceType": "Appointment",
            "id": f"appt-{pid}",
            "status": "noshow",
            "start": "2026-03-02T15:00:00Z",
            "end": "2026-03-02T15:30:00Z",
            "participant": [{"actor": {"reference": f"Patient/{pid}"}, "status": "accepted"}],
        },
    )
    return ResourceEvent(
        subscription="appointments",
        resource_type="Appointment",
        resource_id=appointment["id"],
        received_at="2026-03-02T15:40:00+00:00",
        version_id=appointment["meta"]["versionId"],
        resource=appointment,
    )


def communications(store: str, pid: str) -> list[dict[str, Any]]:
    return FhirClient(store).search("Communication", {"subject": f"Patient/{pid}"})


def notices(store: str, pid: str) -> list[dict[str, Any]]:
    return [c for c in communications(store, pid) if (c.get("topic") or {}).get("text") == "Message not delivered"]


def notices_counted(rt: Runtime, result: str) -> int:
    return rt.metrics.counter_value("failure_notices", channel="sms", result=result)


def test_a_rejected_text_tells_the_owner_once_however_often_it_runs(rt: Runtime, sandbox_server, twilio) -> None:
    fake, _ = twilio
    fake.script = [REJECTED]
    staff(sandbox_server)
    event = no_show(sandbox_server, "nf1", phone="+15550001111")
    plans = rt.dispatcher.dispatch(event)
    rt.dispatcher.dispatch(event)  # redelivered: the prior state says it is no new no-show
    for plan in plans * 2:  # the plan run twice more, as rq's retry does after a later transient failure
        rt.executor.execute(plan)

    assert len(fake.requests) == 1
    [text] = [c for c in communications(sandbox_server, "nf1") if c["medium"][0]["text"] == "sms"]
    assert text["status"] == "not-done" and "21211" in text["statusReason"]["text"]
    assert text["statusReason"]["coding"][0]["code"] == "system-error"  # CommunicationNotDoneReason
    [notice] = notices(sandbox_server, "nf1")
    Communication.model_validate(notice)
    assert notice["status"] == "completed" and notice["medium"][0]["text"] == "staff-message"
    assert notice["recipient"] == [{"reference": "PractitionerRole/cm-role"}]
    assert notice["about"] == [{"reference": f"Communication/{text['id']}"}]
    assert "could not be delivered" in notice["payload"][0]["contentString"]
    identifier = next(i["value"] for i in notice["identifier"] if i["system"] == SYSTEM)
    assert identifier.startswith("missed-appointment/text-patient/Deliver/") and identifier.endswith("/failure-notice")
    provenance = FhirClient(sandbox_server).search("Provenance", {"_tag": f"{SYSTEM}|{identifier}/provenance"})
    [target] = [t["reference"] for p in provenance for t in p["target"]]
    assert target.startswith(f"Communication/{notice['id']}")  # a Provenance like every write
    assert (notices_counted(rt, "created"), notices_counted(rt, "existing")) == (1, 2)


def test_no_usable_number_is_a_failure_but_an_opt_out_is_not(rt: Runtime, sandbox_server, twilio) -> None:
    fake, _ = twilio
    staff(sandbox_server)
    rt.dispatcher.dispatch(no_show(sandbox_server, "nf2"))  # no phone at all
    [notice] = notices(sandbox_server, "nf2")
    assert "no usable phone" in notice["payload"][0]["contentString"]
    [unsent] = [c for c in communications(sandbox_server, "nf2") if c["medium"][0]["text"] == "sms"]
    assert unsent["statusReason"]["coding"][0]["code"] == "invalid-phone-number"

    consent = {
        "resourceType": "Consent",
        "id": "nf3-optout",
        "status": "active",
        "scope": {"coding": [{"system": CONSENT_SCOPE, "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": "Patient/nf3"},
        "provision": {"type": "deny", "action": [{"coding": [{"system": CHANNEL_CODES, "code": "sms"}]}]},
    }
    event = no_show(sandbox_server, "nf3", phone="+15550003333")
    seed(sandbox_server, consent)
    rt.dispatcher.dispatch(event)
    [text] = [c for c in communications(sandbox_server, "nf3") if c["medium"][0]["text"] == "sms"]
    assert text["status"] == "not-done" and "opted out" in text["statusReason"]["text"]
    assert text["statusReason"]["coding"][0]["code"] == "patient-objection"
    assert notices(sandbox_server, "nf3") == []  # the patient's choice, not a failure
    assert fake.requests == [] and notices_counted(rt, "created") == 1
