"""A batch job's events in write groups: the first writes of several events in one shared transaction.

Each event still goes through `jobs.handle_event`'s steps, with its own claim, outcome marker and log
context; what changes is that its plan's first writes go in a shared transaction Bundle and its final
Redis writes in a shared transaction. A group is a run of consecutive events that cannot see each
other's work:

- each has a focus resource and matched at least one trigger, every trigger with a patient;
- no two share a focus resource (its prior state) or a patient (what its plan reads: the patient's
  resources, once claims and discharge marker).

Each event in order is started (verified, claimed, completed), matched and its first trigger planned
(once claim, discharge marker, plan: nothing executed). An event that shares a focus or a patient with
the group first has the group completed; one that cannot be grouped is then handled alone. Completing a
group sends the members' leading writes together (`PlanExecutor.prewrite`: the resources in one
transaction, their Provenances in a second), then each member in order executes its plan, taking its
answers from there, and plans and executes any other trigger; then one Redis transaction ends them all
(each one's done mark, outcome, prior state, run history). Every entry of the shared Bundle is the
conditional create the member's own execution would send, so a crash after it is a crash mid-plan: the
retry finds what was written; a crash before the members' end leaves all of them to run again, each
step idempotent (deliveries by their claims), as a crash before one event's end does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from rq.timeouts import JobTimeoutException

from fhir_smartflow.engine.plan import Plan
from fhir_smartflow.events import ResourceEvent
from fhir_smartflow.worker import jobwrites
from fhir_smartflow.worker.execute import Prewritten
from fhir_smartflow.worker.jobs import (
    StartedEvent,
    dispatch_started,
    end_events,
    event_log_context,
    fail_event,
    start_event,
)
from fhir_smartflow.worker.pipeline import Dispatch
from fhir_smartflow.worker.runtime import ServiceRuntime

log = logging.getLogger(__name__)

Outcome = tuple[int, str | Exception]  # an event's index in the job, and its result or what it raised


@dataclass
class _Member:
    started: StartedEvent
    step: Dispatch | None  # None: expanded criteria events, dispatched on their own
    planned: Plan | None = None

    @property
    def index(self) -> int:
        return self.started.index if self.started.index is not None else -1


def _focus(event: ResourceEvent) -> str | None:
    return f"{event.resource_type}/{event.resource_id}" if event.resource_id else None


class WriteGroups:
    """A batch job's events, in write groups of up to ``max_events`` (module docstring)."""

    def __init__(self, rt: ServiceRuntime, max_events: int) -> None:
        self.rt = rt
        self.max_events = max_events
        self.members: list[_Member] = []  # started and planned, not yet completed

    def process(self, events: dict[int, ResourceEvent]) -> Iterator[Outcome]:
        """Every event of ``events`` (by index in the job), in order; each outcome once it is known."""
        try:
            for index, event in events.items():
                if _focus(event) in {_focus(m.started.event) for m in self.members}:
                    yield from self._complete_group()  # its prior state is written first
                yield from self._add(index, event)
                if len(self.members) >= self.max_events:
                    yield from self._complete_group()
            yield from self._complete_group()
        except BaseException as exc:  # the job's time ran out, or a bug: free the claims of the rest
            for member in self.members:
                fail_event(self.rt, member.started, exc if isinstance(exc, Exception) else RuntimeError())
            self.members = []
            raise

    def _add(self, index: int, event: ResourceEvent) -> Iterator[Outcome]:
        """Start, match and plan ``event`` into the group, or handle it alone."""
        with event_log_context(event):
            try:
                started = start_event(self.rt, event, index, tracked=True)
            except JobTimeoutException:
                raise
            except Exception as exc:  # its claim is released; the others go on
                yield index, exc
                return
            if isinstance(started, str):
                yield index, started
                return
            member = _Member(started, None)
            if not started.expanded and (error := self._guarded(member, self._match)) is not None:
                yield index, error
                return
        if member.step is None or not _groupable(member.step):
            yield from self._complete_group()
            self.members = [member]  # a group of one: nothing is written ahead
            yield from self._complete_group()
            return
        if member.step.patients & set().union(*(m.step.patients for m in self.members if m.step)):
            yield from self._complete_group()
        with event_log_context(event):
            if (error := self._guarded(member, self._plan)) is not None:
                yield index, error
                return
        self.members.append(member)

    def _match(self, member: _Member) -> None:
        with jobwrites.collecting(member.started.writes):
            member.step = self.rt.dispatcher.match(member.started.events[0])

    def _plan(self, member: _Member) -> None:
        if member.step is not None:
            with jobwrites.collecting(member.started.writes):
                member.planned = self.rt.dispatcher.plan_next(member.step)

    def _execute(self, member: _Member, prewritten: Prewritten) -> None:
        if member.step is None:  # expanded criteria events: each dispatched and marked done on its own
            dispatch_started(self.rt, member.started)
            return
        with jobwrites.collecting(member.started.writes):
            self.rt.dispatcher.complete(member.step, member.planned, prewritten)

    def _guarded(self, member: _Member, step: Callable[[_Member], None]) -> Exception | None:
        """Run one step of a started member; what it raised (the member then failed: its claim released,
        and out of the group), else None. The job's time running out is raised on."""
        try:
            step(member)
        except Exception as exc:
            fail_event(self.rt, member.started, exc)
            if member in self.members:
                self.members.remove(member)
            if isinstance(exc, JobTimeoutException):
                raise
            return exc
        return None

    def _complete_group(self) -> Iterator[Outcome]:
        """The members' leading writes in one shared transaction, then each member's execution in order,
        then their ends (done marks, outcomes, prior states, history) in one Redis transaction."""
        if not self.members:
            return
        prewritten = self.rt.executor.prewrite([m.planned for m in self.members if m.planned is not None])
        for member in list(self.members):
            with event_log_context(member.started.event):
                error = self._guarded(member, lambda m: self._execute(m, prewritten))
            if error is not None:
                yield member.index, error
        executed, self.members = self.members, []
        yield from self._end(executed)

    def _end(self, executed: list[_Member]) -> Iterator[Outcome]:
        if not executed:
            return
        self.members = executed  # until they are ended, the job's time running out frees their claims
        try:
            end_events(self.rt, [member.started for member in executed])
        except JobTimeoutException:
            raise
        except Exception as exc:  # none marked done; end_events freed their claims for the retry
            self.members = []
            for member in executed:
                yield member.index, exc
            return
        self.members = []
        for member in executed:
            yield member.index, "processed"


def _groupable(step: Dispatch) -> bool:
    return bool(step.triggers) and _focus(step.event) is not None and None not in step.patients
