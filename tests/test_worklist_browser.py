"""The worklist in a real browser (Debian's Chromium under Playwright) against the whole service as real
processes: the sandbox as the EHR, `serve` with the worklist, a `worker` with the follow-up scheduler, Redis.

A case manager opens the worklist from the sandbox's EHR-launch page, signs in, sees the intake review task
the flow made (with its due date) and completes it; the workflow's sibling task is cancelled and its
reminder dropped. A user cannot complete a task that is not theirs. The browser holds no token. With
``SMARTFLOW_WORKLIST_SCREENSHOTS=1`` the pages are saved as docs/worklist/*.png.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from datetime import datetime
from typing import Any

import pytest

from fhir_smartflow.scheduling.scheduler import iter_pending
from fhir_smartflow.worklist.sessions import COOKIE
from tests.support.lifecycle import CLINIC_TZ, OPEN, PREFIX, ident
from tests.support.net import wait_for
from tests.support.procs import ROOT
from tests.support.worklist import PASSWORDS, WorklistStack, start_worklist_stack

pytestmark = pytest.mark.integration

FLOWS = ROOT / "tests" / "fixtures" / "flows-worklist"
SCREENSHOTS = ROOT / "docs" / "worklist"


def shot(page: Any, name: str) -> None:
    if os.environ.get("SMARTFLOW_WORKLIST_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


@pytest.fixture
def wl(processes, run_cli, redis_url, redis_conn, tmp_path) -> WorklistStack:
    stack = start_worklist_stack(processes, run_cli, redis_url, redis_conn, tmp_path, workers=1, flows=(FLOWS,))
    stack.stack.subscribe("Patient", "Task")
    return stack


def flow_tasks(wl: WorklistStack, patient: str) -> dict[str, dict[str, Any]]:
    """The flow's Tasks by action (the part of instantiatesUri after '#')."""
    found = wl.stack.tasks(patient, "intake-review")
    return {t["instantiatesUri"].rpartition("#")[2]: t for t in found}


def reminders_of(wl: WorklistStack, task: dict[str, Any]) -> list[Any]:
    pending = iter_pending(wl.stack.scheduler(), 1000)
    return [p for p in pending if p.kind == "reminder" and p.payload.get("task_identifier") == ident(task)]


def made(wl: WorklistStack, patient: str) -> dict[str, dict[str, Any]]:
    def both() -> dict[str, dict[str, Any]] | None:
        tasks = flow_tasks(wl, patient)
        reminders = reminders_of(wl, tasks["send-intake-packet"]) if len(tasks) == 2 else []
        return tasks if reminders else None

    return wait_for(both, "the flow's two Tasks and the form's reminder", wl.stack.log)


def sign_in(page: Any, wl: WorklistStack, patient: str, user: str) -> None:
    page.goto(f"{wl.ehr.base}/launch?app=worklist&patient={patient.partition('/')[2]}")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", PASSWORDS[user])
    page.click("button[type=submit]")
    page.wait_for_url(f"{wl.worklist}/")


