"""`openemr` write-back target against the emulator (real HTTP) with real Redis and the real sandbox store."""

from __future__ import annotations

import base64
import dataclasses
import time
from pathlib import Path

import pytest
import redis
from fhir.resources.R4B.communication import Communication
from fhir.resources.R4B.documentreference import DocumentReference
from fhir.resources.R4B.flag import Flag
from fhir.resources.R4B.task import Task

from fhir_smartflow.app import create_app
from fhir_smartflow.channels import channel_spec
from fhir_smartflow.metrics import Metrics
from fhir_smartflow.openemr.errors import (
    OpenEmrAuthUnavailable,
    OpenEmrCategoryMissing,
    OpenEmrScopeError,
    OpenEmrTransientError,
    OpenEmrValidationError,
)
from fhir_smartflow.openemr.factory import build_openemr_target, user_token_store
from fhir_smartflow.openemr.local_store import LocalFhirStore
from fhir_smartflow.openemr.target import OpenEmrWriteBack
from tests.support.openemr import ENV, authorize, make_settings
from tests.support.openemr_emulator import OpenEmrEmulator
from tests.support.openemr_emulator_scopes import CURRENT, DEV

pytestmark = pytest.mark.integration
SYSTEM = "urn:fhir-smartflow:id"


@pytest.fixture
def emulator(any_emulator: OpenEmrEmulator) -> OpenEmrEmulator:
    """Every test here runs against both modelled OpenEMR versions."""
    return any_emulator


@pytest.fixture
def setup(emulator: OpenEmrEmulator, redis_url: str, redis_conn: redis.Redis, key_file: Path, tmp_path: Path):
    settings = make_settings(emulator, redis_url, key_file)
    settings = dataclasses.replace(
        settings, openemr=dataclasses.replace(settings.openemr, local_store=str(tmp_path / "local.sqlite3"))
    )
    authorize(settings, redis_conn)
    target = build_openemr_target(settings, redis_conn, Metrics(redis_conn, "t:"), env=ENV)
    puuid = emulator.add_patient("Doe", "Jane")
    return settings, target, puuid


def task(puuid: str, ident: str, owner: str = "Practitioner/p1") -> dict:
    resource = {
        "resourceType": "Task",
        "status": "requested",
        "intent": "order",
        "identifier": [{"system": SYSTEM, "value": ident}],
        "code": {"text": "Review intake forms"},
        "description": "Review the intake forms",
        "for": {"reference": f"Patient/{puuid}"},
        "owner": {"reference": owner},
        "restriction": {"period": {"end": "2026-11-28T14:00:00Z"}},
        "authoredOn": "2026-11-25T10:00:00Z",
    }
    Task.model_validate(resource)
    return resource


def note(puuid: str, ident: str) -> dict:
    resource = {
        "resourceType": "DocumentReference",
        "status": "current",
        "identifier": [{"system": SYSTEM, "value": ident}],
        "type": {"coding": [{"system": "http://loinc.org", "code": "11506-3", "display": "Progress note"}]},
        "subject": {"reference": f"Patient/{puuid}"},
        "content": [
            {"attachment": {"contentType": "text/plain", "data": base64.b64encode(b"Intake packet sent.").decode()}}
        ],
    }
    DocumentReference.model_validate(resource)
    return resource


def retry_until_done(call, attempts: int = 10):
    """What rq does with a transient error: run the job again (here without the wait)."""
    for _ in range(attempts):
        try:
            return call()
        except OpenEmrTransientError:
            continue
    raise AssertionError("still failing after retries")


def test_staff_task_becomes_one_openemr_message_and_a_canonical_task(setup, emulator: OpenEmrEmulator) -> None:
    settings, target, puuid = setup
    ident = "intake-forms/review/task/abc123"
    first, created = target.create_with_status(task(puuid, ident), ident)
    again, created_again = target.create_with_status(task(puuid, ident), ident)  # a replayed event
    assert first["id"] == again["id"] and (created, created_again) == (True, False)
    assert len(target.search("Task", {"identifier": f"{SYSTEM}|{ident}"})) == 1  # canonical, in the local store
    [message] = emulator.messages
    assert message["pid"] == 1 and message["to"] == "drsmith" and message["from"] == "smartflow"
    assert "Review the intake forms" in message["body"] and "Due: 2026-11-28T14:00:00Z" in message["body"]
    assert f"Ref: {ident}" in message["body"]
    assert Path(settings.openemr.local_store).exists()


