"""``PlanExecutor``: carries out a Plan idempotently (writes + Provenance, deliveries, schedules, cancels).

Error policy: a transient FHIR failure (server error, unavailable, lock busy) is re-raised so rq retries
the whole plan — every step is idempotent, so a rerun creates nothing twice and sends nothing twice. A
permanent failure of one action (4xx, invalid resource, `PlanDataError`) is recorded in
``ExecutionResult.errors`` and the other actions go on. Any other exception (a ``KeyError`` in our own
code, say) is a bug, not bad data: it propagates, and rq records the job as failed.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, Protocol

import redis

from fhir_smartflow.config import Settings
from fhir_smartflow.connections import Keys
from fhir_smartflow.delivery.claims import FINAL, REARMED, DeliveryClaims
from fhir_smartflow.delivery.deferral import rearm_schedule
from fhir_smartflow.delivery.notice import failure_notice
from fhir_smartflow.delivery.outcome import Deliverer, DeliveryOutcome
from fhir_smartflow.engine.identifiers import parse_instantiates_uri
from fhir_smartflow.engine.not_done import not_done_status_reason
from fhir_smartflow.engine.plan import (
    CancelGroup,
    Deliver,
    FlowRun,
    PatchTask,
    Plan,
    PlanAction,
    Schedule,
    WriteResource,
)
from fhir_smartflow.engine.provenance import build_provenance, provenance_identifier
from fhir_smartflow.engine.task_status import OPEN_TASK_STATUSES
from fhir_smartflow.engine.validation import ResourceInvalid, validate_resource
from fhir_smartflow.fhir.errors import FhirError
from fhir_smartflow.fhir.scrub import scrub_error, scrub_in_place
from fhir_smartflow.fhir.target import BatchItem, WriteBackTarget
from fhir_smartflow.instants import format_instant
from fhir_smartflow.metrics import Metrics
from fhir_smartflow.scheduling.scheduler import Scheduler

log = logging.getLogger(__name__)

BUSINESS_STATUS_SYSTEM = "urn:fhir-smartflow:task-business-status"


class WrittenResource(NamedTuple):
    resource_type: str
    id: str
    identifier: str
    created: bool | None  # None: the target does not say whether it created or found it


@dataclass(frozen=True)
class ActionError:
    action: str  # the plan action's kind and identifier, e.g. "WriteResource Task flow/x/task/abc"
    message: str
    status: int | None = None


@dataclass
class ExecutionResult:
    written: list[WrittenResource] = field(default_factory=list)
    deliveries: list[tuple[str, str]] = field(default_factory=list)  # (delivery identifier, status)
    scheduled: list[str] = field(default_factory=list)  # Schedule identifiers
    cancelled: list[str] = field(default_factory=list)  # Task references
    errors: list[ActionError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for run history)."""
        return {
            "written": [w._asdict() for w in self.written],
            "deliveries": [list(d) for d in self.deliveries],
            "scheduled": list(self.scheduled),
            "cancelled": list(self.cancelled),
            "errors": [dataclasses.asdict(e) for e in self.errors],
        }


@dataclass
class Prewritten:
    """What the server answered to writes made ahead of their plans' execution (`PlanExecutor.prewrite`),
    by business identifier: ``(stored, created?)``. Each answer is taken once."""

    answers: dict[str, tuple[dict[str, Any], bool | None]] = field(default_factory=dict)

    def take(self, identifiers: list[str]) -> list[tuple[dict[str, Any], bool | None]] | None:
        """The answers for all of ``identifiers``, in order, or None (and nothing taken) unless all are here."""
        if not identifiers or any(identifier not in self.answers for identifier in identifiers):
            return None
        return [self.answers.pop(identifier) for identifier in identifiers]


class PlanDataError(Exception):
    """An action cannot be carried out with what there is: a resource it needs is missing (its
    Communication, its Task), the plan names nothing to act on, or a collaborator it needs (Deliverer,
    Scheduler) is not configured. Recorded as that action's error; the other actions go on."""


