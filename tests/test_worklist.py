"""The staff worklist against the sandbox as the EHR (real `sandbox` and `serve` processes over HTTP; the
client here is `requests`, following redirects as a browser does): EHR and standalone launch, whose tasks
are listed, completing and "not needed" as the user with a Provenance, refusals (not theirs, no CSRF token,
another iss), the session (opaque cookie, tokens in Redis, refresh) and staff messages marked read."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from fhir_smartflow.config import WorklistConfig
from fhir_smartflow.worklist import WorklistDeps, create_worklist_app
from fhir_smartflow.worklist.scopes import requested_scopes
from fhir_smartflow.worklist.sessions import COOKIE, SessionStore
from fhir_smartflow.worklist.smart_client import Client
from tests.support.lifecycle import PREFIX
from tests.support.worklist import (
    PASSWORDS,
    ROLE_CODE,
    ROLE_SYSTEM,
    WorklistStack,
    ehr_launch,
    key_pair,
    login_form,
    put,
    start_worklist_stack,
)

pytestmark = pytest.mark.integration

FLOW = "urn:fhir-smartflow:flow:intake-forms:1#review-intake-packet"


def task(tid: str, patient: str, due: datetime, **more: Any) -> dict[str, Any]:
    return {
        "resourceType": "Task",
        "id": tid,
        "status": "requested",
        "intent": "order",
        "instantiatesUri": FLOW,
        "description": f"Review {tid}",
        "for": {"reference": f"Patient/{patient}"},
        "restriction": {"period": {"end": due.strftime("%Y-%m-%dT%H:%M:%SZ")}},
        **more,
    }


@pytest.fixture
def wl(processes, run_cli, redis_url, redis_conn, tmp_path) -> WorklistStack:
    stack = start_worklist_stack(processes, run_cli, redis_url, redis_conn, tmp_path, workers=0)
    ehr, now = stack.ehr.base, datetime.now(UTC)
    for pid, given in (("p1", "Wanda"), ("p2", "Xavier")):
        put(ehr, {"resourceType": "Patient", "id": pid, "active": True, "name": [{"given": [given], "family": "Lo"}]})
    put(ehr, task("t-owner", "p1", now - timedelta(days=1), owner={"reference": "Practitioner/alice"}))
    put(ehr, task("t-role", "p1", now + timedelta(days=2), owner={"reference": "PractitionerRole/alice-cm"}))
    cm = [{"coding": [{"system": ROLE_SYSTEM, "code": ROLE_CODE}]}]
    put(ehr, task("t-type", "p2", now + timedelta(days=1), performerType=cm))
    put(ehr, task("t-bob", "p1", now, owner={"reference": "Practitioner/bob"}))
    put(ehr, {**task("t-done", "p1", now, owner={"reference": "Practitioner/alice"}), "status": "completed"})
    return stack


def rows(page: requests.Response) -> list[str]:
    return re.findall(r'data-task="([^"]+)"', page.text)


def csrf(page: requests.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, page.text
    return found.group(1)


def test_ehr_launch_lists_the_users_tasks_for_the_patient_sorted_by_due(wl: WorklistStack) -> None:
    launch = ehr_launch(wl.ehr.base, "p1", "alice")
    assert launch.page.status_code == 200, launch.page.text
    assert launch.page.url == f"{wl.worklist}/"
    assert rows(launch.page) == ["t-owner", "t-role"]  # patient context: not p2's; never bob's; not closed ones
    assert 'class="overdue"' in launch.page.text and "Wanda Lo" in launch.page.text
    assert "intake-forms (review-intake-packet)" in launch.page.text
    headers = launch.page.headers
    assert "default-src 'self'" in headers["Content-Security-Policy"]


def test_standalone_launch_lists_every_task_of_the_user(wl: WorklistStack) -> None:
    http = requests.Session()
    page = http.get(f"{wl.worklist}/start", timeout=15)
    action, fields = login_form(page)
    listed = http.post(action, data={**fields, "username": "alice", "password": PASSWORDS["alice"]}, timeout=15)
    assert rows(listed) == ["t-owner", "t-type", "t-role"]
    bob = ehr_launch(wl.ehr.base, "p1", "bob")
    assert rows(bob.page) == ["t-bob"]


def test_complete_writes_status_and_provenance_as_the_user(wl: WorklistStack) -> None:
    launch = ehr_launch(wl.ehr.base, "p1", "alice")
    done = launch.http.post(f"{wl.worklist}/task/t-owner/complete", data={"csrf": csrf(launch.page)}, timeout=15)
    assert done.status_code == 200 and rows(done) == ["t-role"]
    stored = requests.get(f"{wl.ehr.base}/Task/t-owner", timeout=10).json()
    assert stored["status"] == "completed"
    provenance = [
        p
        for p in requests.get(f"{wl.ehr.base}/Provenance", timeout=10).json().get("entry", [])
        if p["resource"]["target"][0]["reference"].startswith("Task/t-owner")
    ]
    assert len(provenance) == 1
    assert provenance[0]["resource"]["agent"][0]["who"]["reference"] == "Practitioner/alice"
    assert provenance[0]["resource"]["target"][0]["reference"] == f"Task/t-owner/_history/{stored['meta']['versionId']}"
    history = launch.http.get(f"{wl.worklist}/task/t-owner", timeout=15)
    assert "Practitioner/alice" in history.text and "task completed" in history.text
    assert re.findall(r"<li>[^<]*: (\w+)</li>", history.text.split('class="versions"')[1])[:2] == [
        "requested",
        "completed",
    ]


def test_not_needed_needs_a_reason_and_records_it(wl: WorklistStack) -> None:
    launch = ehr_launch(wl.ehr.base, "p1", "alice")
    token = csrf(launch.page)
    assert (
        launch.http.post(f"{wl.worklist}/task/t-role/not-needed", data={"csrf": token}, timeout=15).status_code == 400
    )
    answer = launch.http.post(
        f"{wl.worklist}/task/t-role/not-needed", data={"csrf": token, "reason": "seen in clinic"}, timeout=15
    )
    assert answer.status_code == 200
    stored = requests.get(f"{wl.ehr.base}/Task/t-role", timeout=10).json()
    assert stored["status"] == "cancelled" and stored["statusReason"]["text"] == "seen in clinic"


def test_refusals_write_nothing(wl: WorklistStack) -> None:
    launch = ehr_launch(wl.ehr.base, "p1", "alice")
    before = requests.get(f"{wl.ehr.base}/Task/t-bob", timeout=10).json()["meta"]["versionId"]
    not_mine = launch.http.post(f"{wl.worklist}/task/t-bob/complete", data={"csrf": csrf(launch.page)}, timeout=15)
    assert not_mine.status_code == 403
    assert launch.http.get(f"{wl.worklist}/task/t-bob", timeout=15).status_code == 403  # not even shown
    no_csrf = launch.http.post(f"{wl.worklist}/task/t-owner/complete", data={}, timeout=15)
    assert no_csrf.status_code == 400
    wrong_csrf = launch.http.post(f"{wl.worklist}/task/t-owner/complete", data={"csrf": "x"}, timeout=15)
    assert wrong_csrf.status_code == 400
    assert requests.get(f"{wl.ehr.base}/Task/t-bob", timeout=10).json()["meta"]["versionId"] == before
    assert requests.get(f"{wl.ehr.base}/Task/t-owner", timeout=10).json()["status"] == "requested"
    assert requests.get(f"{wl.ehr.base}/Provenance", timeout=10).json().get("entry", []) == []
    assert requests.get(f"{wl.worklist}/", timeout=15).status_code == 401  # no session: nothing shown


def test_every_state_changing_route_needs_the_csrf_token(wl: WorklistStack, redis_conn) -> None:
    app = create_worklist_app(
        WorklistDeps(
            config=WorklistConfig(client_id="x"),
            client=Client("http://127.0.0.1:9", "x", None, requests.Session()),
            sessions=SessionStore(redis_conn, PREFIX, 60),
            clock=lambda: datetime.now(UTC),
        )
    )
    posts = [r.rule for r in app.url_map.iter_rules() if r.methods and "POST" in r.methods]
    assert posts, "the worklist has state-changing routes"
    launch = ehr_launch(wl.ehr.base, "p1", "alice")
    for rule in posts:
        url = wl.worklist + rule.replace("<task_id>", "t-owner").replace("<outcome>", "complete")
        assert launch.http.post(url, data={"reason": "x"}, timeout=15).status_code == 400, rule
    assert requests.get(f"{wl.ehr.base}/Task/t-owner", timeout=10).json()["status"] == "requested"


def test_launch_from_another_iss_is_refused_without_contacting_it(wl: WorklistStack) -> None:
    answer = requests.get(
        f"{wl.worklist}/launch", params={"iss": "http://attacker.example/fhir", "launch": "x"},
        allow_redirects=False, timeout=15,
    )  # fmt: skip
    assert answer.status_code == 400 and "Location" not in answer.headers
    assert COOKIE not in answer.cookies


def test_the_browser_holds_only_an_opaque_session_id_and_tokens_refresh(wl: WorklistStack, redis_conn) -> None:
    launch = ehr_launch(wl.ehr.base, "p1", "alice")
    cookies = list(launch.http.cookies)
    assert [c.name for c in cookies] == [COOKIE]
    cookie = cookies[0]
    assert cookie.has_nonstandard_attr("HttpOnly") and cookie.get_nonstandard_attr("SameSite") == "Lax"
    keys = redis_conn.keys(f"{PREFIX}worklist:session:*")
    assert len(keys) == 1 and cookie.value not in keys[0].decode()
    session = json.loads(redis_conn.get(keys[0]))
    assert session["access_token"] not in launch.page.text and session["access_token"] != cookie.value
    old = session["access_token"]
    redis_conn.set(keys[0], json.dumps({**session, "expires_at": 0}))  # the access token has expired
    assert rows(launch.http.get(f"{wl.worklist}/", timeout=15)) == ["t-owner", "t-role"]
    assert json.loads(redis_conn.get(keys[0]))["access_token"] != old
    broken = json.loads(redis_conn.get(keys[0]))
    redis_conn.set(keys[0], json.dumps({**broken, "expires_at": 0, "refresh_token": "revoked"}))
    assert launch.http.get(f"{wl.worklist}/", timeout=15).status_code == 401  # refused refresh: signed out
    assert redis_conn.get(keys[0]) is None
    assert "alice" not in wl.stack.service.serve.output().replace("Practitioner/alice", "")  # no names logged
    assert "Wanda" not in wl.stack.service.serve.output()
    logs = wl.stack.service.serve.output() + wl.ehr.process.output()
    assert old not in logs and session["refresh_token"] not in logs and cookie.value not in logs  # no secrets logged


def test_staff_messages_are_shown_and_marked_read_when_opened(wl: WorklistStack) -> None:
    ehr = wl.ehr.base
    put(ehr, {"resourceType": "Group", "id": "cm-group", "type": "practitioner", "actual": True,
              "member": [{"entity": {"reference": "Practitioner/alice"}}]})  # fmt: skip
    message = {"resourceType": "Communication", "status": "completed", "sent": "2026-01-01T10:00:00Z"}
    put(ehr, {**message, "id": "c1", "recipient": [{"reference": "Group/cm-group"}],
              "payload": [{"contentString": "Please call the patient back"}]})  # fmt: skip
    put(ehr, {**message, "id": "c2", "recipient": [{"reference": "Practitioner/bob"}],
              "payload": [{"contentString": "For bob only"}]})  # fmt: skip
    launch = ehr_launch(ehr, "p1", "alice")
    listed = launch.http.get(f"{wl.worklist}/messages", timeout=15)
    assert 'data-message="c1"' in listed.text and "For bob only" not in listed.text and "unread" in listed.text
    opened = launch.http.get(f"{wl.worklist}/messages/c1", timeout=15)
    assert "Please call the patient back" in opened.text
    assert requests.get(f"{ehr}/Communication/c1", timeout=10).json().get("received")
    assert launch.http.get(f"{wl.worklist}/messages/c2", timeout=15).status_code == 403


def test_public_client_with_v1_scopes(processes, run_cli, redis_url, redis_conn, tmp_path) -> None:
    public = {"client_id": "worklist-public", "client_secret_env": "", "scope_version": "v1"}
    stack = start_worklist_stack(processes, run_cli, redis_url, redis_conn, tmp_path, workers=0, worklist=public)
    owned = task("t-v1", "p1", datetime.now(UTC), owner={"reference": "Practitioner/alice"})
    put(stack.ehr.base, {"resourceType": "Patient", "id": "p1", "active": True})
    put(stack.ehr.base, owned)
    launch = ehr_launch(stack.ehr.base, "p1", "alice", app="worklist-public")
    assert rows(launch.page) == ["t-v1"]
    (key,) = redis_conn.keys(f"{PREFIX}worklist:session:*")
    assert "user/Task.write" in json.loads(redis_conn.get(key))["scope"].split()
    done = launch.http.post(f"{stack.worklist}/task/t-v1/complete", data={"csrf": csrf(launch.page)}, timeout=15)
    assert done.status_code == 200
    assert requests.get(f"{stack.ehr.base}/Task/t-v1", timeout=10).json()["status"] == "completed"


def test_confidential_client_with_private_key_jwt(processes, run_cli, redis_url, redis_conn, tmp_path) -> None:
    pem, jwks = key_pair(tmp_path)
    keyed = {"client_id": "worklist-keys", "client_secret_env": "", "private_key_file": str(pem), "key_id": "wl-key-1"}
    stack = start_worklist_stack(
        processes, run_cli, redis_url, redis_conn, tmp_path, workers=0, worklist=keyed, jwks_file=jwks
    )
    put(stack.ehr.base, {"resourceType": "Patient", "id": "p1", "active": True})
    put(stack.ehr.base, task("t-keys", "p1", datetime.now(UTC), owner={"reference": "Practitioner/alice"}))
    launch = ehr_launch(stack.ehr.base, "p1", "alice", app="worklist-keys")
    assert rows(launch.page) == ["t-keys"], launch.page.text


def test_scopes_are_exactly_what_the_worklist_uses_in_v2_or_v1() -> None:
    v2 = requested_scopes("v2", ehr_launch=True).split()
    assert v2[:4] == ["launch", "openid", "fhirUser", "online_access"]
    assert {"user/Task.rus", "user/Patient.r", "user/Communication.rus", "user/Questionnaire.r"} <= set(v2)
    v1 = requested_scopes("v1", ehr_launch=False).split()
    assert "launch" not in v1 and {"user/Task.read", "user/Task.write", "user/Patient.read"} <= set(v1)