def test_500_and_429_are_retried_and_still_create_one_message(
    setup, emulator: OpenEmrEmulator, redis_conn: redis.Redis
) -> None:
    _, target, puuid = setup
    emulator.fail_next(2, 500, prefix="/apis/default/api/patient/1/message")
    emulator.fail_next(2, 429, prefix="/apis/default/api/patient/1/message")
    ident = "flow/a/task/faults"
    with pytest.raises(OpenEmrTransientError):
        target.create(task(puuid, ident), ident)
    retry_until_done(lambda: target.create(task(puuid, ident), ident))
    target.create(task(puuid, ident), ident)
    assert len(emulator.messages) == 1
    assert redis_conn.get(f"t:openemr:mirror:{ident}") == b"done:message:1"
    assert Metrics(redis_conn, "t:").counter_value("openemr_mirrors", kind="message", result="failed") == 4


def test_patient_note_is_uploaded_once_as_a_document(setup, emulator: OpenEmrEmulator, redis_conn: redis.Redis) -> None:
    _, target, puuid = setup
    ident = "intake-forms/note/document/d1"
    target.create(note(puuid, ident), ident)
    target.create(note(puuid, ident), ident)
    [doc] = emulator.documents
    category = emulator.categories.last_id_of_path("/Categories/Smart_Flows")
    assert doc.category_id == category is not None  # filed in the category, not in none
    assert doc.content == f"Intake packet sent.\n\nRef: {ident}\n".encode()
    assert doc.mimetype == "text/plain" and doc.uploaded_name.startswith("intake-forms_note_document_d1")
    # An earlier attempt that lost OpenEMR's answer: its stale claim is resolved by listing the category and
    # comparing the stored bytes (the listed filename is OpenEMR's stored uuid, not the uploaded name).
    redis_conn.set(f"t:openemr:mirror:{ident}", "pending:1")
    target.create(note(puuid, ident), ident)
    assert len(emulator.documents) == 1
    assert redis_conn.get(f"t:openemr:mirror:{ident}") == f"done:document:{doc.id}".encode()
    other = "intake-forms/note/document/d2"  # a lost upload that never arrived is sent again
    redis_conn.set(f"t:openemr:mirror:{other}", "pending:1")
    target.create(note(puuid, other), other)
    assert len(emulator.documents) == 2


def test_a_missing_category_is_a_clear_permanent_error(setup, emulator: OpenEmrEmulator) -> None:
    settings, target, puuid = setup
    target.config = dataclasses.replace(settings.openemr, document_category="No Such Category")
    with pytest.raises(OpenEmrCategoryMissing, match="/Categories/No_Such_Category") as err:
        target.create(note(puuid, "n/c/document/1"), "n/c/document/1")
    assert not err.value.retryable and emulator.documents == []


def test_stale_message_claim_is_never_sent_twice(setup, emulator: OpenEmrEmulator, redis_conn: redis.Redis) -> None:
    _, target, puuid = setup
    ident = "flow/a/task/lost-answer"
    redis_conn.set(f"t:openemr:mirror:{ident}", "pending:1")  # sent, answer lost, worker died
    target.create(task(puuid, ident), ident)
    assert emulator.messages == []  # unknown → not re-sent (the Standard API cannot list messages)
    assert redis_conn.get(f"t:openemr:mirror:{ident}").startswith(b"unknown:")
    redis_conn.set(f"t:openemr:mirror:{ident}x", f"pending:{__import__('time').time()}")
    with pytest.raises(OpenEmrTransientError, match="in progress"):  # a live claim: another worker is on it
        target.create(task(puuid, ident + "x"), ident + "x")


