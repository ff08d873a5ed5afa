"""Workflow lifecycle end to end (issue 6) with the real parts: the `sandbox` FHIR store process, `serve`,
`worker` processes (each running the follow-up scheduler thread) on the real Redis, and a test clock
shared through Redis (`[scheduler] test_clock = true`): the test moves "now" by writing
`<prefix>clock:now`, never by sleeping.

Resource times come from the store (real wall-clock `meta.lastUpdated`), so the test clock starts at the
real "now" and is moved forward from there.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis
import requests
from channel_servers import SID, TOKEN, TwilioFake, serve
from conftest import free_port, smartflow_cmd
from fhir.resources.R4B.communication import Communication
from fhir.resources.R4B.task import Task

from fhir_smartflow.connections import Keys
from fhir_smartflow.metrics import Metrics
from fhir_smartflow.sandbox.subscriptions import self_subscription
from fhir_smartflow.scheduling.clock import RedisClock
from fhir_smartflow.scheduling.scheduler import RqScheduler, iter_pending

pytestmark = pytest.mark.integration

FHIR = {"Content-Type": "application/fhir+json"}
SECRET = "lifecycle-e2e-secret"
PREFIX = "lc:"
SYSTEM = "urn:fhir-smartflow:id"
CLINIC_TZ = ZoneInfo("America/New_York")
ROOT = Path(__file__).resolve().parent.parent
FIXTURE_FLOWS = ROOT / "tests" / "fixtures" / "flows"
OPEN = {"draft", "requested", "received", "accepted", "ready", "in-progress", "on-hold"}


def wait_for(check: Callable[[], Any], what: str, log: Callable[[], str] = lambda: "", timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{log()[-6000:]}")
        time.sleep(0.1)


def ident(resource: dict[str, Any]) -> str:
    return next(i["value"] for i in resource["identifier"] if i["system"] == SYSTEM)


def category(comm: dict[str, Any]) -> str:
    return comm["category"][0]["coding"][0]["code"]


def medium(comm: dict[str, Any]) -> str:
    return comm["medium"][0]["text"]


def based_on(comm: dict[str, Any]) -> str | None:
    refs = comm.get("basedOn") or []
    return refs[0]["identifier"]["value"] if refs else None


@dataclass
class Stack:
    store: str
    notify: str
    conn: redis.Redis
    clock: RedisClock
    config: Path
    env: dict[str, str]
    logs: list[Callable[[], str]] = field(default_factory=list)

    # -- store ------------------------------------------------------------------------------------------
    def log(self) -> str:
        return "\n".join(f() for f in self.logs)

    def subscribe(self, *types: str) -> None:
        for rtype in types:
            sid = f"lc-{rtype.lower()}"
            sub = self_subscription(
                sid, self.notify, f"X-Smartflow-Secret: {SECRET}", rtype, "backport", "full-resource", 0
            )
            put = requests.put(f"{self.store}/Subscription/{sid}", json=sub, headers=FHIR, timeout=10)
            assert put.status_code < 300, put.text
            wait_for(
                lambda sid=sid: (
                    requests.get(f"{self.store}/Subscription/{sid}", timeout=10).json()["status"] == "active"
                ),
                f"Subscription/{sid} active",
            )

    def put(self, resource: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.store}/{resource['resourceType']}/{resource['id']}"
        answer = requests.put(url, json=resource, headers=FHIR, timeout=10)
        assert answer.status_code in (200, 201), answer.text
        return answer.json()

    def read(self, reference: str) -> dict[str, Any]:
        return requests.get(f"{self.store}/{reference}", timeout=10).json()

    def search(self, rtype: str, **params: str) -> list[dict[str, Any]]:
        bundle = requests.get(f"{self.store}/{rtype}", params={"_count": "500", **params}, timeout=10).json()
        return [e["resource"] for e in bundle.get("entry", [])]

    def tasks(self, patient: str, flow: str) -> list[dict[str, Any]]:
        prefix = f"urn:fhir-smartflow:flow:{flow}:"
        return [t for t in self.search("Task", patient=patient) if t.get("instantiatesUri", "").startswith(prefix)]

    def comms(self, patient: str, cat: str | None = None) -> list[dict[str, Any]]:
        found = self.search("Communication", subject=patient)
        return [c for c in found if cat is None or category(c) == cat]

    def new_patient(self, *, adult: bool = True, phone: str = "", active: bool = True, pid: str = "") -> str:
        pid = pid or uuid.uuid4().hex[:16]
        body: dict[str, Any] = {
            "resourceType": "Patient",
            "id": pid,
            "active": active,
            "name": [{"given": ["Lifey"], "family": "Testperson"}],
            "birthDate": "1970-05-06" if adult else "2020-05-06",
        }
        if phone:
            body["telecom"] = [{"system": "phone", "value": phone, "use": "mobile"}]
        self.put(body)
        return f"Patient/{pid}"

    def appointment(self, patient: str, status: str, start: datetime) -> str:
        aid = uuid.uuid4().hex[:16]
        self.put(
            {
                "resourceType": "Appointment",
                "id": aid,
                "status": status,
                "start": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "end": (start + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "participant": [{"actor": {"reference": patient}, "status": "accepted"}],
            }
        )
        return f"Appointment/{aid}"

    def set_task_status(self, task: dict[str, Any], status: str) -> None:
        current = self.read(f"Task/{task['id']}")
        self.put({**current, "status": status})

    def cli(self, *args: str) -> Any:
        """Run a `fhir-smartflow` command with the stack's config; its last output line as JSON."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTFLOW_")} | self.env
        done = subprocess.run(smartflow_cmd(*args), env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout[done.stdout.index("{") :])

    # -- time and follow-ups ------------------------------------------------------------------------------
    def move_clock(self, when: datetime) -> None:
        self.clock.set(when)

    def scheduler(self) -> RqScheduler:
        from rq import Queue

        return RqScheduler(self.conn, Keys(PREFIX), Queue("smartflow", connection=self.conn), self.clock)

    def pending(self, **match: str) -> list[Any]:
        items = iter_pending(self.scheduler(), 10_000)
        return [p for p in items if all(p.payload.get(k) == v for k, v in match.items())]

    def jobs(self, kind: str, result: str) -> int:
        return Metrics(self.conn, PREFIX).counter_value("scheduled_jobs", kind=kind, result=result)

    def flow_runs(self, result: str) -> int:
        return Metrics(self.conn, PREFIX).counter_value("flow_runs", result=result)

    def wait_settled(self) -> None:
        """Wait until the queue is empty and no job is running (every fired follow-up has run)."""
        from rq import Queue
        from rq.registry import StartedJobRegistry

        queue = Queue("smartflow", connection=self.conn)
        started = StartedJobRegistry(queue=queue)
        wait_for(lambda: queue.count == 0 and started.count == 0, "queue drained", self.log)