class Executor(Protocol):
    """Carries out a plan: writes, deliveries, scheduled jobs, cancellations. Idempotent."""

    def execute(self, plan: Plan, prewritten: Prewritten | None = None) -> ExecutionResult: ...


def _is_transient(exc: Exception) -> bool:
    return isinstance(exc, FhirError) and exc.transient


class PlanExecutor:
    """Executor over a WriteBackTarget, a Deliverer and a Scheduler."""

    def __init__(
        self,
        target: WriteBackTarget,
        conn: redis.Redis,
        keys: Keys,
        settings: Settings,
        *,
        deliverer: Deliverer | None = None,
        scheduler: Scheduler | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.target = target
        self.conn = conn
        self.keys = keys
        self.settings = settings
        self.system = settings.fhir.identifier_system
        self.device_id = settings.fhir.device_id
        self.deliverer = deliverer
        self.scheduler = scheduler
        self.metrics = metrics
        self.clock = clock
        self.claims = DeliveryClaims(conn, keys, settings.redis.dedupe_ttl_seconds)

    # -- entry point ---------------------------------------------------------------------------------
    def execute(self, plan: Plan, prewritten: Prewritten | None = None) -> ExecutionResult:
        """Carry out ``plan``; writes found in ``prewritten`` (made ahead, `prewrite`) are not sent again."""
        result = ExecutionResult()
        written: dict[str, dict[str, Any]] = {}  # identifier -> stored resource, for Deliver
        failed: set[str] = set()  # identifiers whose write failed: their deliveries are skipped
        batch = self.target.supports_transactions()
        for run in plan.runs:
            if not run.ran:
                continue
            actions = run.actions
            i = 0
            while i < len(actions):
                if batch and isinstance(actions[i], WriteResource):
                    # A run of consecutive writes (+ their Provenances) goes in one transaction; whatever
                    # it could not take is written one by one below, at the same place in the order.
                    j = i
                    while j < len(actions) and isinstance(actions[j], WriteResource):
                        j += 1
                    for action in self._write_batch(plan, run, actions[i:j], result, written, prewritten):
                        self._guarded(plan, run, action, result, written, failed)
                    i = j
                    continue
                self._guarded(plan, run, actions[i], result, written, failed)
                i += 1
            self._report_unrouted(run, result)
        return result

    def _report_unrouted(self, run: FlowRun, result: ExecutionResult) -> None:
        """A staff message for a role nobody holds is never silent: ERROR (identifiers and role names only,
        no PHI) and a count, once — when it is first written (a rerun finds it and says nothing)."""
        created = {w.identifier for w in result.written if w.created is not False}
        for action in run.actions:
            if isinstance(action, WriteResource) and action.unrouted and action.identifier in created:
                roles = ", ".join(action.unrouted)
                fallback = self.settings.role_fallback or "no [roles] fallback configured"
                log.error(
                    "execute: %s: nobody holds role %s (no active PractitionerRole); routed to %s",
                    action.identifier,
                    roles,
                    fallback,
                )
                for role in action.unrouted:
                    self._inc("unroutable_messages", flow=run.flow_id, role=role)

    def _guarded(
        self,
        plan: Plan,
        run: FlowRun,
        action: PlanAction,
        result: ExecutionResult,
        written: dict[str, dict[str, Any]],
        failed: set[str],
    ) -> None:
        """Carry out one action under the error policy (module docstring)."""
        try:
            if isinstance(action, WriteResource):
                written[action.identifier] = self._write(plan, run, action, result)
            elif isinstance(action, Deliver):
                if action.communication in failed:
                    raise PlanDataError(f"Communication {action.communication} was not written; delivery skipped")
                self._deliver(plan, run, action, result, written.get(action.communication))
            elif isinstance(action, Schedule):
                self._require_scheduler().schedule(action)
                result.scheduled.append(action.identifier)
            elif isinstance(action, CancelGroup):
                self._cancel_group(action, result)
            elif isinstance(action, PatchTask):
                self._patch_task(action, result)
            else:  # pragma: no cover - a new plan action type without executor support
                raise TypeError(f"unknown plan action {type(action).__name__}")
        except Exception as exc:
            if _is_transient(exc):
                log.warning(
                    "execute: transient failure on %s, plan will be retried: %s", _describe(action), scrub_error(exc)
                )
                scrub_in_place(exc)
                raise
            if not isinstance(exc, FhirError | ResourceInvalid | PlanDataError):
                raise  # a bug, not bad data: let rq record it
            status = exc.status if isinstance(exc, FhirError) else None
            # Server texts quote the resource (names, MRNs, message text): only their structure is kept.
            message = scrub_error(exc)
            log.error("execute: %s failed: %s", _describe(action), message)
            result.errors.append(ActionError(_describe(action), message, status))
            if isinstance(action, WriteResource):
                failed.add(action.identifier)

    # -- writes ----------------------------------------------------------------------------------------
    def _write(self, plan: Plan, run: FlowRun, action: WriteResource, result: ExecutionResult) -> dict[str, Any]:
        validate_resource(action.resource)
        stored, created = self.target.create_with_status(action.resource, action.identifier)
        rtype = action.resource["resourceType"]
        self._inc("writes", type=rtype, result=_write_result(created))
        result.written.append(WrittenResource(rtype, str(stored.get("id")), action.identifier, created))
        if rtype != "Provenance" and stored.get("id"):
            try:
                self._write_provenance(plan, run, stored, action.identifier, result)
            except (FhirError, ResourceInvalid) as exc:
                if _is_transient(exc):
                    raise
                # The resource itself is written and usable (its delivery goes ahead); only its
                # Provenance is missing, which the error says.
                message = scrub_error(exc)
                log.error("execute: Provenance of %s %s failed: %s", rtype, action.identifier, message)
                status = exc.status if isinstance(exc, FhirError) else None
                result.errors.append(ActionError(f"Provenance {action.identifier}/provenance", message, status))
        return stored

    def _write_provenance(
        self, plan: Plan, run: FlowRun, stored: dict[str, Any], identifier: str, result: ExecutionResult
    ) -> None:
        prov_id = provenance_identifier(identifier)
        provenance = self._provenance(plan, run, stored, prov_id)  # checked as it is built (engine/provenance.py)
        prov_stored, created = self.target.create_with_status(provenance, prov_id)
        self._inc("writes", type="Provenance", result=_write_result(created))
        result.written.append(WrittenResource("Provenance", str(prov_stored.get("id")), prov_id, created))

    def _provenance(self, plan: Plan, run: FlowRun, target: dict[str, Any], prov_id: str) -> dict[str, Any]:
        event = plan.trigger.event
        source = None
        if event.reference:
            source = f"{event.reference}/_history/{event.version_id}" if event.version_id else event.reference
        return build_provenance(
            target,
            identifier_system=self.system,
            identifier_value=prov_id,
            flow_id=run.flow_id,
            flow_version=run.flow_version,
            trigger=plan.trigger.trigger,
            source_reference=source,
            device_id=self.device_id,
            recorded=self.clock(),
        )

    # -- batched writes (one transaction per run of consecutive writes) ------------------------------
    def prewrite(self, plans: list[Plan]) -> Prewritten:
        """Write the leading writes of several plans (those each plan's execution sends first, with their
        Provenances) in one `WriteBackTarget.create_all`, ahead of the plans' execution, which then takes
        their answers from here. Every entry is the conditional create its own execution would send, so
        writing it early is what a retry after a crash mid-plan would find. Nothing is written unless the
        target has transactions and there are two plans to share them; a refused or failed write leaves
        every plan to write its own, as without it (a transient failure then recurs there)."""
        prewritten = Prewritten()
        if len(plans) < 2 or not self.target.supports_transactions():
            return prewritten
        items: list[BatchItem] = []
        for plan in plans:
            run = next((run for run in plan.runs if run.ran), None)
            if run is not None:
                items.extend(self._batch_items(plan, run, _leading_writes(run.actions))[0])
        if not items:
            return prewritten
        try:
            answers = self.target.create_all(items)
        except FhirError as exc:
            log.warning(
                "execute: shared transaction of %d plans failed (%s); each writes its own", len(plans), scrub_error(exc)
            )
            scrub_in_place(exc)
            return prewritten
        prewritten.answers.update(
            (identifier, answer) for (_, identifier, _), answer in zip(items, answers, strict=True)
        )
        return prewritten

    def _batch_items(
        self, plan: Plan, run: FlowRun, actions: list[WriteResource] | tuple[WriteResource, ...]
    ) -> tuple[list[BatchItem], list[tuple[WriteResource, bool]], list[WriteResource]]:
        """The transaction entries for ``actions`` and a Provenance for each; which actions they carry
        (with: has a Provenance entry), and those left out because they fail validation."""
        leftover: list[WriteResource] = []
        items: list[BatchItem] = []
        batched: list[tuple[WriteResource, bool]] = []
        for action in actions:
            rtype = action.resource["resourceType"]
            full_url = f"urn:uuid:{uuid.uuid4()}"
            try:
                validate_resource(action.resource)
                entries = [(action.resource, action.identifier, full_url)]
                if rtype != "Provenance":
                    prov_id = provenance_identifier(action.identifier)
                    # The target is the entry's fullUrl; the server rewrites it to the stored Type/id.
                    provenance = self._provenance(plan, run, {"resourceType": rtype, "id": "pending"}, prov_id)
                    provenance["target"] = [{"reference": full_url}]
                    entries.append((provenance, prov_id, f"urn:uuid:{uuid.uuid4()}"))
            except ResourceInvalid:
                leftover.append(action)
                continue
            items.extend(entries)
            batched.append((action, len(entries) == 2))
        return items, batched, leftover

    def _write_batch(
        self,
        plan: Plan,
        run: FlowRun,
        actions: list[WriteResource] | tuple[WriteResource, ...],
        result: ExecutionResult,
        written: dict[str, dict[str, Any]],
        prewritten: Prewritten | None = None,
    ) -> list[WriteResource]:
        """Write ``actions`` and a Provenance for each in one transaction Bundle (every entry a
        conditional create on its business identifier, so the whole plan stays idempotent), unless
        ``prewritten`` has every answer. Returns the actions left for the one-by-one path: those that
        fail validation (it records why), or all of them when the server refuses the Bundle (so each
        error names its own resource). Transient failures are re-raised: rq retries the whole plan."""
        taken = prewritten.take(_entry_identifiers(actions)) if prewritten is not None else None
        if taken is not None:  # written ahead with other plans' (validated there)
            batched = [(action, action.resource["resourceType"] != "Provenance") for action in actions]
            leftover: list[WriteResource] = []
            answers = iter(taken)
        else:
            items, batched, leftover = self._batch_items(plan, run, actions)
            if not batched:
                return leftover
            try:
                answers = iter(self.target.create_all(items))
            except FhirError as exc:
                if exc.transient:
                    log.warning(
                        "execute: transient failure on a transaction of %d writes, plan will be retried: %s",
                        len(batched),
                        scrub_error(exc),
                    )
                    scrub_in_place(exc)
                    raise
                log.warning(
                    "execute: transaction of %d writes refused (%s); writing them one by one",
                    len(batched),
                    scrub_error(exc),
                )
                return [action for action, _ in batched] + leftover
        for action, with_provenance in batched:
            stored, created = next(answers)
            rtype = action.resource["resourceType"]
            self._inc("writes", type=rtype, result=_write_result(created))
            result.written.append(WrittenResource(rtype, str(stored.get("id")), action.identifier, created))
            written[action.identifier] = stored
            if with_provenance:
                prov_stored, prov_created = next(answers)
                self._inc("writes", type="Provenance", result=_write_result(prov_created))
                prov_id = provenance_identifier(action.identifier)
                result.written.append(WrittenResource("Provenance", str(prov_stored.get("id")), prov_id, prov_created))
        return leftover

    # -- deliveries ------------------------------------------------------------------------------------
    def _deliver(
        self, plan: Plan, run: FlowRun, action: Deliver, result: ExecutionResult, communication: dict[str, Any] | None
    ) -> None:
        now = self.clock()
        previous = self.claims.get(action.identifier)
        if previous is not None and not previous.reclaimable(now):
            # Already sent (or being sent): never send twice; make sure the Communication says so.
            if previous.final:
                communication = communication or self.target.find_by_identifier("Communication", action.communication)
                self._record(plan, run, action, communication, previous.outcome(), now, result)
            result.deliveries.append((action.identifier, f"already-{previous.status}"))
            return
        # Metrics: the Deliverer counts deliveries, the Scheduler counts scheduled jobs; we count writes.
        # Everything that can fail transiently happens before the claim, so a retry can still send.
        recipient = self.target.read(action.recipient)
        patient = action.recipient if action.recipient.startswith("Patient/") else plan.trigger.patient
        consents = self.target.search("Consent", {"patient": patient, "status": "active"}) if patient else []
        if communication is None:
            communication = self.target.find_by_identifier("Communication", action.communication)
        if communication is None:  # never send what we cannot record
            raise PlanDataError(f"Communication {action.communication} not found; message not sent")
        if previous is None and communication.get("status") in FINAL:
            # The durable record: the FHIR store says this delivery is over (a replay after the claim's
            # TTL, Redis lost). Never send again; put the claim back so later copies stop earlier.
            self.claims.restore(action.identifier, _recorded_outcome(communication))
            result.deliveries.append((action.identifier, f"already-{communication['status']}"))
            return
        deliverer = self.deliverer
        if deliverer is None:
            raise PlanDataError("no Deliverer configured; message not sent")
        if not self.claims.take(
            action.identifier, previous, now, communication=action.communication, channel=action.channel
        ):
            result.deliveries.append((action.identifier, "already-claimed"))
            return
        try:
            outcome = deliverer.deliver(action, recipient, consents, now)
        except Exception as exc:
            # Unknown whether it went out: keep the claim ("sending") so it is never sent twice; it is
            # resolved as unknown after [delivery] stuck_after_seconds (worker/stuck.py). The exception
            # text may carry an address: only its scrubbed form is logged, at DEBUG.
            log.error("execute: deliverer raised %s for %s; not retried", type(exc).__name__, action.identifier)
            log.debug("execute: deliverer failure for %s: %s", action.identifier, scrub_error(exc))
            result.deliveries.append((action.identifier, "unknown"))
            return
        outcome = self.claims.settle(action.identifier, outcome, now)
        result.deliveries.append((action.identifier, outcome.status))
        if outcome.status in REARMED:
            schedule = rearm_schedule(action, outcome, plan, run)
            self._require_scheduler().schedule(schedule)
            result.scheduled.append(schedule.identifier)
            return
        self._record(plan, run, action, communication, outcome, now, result)

    def _record(
        self,
        plan: Plan,
        run: FlowRun,
        action: Deliver,
        communication: dict[str, Any] | None,
        outcome: DeliveryOutcome,
        now: datetime,
        result: ExecutionResult,
    ) -> None:
        """The final outcome onto the Communication; a failure of a ``notify_on_failure`` action is also
        told to its owner (after the outcome, so a rerun that finds the claim writes what is missing)."""
        self._record_outcome(action, communication, outcome, now)
        if not (outcome.failed and action.notify_on_failure):
            return
        notice = failure_notice(
            action,
            outcome,
            communication,
            identifier_system=self.system,
            device_id=self.device_id,
            patient=plan.trigger.patient,
            flow_id=run.flow_id,
            now=now,
        )
        self._write(plan, run, notice, result)
        created = next(w.created for w in reversed(result.written) if w.identifier == notice.identifier)
        self._inc("failure_notices", channel=action.channel, result=_write_result(created))
        if not action.owner:
            log.warning("execute: %s failed; its owner resolved to nobody: notice unaddressed", action.identifier)
        else:
            log.info("execute: %s failed; owner told (%s)", action.identifier, _write_result(created))

    def _record_outcome(
        self, action: Deliver, communication: dict[str, Any] | None, outcome: DeliveryOutcome, now: datetime
    ) -> None:
        if communication is None:
            raise PlanDataError(f"Communication {action.communication} not found to record the delivery on")
        if communication.get("status") in {"completed", "not-done"}:
            return  # already recorded (a rerun)
        updated = dict(communication)
        if outcome.status == "completed":
            updated["status"] = "completed"
            updated["sent"] = format_instant(now)
        else:
            updated["status"] = "not-done"
            updated["statusReason"] = not_done_status_reason(
                outcome.reason_code or "unknown", outcome.reason or "not delivered"
            )
        validate_resource(updated)
        self.target.update(updated)

    # -- cancellations and patches -------------------------------------------------------------------
    def _cancel_group(self, action: CancelGroup, result: ExecutionResult) -> None:
        statuses = ",".join(OPEN_TASK_STATUSES)
        if action.group:
            tasks = self.target.search(
                "Task", {"group-identifier": f"{self.system}|{action.group}", "status": statuses}
            )
        elif action.patient:
            tasks = self.target.search("Task", {"patient": action.patient, "status": statuses})
            tasks = [t for t in tasks if _made_by_one_of(t, action.flows)]
        else:
            raise PlanDataError(f"CancelGroup {action.identifier} names neither a group nor a patient")
        for task in tasks:
            if task.get("status") not in OPEN_TASK_STATUSES:
                continue  # the server ignored the status filter
            if action.keep and action.keep in _our_identifiers(task, self.system):
                continue
            updated = dict(task)
            updated["status"] = "cancelled"
            updated["statusReason"] = {"text": action.reason}
            updated["lastModified"] = format_instant(self.clock())
            self.target.update(updated)
            result.cancelled.append(f"Task/{task.get('id')}")
        if self.scheduler is None:
            return
        # Deferred deliveries (quiet hours, rate limit, retry) of these workflows are pending jobs too:
        # they must not go out after the cancellation, and their Communications must say why.
        pending = self.scheduler.pending_for(group=action.group, patient=action.patient, flows=action.flows)
        self.scheduler.cancel(group=action.group, patient=action.patient, flows=action.flows)  # it counts them
        for item in pending:
            if item.kind == "delivery" and self.withdraw_delivery(item.payload, action.reason):
                result.deliveries.append((str(item.payload.get("identifier")), "cancelled"))

    def withdraw_delivery(self, payload: dict[str, Any], reason: str) -> bool:
        """Withdraw a deferred delivery (its workflow ended, its task was closed): claim it as not-done
        unless a worker took it meanwhile, and record that on its Communication. True when withdrawn."""
        identifier, communication = payload.get("identifier"), payload.get("communication")
        if not identifier or not communication:
            return False
        outcome = self.claims.withdraw(identifier, reason)
        if outcome is None:
            return False
        self._record_outcome(
            Deliver(
                channel=str(payload.get("channel", "")),
                recipient="",
                body="",
                identifier=identifier,
                communication=communication,
            ),
            self.target.find_by_identifier("Communication", communication),
            outcome,
            self.clock(),
        )
        return True

    def resolve_stuck(self, now: datetime) -> int:
        """Close the sends whose worker died mid-send (claim still ``sending`` after ``[delivery]
        stuck_after_seconds``): whether the message went out is unknown, and no channel's API can be
        asked by our idempotency key, so each becomes not-done with reason code ``unknown`` — never sent
        again — on its claim and its Communication, and is counted (``stuck_deliveries``). Returns how
        many were resolved."""
        cutoff = now - timedelta(seconds=self.settings.delivery.stuck_after_seconds)
        resolved = 0
        for identifier, claim in self.claims.stuck(cutoff):
            reason = f"outcome unknown: the {claim.channel or 'channel'} send was interrupted (worker stopped)"
            outcome = self.claims.resolve_unknown(identifier, claim, reason)
            if outcome is None:
                continue  # settled or resolved by someone else meanwhile
            resolved += 1
            self._inc("stuck_deliveries", channel=claim.channel or "unknown")
            log.warning("execute: delivery %s was stuck sending since %s: marked unknown", identifier, claim.at)
            if not claim.communication:
                continue
            action = Deliver(
                channel=claim.channel, recipient="", body="", identifier=identifier, communication=claim.communication
            )
            communication = self.target.find_by_identifier("Communication", claim.communication)
            try:
                self._record_outcome(action, communication, outcome, now)
            except (FhirError, PlanDataError, ResourceInvalid) as exc:
                # The claim is closed (never sent again); the Communication stays in-progress for now.
                log.error(
                    "execute: could not record %s as unknown on its Communication: %s", identifier, scrub_error(exc)
                )
        return resolved

    def _patch_task(self, action: PatchTask, result: ExecutionResult) -> None:
        task = self.target.find_by_identifier("Task", action.identifier)
        if task is None:
            raise PlanDataError(f"Task with identifier {action.identifier} not found")
        if action.only_if_open and task.get("status") not in OPEN_TASK_STATUSES:
            return
        updated = dict(task)
        if action.status:
            updated["status"] = action.status
        if action.business_status:
            updated["businessStatus"] = {
                "coding": [{"system": BUSINESS_STATUS_SYSTEM, "code": action.business_status}],
                "text": action.business_status,
            }
        if action.status_reason:
            updated["statusReason"] = {"text": action.status_reason}
        if updated == task:
            return
        updated["lastModified"] = format_instant(self.clock())
        validate_resource(updated)
        self.target.update(updated)
        if action.status == "cancelled":
            result.cancelled.append(f"Task/{task.get('id')}")

    # -- helpers -------------------------------------------------------------------------------------
    def _require_scheduler(self) -> Scheduler:
        if self.scheduler is None:
            raise PlanDataError("no Scheduler configured; follow-up not scheduled")
        return self.scheduler

    def _inc(self, name: str, amount: int = 1, **labels: str) -> None:
        if self.metrics is not None:
            self.metrics.inc(name, amount, **labels)


def _recorded_outcome(communication: dict[str, Any]) -> DeliveryOutcome:
    """The outcome a final Communication records (its statusReason code, never its text: it is ours)."""
    if communication.get("status") == "completed":
        return DeliveryOutcome("completed")
    codings = (communication.get("statusReason") or {}).get("coding") or [{}]
    return DeliveryOutcome("not-done", "recorded on the Communication", reason_code=str(codings[0].get("code") or ""))


def _leading_writes(actions: tuple[PlanAction, ...] | list[PlanAction]) -> list[WriteResource]:
    """The writes a run starts with, before its first other action: what its execution sends first."""
    leading: list[WriteResource] = []
    for action in actions:
        if not isinstance(action, WriteResource):
            break
        leading.append(action)
    return leading


def _entry_identifiers(actions: list[WriteResource] | tuple[WriteResource, ...]) -> list[str]:
    """The business identifiers of the entries `_batch_items` makes for ``actions``, in order."""
    identifiers: list[str] = []
    for action in actions:
        identifiers.append(action.identifier)
        if action.resource["resourceType"] != "Provenance":
            identifiers.append(provenance_identifier(action.identifier))
    return identifiers


def _write_result(created: bool | None) -> str:
    return "unknown" if created is None else "created" if created else "existing"


def _describe(action: PlanAction) -> str:
    kind = type(action).__name__
    if isinstance(action, WriteResource):
        return f"{kind} {action.resource_type} {action.identifier}"
    return f"{kind} {action.identifier}"


def _made_by_one_of(task: dict[str, Any], flows: tuple[str, ...]) -> bool:
    made_by = parse_instantiates_uri(task.get("instantiatesUri"))
    return made_by is not None and made_by.flow_id in flows


def _our_identifiers(resource: dict[str, Any], system: str) -> set[str]:
    return {i.get("value") for i in resource.get("identifier") or [] if i.get("system") == system}
