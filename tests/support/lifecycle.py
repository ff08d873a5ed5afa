"""The whole service as real processes for the lifecycle end-to-end tests: the `sandbox` FHIR store,
`serve` and `worker` processes (each running the follow-up scheduler thread) on the real Redis, and a test
clock shared through Redis (`[scheduler] test_clock = true`): tests move "now" by writing
`<prefix>clock:now`, never by sleeping. ``start_stack`` is the fixture (made visible in tests/conftest.py).

Resource times come from the store (real wall-clock `meta.lastUpdated`), so the test clock starts at the
real "now" and is moved forward from there.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis
import requests

from fhir_smartflow.connections import Keys
from fhir_smartflow.metrics import Metrics
from fhir_smartflow.sandbox.subscriptions import self_subscription
from fhir_smartflow.scheduling.clock import RedisClock
from fhir_smartflow.scheduling.scheduler import RqScheduler, iter_pending
from tests.support.channels import SID, TOKEN
from tests.support.fhir import client_id, search_all, subscription_events, wait_subscription
from tests.support.net import wait_for
from tests.support.procs import ROOT, Process
from tests.support.service import Service, merged, start_service
from tests.support.settle import event_state, scheduler_rounds, wait_settled

FHIR = {"Content-Type": "application/fhir+json"}
SECRET = "lifecycle-e2e-secret"
PREFIX = "lc:"
SYSTEM = "urn:fhir-smartflow:id"
CLINIC_TZ = ZoneInfo("America/New_York")
FIXTURE_FLOWS = ROOT / "tests" / "fixtures" / "flows"
OPEN = {"draft", "requested", "received", "accepted", "ready", "in-progress", "on-hold"}


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
    service: Service
    conn: redis.Redis
    clock: RedisClock
    run_cli: Callable[..., subprocess.CompletedProcess[str]]

    @property
    def store(self) -> str:
        return self.service.store

    @property
    def notify(self) -> str:
        return self.service.notify

    @property
    def env(self) -> dict[str, str]:
        return self.service.env

    @property
    def workers(self) -> list[Process]:
        return self.service.workers

    def start_worker(self) -> Process:
        return self.service.start_worker()

    # -- store ------------------------------------------------------------------------------------------
    def log(self) -> str:
        return self.service.logs()

    def subscribe(self, *types: str) -> None:
        for rtype in types:
            sid = f"lc-{rtype.lower()}"
            sub = self_subscription(
                sid, self.notify, f"X-Smartflow-Secret: {SECRET}", rtype, "backport", "full-resource", 0
            )
            put = requests.put(f"{self.store}/Subscription/{sid}", json=sub, headers=FHIR, timeout=10)
            assert put.status_code < 300, put.text
            wait_subscription(self.store, sid)

    def put(self, resource: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.store}/{resource['resourceType']}/{resource['id']}"
        answer = requests.put(url, json=resource, headers=FHIR, timeout=10)
        assert answer.status_code in (200, 201), answer.text
        return answer.json()

    def read(self, reference: str) -> dict[str, Any]:
        return requests.get(f"{self.store}/{reference}", timeout=10).json()

    def search(self, rtype: str, **params: str) -> list[dict[str, Any]]:
        return search_all(self.store, rtype, params)

    def tasks(self, patient: str, flow: str) -> list[dict[str, Any]]:
        prefix = f"urn:fhir-smartflow:flow:{flow}:"
        return [t for t in self.search("Task", patient=patient) if t.get("instantiatesUri", "").startswith(prefix)]

    def comms(self, patient: str, cat: str | None = None) -> list[dict[str, Any]]:
        found = self.search("Communication", subject=patient)
        return [c for c in found if cat is None or category(c) == cat]

    def new_patient(self, *, adult: bool = True, phone: str = "", active: bool = True, pid: str = "") -> str:
        pid = pid or client_id()
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
        aid = client_id()
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
        done = self.run_cli(*args, env=self.env, timeout=30)
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
        """Until every notification the store sent has been received and every job has run (the
        queue, rq's dequeued list, the started and retry registries are empty: fired follow-ups too)."""
        wait_settled(lambda: event_state(self.conn, "smartflow", PREFIX),
                     webhook_deliveries=lambda: subscription_events(self.store), log=self.log)  # fmt: skip

    def settle(self) -> None:
        """After a clock move: let the scheduler tick on the new time (a follow-up fired too early would
        be fired then), wait until everything due by the test clock has left the pending set, then
        until it has run."""
        scheduler_rounds(self.conn, self.scheduler().skeys.lock, log=self.log)
        sched, now = self.scheduler(), self.clock.now()
        wait_for(
            lambda: ((n := sched.next_due()) is None or n > now) and not self.conn.hlen(sched.skeys.inflight),
            "due follow-ups enqueued",
            self.log,
        )
        self.wait_settled()


@pytest.fixture
def start_stack(
    processes, run_cli, redis_url: str, redis_conn: redis.Redis, tmp_path: Path
) -> Iterator[Callable[..., Stack]]:
    """Start the sandbox store (``faults``: with ``/$faults``), `serve` and N `worker` processes; the test
    clock starts at real now."""
    stacks: list[Stack] = []

    def start(
        *,
        workers: int = 1,
        sections: dict[str, dict[str, Any]] | None = None,
        flows: tuple[str, ...] = ("flows/examples",),
        faults: bool = False,
        profile: str = "lenient",
    ) -> Stack:
        clock = RedisClock(redis_conn, Keys(PREFIX))
        clock.set(datetime.now(UTC).replace(microsecond=0))
        lifecycle = {
            "fhir": {"max_retries": 4, "backoff_base_seconds": 0.05, "backoff_max_seconds": 0.5},
            "engine": {
                "flows": [str(ROOT / f) for f in flows],
                "mappings": [str(ROOT / "mappings")],
                "templates": [str(ROOT / "templates")],
            },
            "scheduler": {"interval_seconds": 0.1, "lock_ttl_seconds": 2.0, "test_clock": True},
        }
        service = start_service(
            processes, tmp_path, redis_url=redis_url, prefix=PREFIX, secret=("LC_SECRET", SECRET),
            sections=merged(lifecycle, sections or {}), workers=workers, env={"LC_SMS_TOKEN": TOKEN}, faults=faults,
            profile=profile,  # hapi: client ids, references and their target types checked, the server activates
        )  # fmt: skip
        stack = Stack(service, redis_conn, clock, run_cli)
        # The example flows' staff owner: a strict server refuses a Task naming a CareTeam it does not have.
        stack.put({"resourceType": "CareTeam", "id": "front-desk", "status": "active", "name": "Front desk"})
        stacks.append(stack)
        return stack

    yield start
    for stack in stacks:
        out = stack.log()
        assert "Lifey" not in out and "+1555" not in out  # no names / numbers in INFO logs


def sms_config(provider: str) -> dict[str, dict[str, Any]]:
    """The ``[sms]`` section for a Twilio-shaped provider at ``provider``."""
    return {
        "sms": {"base_url": provider, "account_sid": SID, "token_env": "LC_SMS_TOKEN", "from_number": "+15550000000"}
    }


def next_local(hour: int, minute: int = 0, after: datetime | None = None) -> datetime:
    """The next clinic-local hh:mm after ``after`` (default: now), as UTC."""
    local = (after or datetime.now(UTC)).astimezone(CLINIC_TZ)
    candidate = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if candidate <= local:
        candidate = (local + timedelta(days=1)).replace(hour=hour, minute=minute, second=0, microsecond=0)
    return candidate.astimezone(UTC)