@pytest.fixture
def start_stack(processes, redis_url: str, redis_conn: redis.Redis, tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """Start the sandbox store, `serve` and N `worker` processes; the test clock starts at real now."""
    stacks: list[Stack] = []

    def start(*, workers: int = 1, extra_config: str = "", flows: tuple[str, ...] = ("flows/examples",)) -> Stack:
        store_port, serve_port = free_port(), free_port()
        store = f"http://127.0.0.1:{store_port}"
        sandbox = processes(smartflow_cmd("sandbox", "--port", str(store_port)), name="sandbox")
        clock = RedisClock(redis_conn, Keys(PREFIX))
        clock.set(datetime.now(UTC).replace(microsecond=0))
        config = tmp_path / "smartflow.toml"
        config.write_text(
            f"""
[server]
port = {serve_port}
[redis]
url = "{redis_url}"
key_prefix = "{PREFIX}"
[fhir]
base_url = "{store}"
max_retries = 4
backoff_base_seconds = 0.05
backoff_max_seconds = 0.5
[engine]
flows = {json.dumps([str(ROOT / f) for f in flows])}
mappings = ["{ROOT / "mappings"}"]
templates = ["{ROOT / "templates"}"]
[scheduler]
interval_seconds = 0.1
lock_ttl_seconds = 2.0
test_clock = true
{extra_config}
[[subscriptions]]
id = "sandbox"
header = "X-Smartflow-Secret"
secret_env = "LC_SECRET"
criteria = "Patient?"
"""
        )
        env = {"LC_SECRET": SECRET, "SMARTFLOW_CONFIG": str(config), "LC_SMS_TOKEN": TOKEN}
        serve_proc = processes(smartflow_cmd("serve"), env, "serve")
        logs = [serve_proc.output]
        for n in range(workers):
            logs.append(processes(smartflow_cmd("worker"), env, f"worker{n}").output)
        sandbox.wait_http(f"{store}/metadata")
        serve_proc.wait_http(f"http://127.0.0.1:{serve_port}/healthz")
        stack = Stack(store, f"http://127.0.0.1:{serve_port}/fhir/notify", redis_conn, clock, config, env, logs)
        stacks.append(stack)
        return stack

    yield start
    for stack in stacks:
        out = stack.log()
        assert "Lifey" not in out and "+1555" not in out  # no names / numbers in INFO logs


def intake_task(stack: Stack, patient: str) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        tasks = [t for t in stack.tasks(patient, "intake-forms") if t.get("code", {}).get("coding")]
        return tasks[0] if tasks and len(stack.comms(patient)) >= 3 else None

    return wait_for(found, f"intake Task of {patient}", stack.log)


def due_of(task: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(task["restriction"]["period"]["end"].replace("Z", "+00:00"))


# -- 1. reminders ------------------------------------------------------------------------------------------


def test_reminder_fires_once_for_open_tasks_only(start_stack) -> None:
    stack = start_stack(workers=2)  # two workers, each with a scheduler thread (one holds the lock)
    stack.subscribe("Patient")
    open_patient, done_patient = stack.new_patient(), stack.new_patient()
    open_task, done_task = intake_task(stack, open_patient), intake_task(stack, done_patient)
    assert stack.comms(open_patient, "reminder") == []
    reminders = [p for p in iter_pending(stack.scheduler(), 1000) if p.kind == "reminder"]
    assert {p.payload["task_identifier"] for p in reminders} == {ident(open_task), ident(done_task)}

    stack.set_task_status(done_task, "completed")  # an EHR user completes it before the reminder time
    remind_at = due_of(open_task) - timedelta(days=1)
    stack.move_clock(remind_at - timedelta(minutes=5))
    time.sleep(0.5)  # several scheduler ticks: nothing is due yet
    stack.wait_settled()
    assert stack.comms(open_patient, "reminder") == []

    stack.move_clock(remind_at + timedelta(minutes=1))
    sent = wait_for(lambda: stack.comms(open_patient, "reminder"), "reminder Communications", stack.log)
    wait_for(lambda: stack.jobs("reminder", "skipped-closed") == 1, "the completed task's reminder skipped", stack.log)
    stack.wait_settled()
    # More ticks, another clock move and a one-off `scheduler --once` from a third process: nothing new.
    stack.move_clock(remind_at + timedelta(minutes=30))
    time.sleep(0.5)
    assert stack.cli("scheduler", "--once", "--json") == {"enqueued": 0}
    stack.wait_settled()

    sent = stack.comms(open_patient, "reminder")
    assert sorted(medium(c) for c in sent) == ["email", "portal", "sms"]  # one per method, exactly once
    assert len({ident(c) for c in sent}) == len(sent) == 3
    for comm in sent:
        Communication.model_validate(comm)
        assert based_on(comm) == ident(open_task)
        assert comm["topic"]["text"].startswith("Reminder: ")
    assert stack.jobs("reminder", "executed") == 1
    assert stack.comms(done_patient, "reminder") == []  # completed task: no reminder
    assert stack.read(f"Task/{done_task['id']}")["status"] == "completed"