def test_record_prompt_and_portal_message(setup, emulator: OpenEmrEmulator) -> None:
    _, target, puuid = setup
    flag = {
        "resourceType": "Flag",
        "status": "active",
        "identifier": [{"system": SYSTEM, "value": "f/prompt/flag/1"}],
        "code": {"text": "Review intake answers"},
        "subject": {"reference": f"Patient/{puuid}"},
    }
    Flag.model_validate(flag)
    target.create(flag, "f/prompt/flag/1")
    target.create(flag, "f/prompt/flag/1")
    assert sorted(m["to"] for m in emulator.messages) == ["drsmith", "nurse1"]
    portal = {
        "resourceType": "Communication",
        "status": "completed",
        "identifier": [{"system": SYSTEM, "value": "f/msg/communication/1"}],
        "subject": {"reference": f"Patient/{puuid}"},
        "recipient": [{"reference": f"Patient/{puuid}"}],
        "medium": [{"coding": [{"system": "urn:fhir-smartflow:channel", "code": "portal"}]}],
        "payload": [{"contentString": "Your forms are ready."}],
    }
    Communication.model_validate(portal)
    target.create(portal, "f/msg/communication/1")
    assert emulator.messages[-1]["to"] == "frontdesk" and "Your forms are ready." in emulator.messages[-1]["body"]
    sms = {
        **portal,
        "identifier": [{"system": SYSTEM, "value": "f/msg/communication/2"}],
        "medium": [{"coding": [{"system": "urn:fhir-smartflow:channel", "code": "sms"}]}],
    }
    target.create(sms, "f/msg/communication/2")
    assert len(emulator.messages) == 3  # an SMS record is not mirrored


def test_expired_access_token_is_refreshed_and_rotated(
    setup, emulator: OpenEmrEmulator, redis_conn: redis.Redis
) -> None:
    _, target, puuid = setup
    stored_before = redis_conn.get("t:openemr:refresh")
    first_refresh = next(iter(emulator.refresh))
    assert first_refresh.encode() not in stored_before  # encrypted at rest
    emulator.advance(3700)  # the 1-hour user token has expired at OpenEMR; our cache still believes it
    target.api.tokens.clock = lambda: time.time() + 600  # (our clock: issued 10 minutes ago, not yet expired)
    target.create(task(puuid, "f/a/task/after-expiry"), "f/a/task/after-expiry")
    assert len(emulator.messages) == 1
    assert not emulator.refresh[first_refresh]["active"]  # rotated: the old refresh token is spent
    assert redis_conn.get("t:openemr:refresh") != stored_before  # and the new one stored


def test_refresh_failure_degrades_and_keeps_the_write_queued(
    setup, emulator: OpenEmrEmulator, redis_conn: redis.Redis
) -> None:
    settings, target, puuid = setup
    emulator.revoke_refresh_tokens()
    emulator.advance(3700)
    redis_conn.delete("t:openemr:access")
    ident = "f/a/task/while-degraded"
    with pytest.raises(OpenEmrAuthUnavailable) as err:
        target.create(task(puuid, ident), ident)
    assert err.value.retryable  # rq retries it: queued, not dropped
    assert redis_conn.get("t:openemr:auth_degraded").startswith(b"invalid_request")  # "Token has been revoked"
    ready = create_app(settings, redis_conn, insecure_dev=True).test_client().get("/readyz")
    assert ready.status_code == 200 and "DEGRADED: OpenEMR writes are queued" in ready.get_data(as_text=True)
    assert Metrics(redis_conn, "t:").counter_value("openemr_auth_failures", reason="invalid_request") == 1
    assert redis_conn.get(f"t:openemr:mirror:{ident}") is None  # nothing claimed: the retry will send it
    assert target.search("Task", {"identifier": f"{SYSTEM}|{ident}"})  # canonical Task kept
    authorize(settings, redis_conn)  # someone re-runs `openemr authorize`
    assert redis_conn.get("t:openemr:auth_degraded") is None
    target.create(task(puuid, ident), ident)  # the rq retry
    assert len(emulator.messages) == 1