def test_case_manager_completes_the_review_and_the_workflow_ends(wl: WorklistStack, page: Any, redis_conn) -> None:
    patient = wl.stack.new_patient(pid=f"wl{uuid.uuid4().hex[:10]}")
    tasks = made(wl, patient)
    review, form = tasks["review-intake-packet"], tasks["send-intake-packet"]
    due = datetime.fromisoformat(review["restriction"]["period"]["end"].replace("Z", "+00:00"))
    shown_due = due.astimezone(CLINIC_TZ).strftime("%Y-%m-%d %H:%M")  # in the clinic's time

    page.goto(f"{wl.ehr.base}/launch?app=worklist&patient={patient.partition('/')[2]}")
    shot(page, "sandbox-sign-in")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", PASSWORDS["alice"])
    page.click("button[type=submit]")
    page.wait_for_url(f"{wl.worklist}/")
    row = page.locator(f'tr[data-task="{review["id"]}"]')
    assert row.count() == 1
    assert shown_due in row.locator("td.due").inner_text()
    assert "intake-review" in row.inner_text()
    assert page.locator(f'tr[data-task="{form["id"]}"]').count() == 0  # the patient's form is not staff work
    shot(page, "worklist")

    # No token in the browser: empty web storage, one cookie (the opaque session id), HttpOnly.
    assert page.evaluate("() => [localStorage.length, sessionStorage.length]") == [0, 0]
    cookies = page.context.cookies()
    assert [c["name"] for c in cookies] == [COOKIE] and cookies[0]["httpOnly"]
    (key,) = redis_conn.keys(f"{PREFIX}worklist:session:*")
    session = json.loads(redis_conn.get(key))
    for secret in (session["access_token"], session["refresh_token"]):
        assert secret not in cookies[0]["value"] and secret not in page.content()

    row.get_by_role("button", name="Complete").click()
    page.wait_for_load_state()
    assert page.locator(f'tr[data-task="{review["id"]}"]').count() == 0
    shot(page, "worklist-after-complete")

    def workflow_ended() -> bool:
        now = flow_tasks(wl, patient)
        return now["review-intake-packet"]["status"] == "completed" and now["send-intake-packet"]["status"] not in OPEN

    wait_for(workflow_ended, "the sibling task cancelled", wl.stack.log)
    assert flow_tasks(wl, patient)["send-intake-packet"]["status"] == "cancelled"
    wl.stack.wait_settled()
    assert reminders_of(wl, form) == []
    provenance = wl.stack.search("Provenance")
    assert any(
        p["target"][0]["reference"].startswith(f"Task/{review['id']}")
        and p["agent"][0]["who"]["reference"] == "Practitioner/alice"
        for p in provenance
    )
    page.goto(f"{wl.worklist}/task/{review['id']}")
    assert "task completed" in page.locator("ol.history").inner_text()
    shot(page, "task-history")

    # A staff message to a role alice holds: listed as new, read once opened.
    wl.stack.put({"resourceType": "Communication", "id": "wl-msg", "status": "completed",
                  "sent": "2026-01-05T14:00:00Z", "recipient": [{"reference": "PractitionerRole/alice-cm"}],
                  "payload": [{"contentString": "The intake packet came back incomplete; please call."}]})  # fmt: skip
    page.goto(f"{wl.worklist}/messages")
    assert "new" in page.locator('tr[data-message="wl-msg"]').inner_text()
    shot(page, "messages")
    page.locator('tr[data-message="wl-msg"] a').click()
    assert "incomplete" in page.locator("p.body").inner_text()
    page.goto(f"{wl.worklist}/messages")
    assert "read" in page.locator('tr[data-message="wl-msg"]').inner_text()


def test_a_user_cannot_complete_a_task_that_is_not_theirs(wl: WorklistStack, page: Any) -> None:
    patient = wl.stack.new_patient(pid=f"wl{uuid.uuid4().hex[:10]}")
    review = made(wl, patient)["review-intake-packet"]
    wl.stack.wait_settled()  # the flow's own Provenance may still be on its way
    before = wl.stack.read(f"Task/{review['id']}")["meta"]["versionId"]
    provenance_before = len(wl.stack.search("Provenance"))
    sign_in(page, wl, patient, "bob")  # bob holds no case-manager role
    assert page.locator("tr[data-task]").count() == 0
    token = re.search(r'name="csrf" value="([^"]+)"', page.content())
    assert token
    answer = page.request.post(f"{wl.worklist}/task/{review['id']}/complete", form={"csrf": token.group(1)})
    assert answer.status == 403
    assert wl.stack.read(f"Task/{review['id']}")["meta"]["versionId"] == before
    provenance = wl.stack.search("Provenance")
    assert len(provenance) == provenance_before  # the flow's own only
    assert not any(a["who"].get("reference") == "Practitioner/bob" for p in provenance for a in p["agent"])
