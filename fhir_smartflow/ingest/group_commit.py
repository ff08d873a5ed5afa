"""Group commit: concurrent deliveries share one Redis transaction and, under load, one rq job.

Each request thread submits its write (a callable queuing its record and metrics commands on a
pipeline, plus its events) and blocks until the transaction holding it has executed, or gets that
transaction's error (→ 503, nothing accepted). There is no timer: when no commit is in flight the
submitting thread commits at once itself (the leader), so a lone delivery's latency is unchanged.
Deliveries arriving while a commit is in flight wait for it; then one of them leads the next group:
everything pending, up to ``[server] group_commit_max_events`` events (a bigger delivery goes alone).

One delivery in a group: its events are queued as always, one ``process_event`` job each. Two or more:
ONE ``process_events`` job carries all their events (``events_received`` still counted per event in
the same transaction). Durability is the same as one delivery's: one MULTI/EXEC through
`durable_pipeline` (WAIT on the replicas when ``[redis] wait_replicas`` is set) before any of the 200s.

Backlog: when a commit finds the queue already holding a job (the workers are behind), the next commits
put their events into a backlog batch instead (`batch_queueing.commit_joining_backlog`), so deliveries
that arrive one at a time still share a job while they would wait anyway. Those commits are one Lua
script that reads the queue's tail and writes (still one round trip, WAIT aside); a commit that finds the
queue empty goes back to the plain path.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import redis

from fhir_smartflow.batch_queueing import commit_joining_backlog, enqueue_batch
from fhir_smartflow.config import RedisConfig
from fhir_smartflow.connections import durable_pipeline, replicated_after_exec
from fhir_smartflow.events import ResourceEvent
from fhir_smartflow.metrics import Metrics
from fhir_smartflow.queueing import EventQueue, enqueue_events

Record = Callable[[Any], None]  # queues one delivery's own commands on the (MULTI) pipeline


@dataclasses.dataclass
class _Write:
    record: Record
    events: list[ResourceEvent]
    wakeup: threading.Condition  # on the committer's lock: only this delivery's thread waits on it
    done: bool = False
    error: BaseException | None = None


class GroupCommitter:
    """Leader/follower group commit of webhook writes (thread-safe; one per process)."""

    def __init__(
        self, conn: redis.Redis, config: RedisConfig, queue: EventQueue, metrics: Metrics, max_events: int
    ) -> None:
        self._conn = conn
        self._config = config
        self._queue = queue
        self._metrics = metrics
        self._max_events = max_events
        self._lock = threading.Lock()
        self._pending: deque[_Write] = deque()
        self._committing = 0  # deliveries in the transaction in flight (0: none, the next submitter leads)
        self._backlog = False  # the last commit found a job waiting in the queue: join a backlog batch

    @property
    def grouping(self) -> bool:
        """False with ``group_commit_max_events`` 0 or 1: every delivery commits alone, in parallel."""
        return self._max_events > 1

    @property
    def waiting(self) -> int:
        """Deliveries waiting for the transaction in flight to finish (read-only, for tests and probes)."""
        with self._lock:
            return len(self._pending)

    @property
    def committing(self) -> int:
        """Deliveries in the transaction in flight."""
        with self._lock:
            return self._committing

    def commit(self, record: Record, events: list[ResourceEvent]) -> None:
        """Write one delivery; returns once its transaction executed, or raises that transaction's error."""
        write = _Write(record, events, threading.Condition(self._lock))
        if not self.grouping:
            self._execute([write])
            return
        with self._lock:
            self._pending.append(write)
            while not write.done:
                if self._committing:
                    write.wakeup.wait()  # when its group ends, or when it is the oldest waiting and none is in flight
                    continue
                group = self._take()
                self._committing = len(group)
                self._lock.release()
                error: BaseException | None = None
                try:
                    self._execute(group)
                except BaseException as exc:  # every delivery of the group gets it (a 503 for a RedisError)
                    error = exc
                finally:
                    self._lock.acquire()
                for member in group:
                    member.done, member.error = True, error
                    member.wakeup.notify()
                self._committing = 0
                if self._pending:  # the oldest one still waiting leads the next group
                    self._pending[0].wakeup.notify()
        if write.error is not None:
            raise write.error

    def _take(self) -> list[_Write]:
        """The oldest pending deliveries up to the event cap; at least one, however many events it has."""
        group = [self._pending.popleft()]
        total = len(group[0].events)
        while self._pending and total + len(self._pending[0].events) <= self._max_events:
            total += len(self._pending[0].events)
            group.append(self._pending.popleft())
        return group

    def _execute(self, group: list[_Write]) -> None:
        """ONE transaction for the group: every delivery's record, the jobs, the metrics."""
        events = [event for write in group for event in write.events]
        if self.grouping and self._backlog:
            self._backlog = self._execute_joining(group, events)
            return
        pipe = durable_pipeline(self._conn, self._config)  # with replicas to wait for: on them before the 200
        pipe.multi()
        pushed = self._queue_group(pipe, group, events)
        if self.grouping:
            pipe.llen(self._queue.key)
        results = pipe.execute()
        if self.grouping:
            self._backlog = results[-1] > pushed  # another job was waiting before ours

    def _execute_joining(self, group: list[_Write], events: list[ResourceEvent]) -> bool:
        """The group's writes into the backlog batch when the queue holds a job (one atomic script), else
        the usual transaction; whether the queue held one (the next commit tries to join again)."""

        def records(pipe: Any) -> None:
            for write in group:
                write.record(pipe)

        then = replicated_after_exec(self._config)
        done = commit_joining_backlog(
            self._queue, events, records, max_events=self._max_events, metrics=self._metrics, then=then
        )
        if done.joined:
            return True
        pipe = durable_pipeline(self._conn, self._config)
        pipe.multi()
        self._queue_group(pipe, group, events)
        pipe.execute()
        return done.queue_had_jobs

    def _queue_group(self, pipe: Any, group: list[_Write], events: list[ResourceEvent]) -> int:
        """Every delivery's record and the group's job(s) on ``pipe``; how many jobs were pushed."""
        for write in group:
            write.record(pipe)
        if len(group) == 1 or len(events) <= 1:  # alone: as always, one process_event job per event
            return len(enqueue_events(self._queue, events, pipeline=pipe, metrics=self._metrics))
        enqueue_batch(self._queue, events, pipeline=pipe, metrics=self._metrics)
        return 1