def test_missing_scope_and_validation_errors_are_permanent_and_clear(
    setup, emulator: OpenEmrEmulator, redis_conn: redis.Redis
) -> None:
    """OpenEMR 7.0.0 answers a missing scope with 401 and an empty body (a current release: 403). Either way
    one clear error names the scope, and no refresh token is spent on it — not per call, not per rq retry."""
    settings, _, puuid = setup
    without_documents = {
        DEV: ("openid offline_access api:oemr api:fhir user/patient.read user/message.write", r"user/document\.write"),
        CURRENT: ("openid offline_access api:oemr api:fhir user/patient.rs user/message.c", r"user/document\.c"),
    }
    scopes, named = without_documents[emulator.mode]
    authorize(settings, redis_conn, scopes=scopes)
    target = build_openemr_target(settings, redis_conn, env=ENV)
    refreshes = emulator.requests.count("POST /oauth2/default/token")
    for _attempt in range(3):  # the job's first run and two rq retries
        with pytest.raises(OpenEmrScopeError, match=named) as err:
            target.create(note(puuid, "n/x/document/1"), "n/x/document/1")
        assert not err.value.retryable
    assert emulator.requests.count("POST /oauth2/default/token") == refreshes  # no refresh token spent
    assert redis_conn.get("t:openemr:mirror:n/x/document/1") is None
    # An older token refused with 401: one refresh (it may have expired), then the fresh one's 401 stops it.
    target.api.tokens.clock = lambda: time.time() + 400
    with pytest.raises(OpenEmrScopeError, match=named):
        target.create(note(puuid, "n/x/document/1"), "n/x/document/1")
    spent = 1 if emulator.mode == DEV else 0  # a 403 is never a matter of the token's age
    assert emulator.requests.count("POST /oauth2/default/token") == refreshes + spent
    bad = OpenEmrWriteBack(
        target.local, target.api, dataclasses.replace(settings.openemr, message_title="x"), redis_conn, "t:"
    )
    with pytest.raises(OpenEmrValidationError, match="title must be between 2 and 255") as err:
        bad.create(task(puuid, "t/x/task/1"), "t/x/task/1")
    assert not err.value.retryable and emulator.messages == []


def test_a_uuid_is_never_sent_where_the_pid_belongs(setup, emulator: OpenEmrEmulator) -> None:
    """OpenEMR stores a message sent to /patient/<uuid>/message under pid 0 and answers 201: a silent misfile."""
    _, target, puuid = setup
    with pytest.raises(OpenEmrValidationError, match="not an OpenEMR pid"):
        target.api.post_message(puuid, {"body": "x"})
    with pytest.raises(OpenEmrValidationError, match=r"uuid: .*UUID Not Found"):  # 400 validationErrors.uuid
        target.api.patient_pid("00000000-0000-0000-0000-000000000000")
    assert emulator.messages == []


def test_local_store_is_a_sqlite_file_that_survives_a_restart(setup, emulator: OpenEmrEmulator) -> None:
    settings, target, puuid = setup
    target.create(task(puuid, "t/persist/task/1"), "t/persist/task/1")
    reopened = LocalFhirStore(settings)
    [found] = reopened.search("Task", {"identifier": f"{SYSTEM}|t/persist/task/1"})
    assert reopened.read(f"Task/{found['id']}")["description"] == "Review the intake forms"


def test_recipients_follow_roles_audiences_and_skip_task_communications(setup, emulator: OpenEmrEmulator) -> None:
    """With the engine's own builders: a role-owned Task, a Flag's allowed audience, a staff Communication."""
    from fhir_smartflow.engine import resources as fr

    settings, target, puuid = setup
    users = {**settings.openemr.users, "role:case-manager": "cmsmith", "Practitioner/p9": "drp9"}
    target.config = dataclasses.replace(settings.openemr, users=users)
    role = fr.concept(settings.roles["case-manager"], "case-manager")
    task_res = fr.build_task(
        identifier_system=SYSTEM,
        identifier_value="f/r/task/1",
        group="f/g",
        instantiates_uri="urn:fhir-smartflow:flow:f:1#r",
        description="Review",
        authored_on="2026-11-25T10:00:00Z",
        requester="Device/fhir-smartflow",
        for_ref=f"Patient/{puuid}",
        performer_types=[role],
        due="2026-11-28T10:00:00Z",
    )
    Task.model_validate(task_res)
    target.create(task_res, "f/r/task/1")
    flag = fr.build_flag(
        identifier_system=SYSTEM,
        identifier_value="f/p/flag/1",
        text="Check answers",
        subject=f"Patient/{puuid}",
        author="Device/fhir-smartflow",
        start="2026-11-25T10:00:00Z",
        roles=[role],
        practitioners=["Practitioner/p9"],
    )
    Flag.model_validate(flag)
    target.create(flag, "f/p/flag/1")
    staff = fr.build_communication(
        identifier_system=SYSTEM,
        identifier_value="f/r/communication/1",
        method="staff-message",
        medium=channel_spec("staff-message").medium,
        text="Review",
        sender="Device/fhir-smartflow",
        status="completed",
        recipients=["Practitioner/p9"],
        subject=f"Patient/{puuid}",
        based_on_task="f/r/task/1",
    )
    Communication.model_validate(staff)
    target.create(staff, "f/r/communication/1")  # the Task's message already carries it
    assert [m["to"] for m in emulator.messages] == ["cmsmith", "cmsmith", "drp9"]


def test_two_workers_refreshing_at_once_spend_the_refresh_token_once(
    setup, emulator: OpenEmrEmulator, redis_conn: redis.Redis
) -> None:
    import threading

    settings, _, _ = setup
    stores = [user_token_store(settings, redis_conn, env=ENV) for _ in range(4)]  # four worker processes
    redis_conn.delete("t:openemr:access")
    before = emulator.requests.count("POST /oauth2/default/token")
    tokens: list[str] = []
    threads = [threading.Thread(target=lambda s=s: tokens.append(s.token())) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(tokens) == 4 and len(set(tokens)) == 1  # all got the one fresh token
    assert emulator.requests.count("POST /oauth2/default/token") == before + 1  # rotation-safe: one refresh
    assert redis_conn.get("t:openemr:auth_degraded") is None


def test_standard_api_calls_go_through_the_guarded_counted_transport(
    setup, emulator: OpenEmrEmulator, redis_conn: redis.Redis
) -> None:
    from fhir_smartflow.fhir.errors import FhirUrlRejected

    _, target, puuid = setup
    target.create(task(puuid, "f/t/task/counted"), "f/t/task/counted")
    metrics = Metrics(redis_conn, "t:")
    assert metrics.counter_value("openemr_requests", method="GET", status="200") == 1  # the pid lookup
    assert metrics.counter_value("openemr_requests", method="POST", status="201") == 1  # the message
    before = len(emulator.requests)
    with pytest.raises(FhirUrlRejected):  # nothing outside /apis/<site>/api is ever requested
        target.api.request("GET", "/../../../oauth2/default/token", scope="-")
    assert len(emulator.requests) == before


def test_a_failure_notice_about_a_task_message_still_reaches_the_owner(setup, emulator: OpenEmrEmulator) -> None:
    """The undelivered SMS is basedOn its Task (so it is never mirrored); the notice about it is a message."""
    from datetime import UTC, datetime

    from fhir_smartflow.delivery.notice import failure_notice
    from fhir_smartflow.delivery.outcome import DeliveryOutcome
    from fhir_smartflow.engine import resources as fr
    from fhir_smartflow.engine.plan import Deliver

    settings, target, puuid = setup
    target.config = dataclasses.replace(settings.openemr, users={**settings.openemr.users, "Practitioner/p9": "drp9"})
    sms = fr.build_communication(
        identifier_system=SYSTEM,
        identifier_value="f/r/Communication/sms",
        method="sms",
        medium=channel_spec("sms").medium,
        text="Please complete your forms",
        sender="Device/fhir-smartflow",
        status="not-done",
        recipients=[f"Patient/{puuid}"],
        subject=f"Patient/{puuid}",
        based_on_task="f/r/Task/1",
    )
    stored = target.create(sms, "f/r/Communication/sms")
    deliver = Deliver(
        "sms", f"Patient/{puuid}", "hi", "f/r/Deliver/sms", "f/r/Communication/sms", owner=("Practitioner/p9",)
    )
    notice = failure_notice(
        deliver,
        DeliveryOutcome("not-done", "sms delivery failed: provider HTTP 400", failed=True),
        stored,
        identifier_system=SYSTEM,
        device_id="fhir-smartflow",
        patient=f"Patient/{puuid}",
        flow_id="f",
        now=datetime(2026, 11, 25, 10, tzinfo=UTC),
    )
    Communication.model_validate(notice.resource)
    target.create(notice.resource, notice.identifier)
    assert [m["to"] for m in emulator.messages] == ["drp9"]
