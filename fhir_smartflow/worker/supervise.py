"""Keep the `worker` command working through Redis restarts and through other workers' deaths.

- `run_supervised`: rq's ``Worker.work`` returns ("unhandled exception, quitting") or raises when
  Redis goes away; the loop starts a fresh worker (new name) with backoff and only ends on SIGTERM /
  SIGINT (rq's own stop request) or at the end of a ``--burst`` run.
- `Liveness`: every worker of ours refreshes a short-TTL key (``<prefix>worker-alive:<name>``) from a
  thread, so a SIGKILLed worker is known dead within seconds instead of rq's heartbeat expiry
  (job timeout + 60 s) and its 10-minute registry maintenance.
- ``periodic``: what else the liveness thread runs at each orphan sweep (the stuck-send sweep of
  worker/stuck.py).
- `requeue_orphans`: jobs in rq's StartedJobRegistry whose worker (one of ours) is dead are handed to
  rq's own abandoned-job cleanup at once (retry if retries are left, else the failed registry).
  The dedupe claim such a job held is taken over by the next attempt (`jobs._claim`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

import redis
import rq
from rq.exceptions import StopRequested
from rq.executions import Execution
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.scheduler import RQScheduler
from rq.utils import as_text

from fhir_smartflow.connections import Keys

log = logging.getLogger(__name__)

WORKER_NAME_PREFIX = "smartflow-"
ALIVE_TTL_SECONDS = 6
BEAT_SECONDS = 1.0
ORPHAN_SWEEP_SECONDS = 3.0
BACKOFF_START_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 15.0


def new_worker_name() -> str:
    """Names that mark a worker as ours (it beats its liveness key), unique per process start."""
    return f"{WORKER_NAME_PREFIX}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def worker_alive_key(keys: Keys, worker_name: str) -> str:
    return f"{keys.prefix}worker-alive:{worker_name}"


def is_dead_worker(conn: redis.Redis, keys: Keys, worker_name: str | None) -> bool:
    """True only for a worker of ours whose liveness key expired; others are trusted to rq's cleanup."""
    if not worker_name or not worker_name.startswith(WORKER_NAME_PREFIX):
        return False
    return not conn.exists(worker_alive_key(keys, worker_name))


class Liveness:
    """Beats ``name``'s liveness key and sweeps orphaned jobs from a daemon thread until ``stop``."""

    def __init__(
        self,
        conn: redis.Redis,
        keys: Keys,
        queue: rq.Queue,
        stop: threading.Event,
        *,
        move_scheduled: bool = False,
        periodic: Callable[[], object] | None = None,
    ) -> None:
        self.conn = conn
        self.periodic = periodic
        self.keys = keys
        self.queue = queue
        self.stop = stop
        self.name = ""  # the current rq worker's name; changes when the supervisor starts a new one
        self.stranded_seen: dict[str, float] = {}  # job id -> first seen in rq's intermediate list
        # rq's own scheduler holds a 61 s lock that a SIGKILLed worker never releases, and the others
        # retry it only every 10 minutes: due retries would wait that long. Ours runs every second.
        self.rq_scheduler: RQScheduler | None = None
        if move_scheduled:
            self.rq_scheduler = RQScheduler([queue], connection=conn)
            self.rq_scheduler.prepare_registries([queue.name])

    def beat(self) -> None:
        if self.name:
            self.conn.set(worker_alive_key(self.keys, self.name), 1, ex=ALIVE_TTL_SECONDS)

    def move_due_jobs(self) -> None:
        """Due rq retries / enqueue_in jobs into the queue, one process at a time (no double enqueue)."""
        if self.rq_scheduler is None:
            return
        lock = self.keys.lock("rq-scheduled-jobs")
        if self.conn.set(lock, self.name or "-", nx=True, ex=5):
            try:
                self.rq_scheduler.enqueue_scheduled_jobs()
            finally:
                self.conn.delete(lock)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="smartflow-liveness", daemon=True)
        thread.start()
        return thread

    def _run(self) -> None:
        last_sweep = 0.0
        while not self.stop.is_set():
            try:
                self.beat()
                self.move_due_jobs()
                if time.monotonic() - last_sweep >= ORPHAN_SWEEP_SECONDS:
                    last_sweep = time.monotonic()
                    requeue_orphans(self.conn, self.keys, self.queue, self.stranded_seen)
                    if self.periodic is not None:
                        self.periodic()
            except redis.RedisError as exc:  # Redis restarting: the supervisor logs the outage
                log.debug("liveness beat failed: %s", exc)
            except Exception:
                log.exception("orphaned-job sweep failed")
            self.stop.wait(BEAT_SECONDS)


def requeue_orphans(conn: redis.Redis, keys: Keys, queue: rq.Queue, seen: dict[str, float] | None = None) -> int:
    """Expire the StartedJobRegistry entries of dead workers of ours and let rq's cleanup retry them.

    rq's cleanup retries only jobs it had marked started; one whose worker died before that is still
    on rq's intermediate list and goes back to the queue through `_requeue_stranded`."""
    lock = keys.lock("orphan-sweep")
    if not conn.set(lock, 1, nx=True, ex=10):  # one sweeper at a time: cleanup must not retry a job twice
        return 0
    try:
        registry = StartedJobRegistry(queue=queue)
        expired = []
        for entry in conn.zrange(registry.key, 0, -1):
            if is_dead_worker(conn, keys, _holder_of(conn, as_text(entry))):
                expired.append(entry)
        if expired:
            conn.zadd(registry.key, {entry: 0 for entry in expired}, xx=True)
            registry.cleanup()
            log.warning("requeued %d job(s) abandoned by dead workers", len(expired))
        return len(expired) + _requeue_stranded(conn, queue, {} if seen is None else seen)
    finally:
        conn.delete(lock)


def _holder_of(conn: redis.Redis, entry: str) -> str | None:
    """The worker holding a StartedJobRegistry entry (``job id:execution id``).

    rq registers the execution, with its worker, one step before it marks the job started and takes
    it off the intermediate list: a worker killed between the two leaves the job's own
    ``worker_name`` empty (or an earlier attempt's). The execution's record is the one to trust;
    the job's serves only once the execution record has expired.
    """
    execution = Execution.from_composite_key(entry, conn)
    holder = conn.hget(execution.key, "worker_name") or conn.hget(Job.key_for(execution.job_id), "worker_name")
    return as_text(holder) if holder else None


class _StopAware:
    """Remembers a SIGTERM / SIGINT: rq's warm stop of an idle worker leaves no other trace."""

    stop_signalled = False

    def request_stop(self, signum: int, frame: object) -> None:
        self.stop_signalled = True
        super().request_stop(signum, frame)  # type: ignore[misc]

    @property
    def stopping(self) -> bool:
        """A stop was asked for: by a signal (remembered here) or through rq's own stop request."""
        return self.stop_signalled or bool(self._stop_requested)  # type: ignore[attr-defined]


HEARTBEAT_EVERY_SECONDS = 1.0


class _OneTripHeartbeat:
    """rq's own worker heartbeat (HSET + 2 EXPIREs) sent as one pipeline, at most once a second.

    rq calls it unpipelined three times per job (after the job, before and after each dequeue), each
    command its own round trip: 9 of a job's ~34. The worker key's TTL is ``worker_ttl`` + 60 s and a
    dequeue blocks at most ``worker_ttl`` - 15 s, so a beat skipped within a second of the last one
    never lets the key expire. Calls with rq's pipeline (job start, job monitoring) go through as is.
    """

    _last_beat = float("-inf")  # monotonic time of the last unpipelined beat

    def heartbeat(self, timeout: int | None = None, pipeline: redis.client.Pipeline | None = None) -> None:
        if pipeline is not None:
            super().heartbeat(timeout, pipeline=pipeline)  # type: ignore[misc]
            return
        at = time.monotonic()
        if timeout is None and at - self._last_beat < HEARTBEAT_EVERY_SECONDS:
            return
        self._last_beat = at
        connection: redis.Redis = self.connection  # type: ignore[attr-defined]
        with connection.pipeline(transaction=False) as pipe:
            super().heartbeat(timeout, pipeline=pipe)  # type: ignore[misc]
            pipe.execute()


class _StateWrittenOnChange:
    """rq writes the worker's state unpipelined twice after every job (``idle`` when the job is done,
    ``idle`` again before the next dequeue), each a round trip; a state the worker already has is not
    written again. Writes with rq's pipeline (``busy`` at job start) go through as is."""

    def set_state(self, state: str, pipeline: redis.client.Pipeline | None = None) -> None:
        if pipeline is None and state == self.get_state():  # type: ignore[attr-defined]
            return
        super().set_state(state, pipeline=pipeline)  # type: ignore[misc]


SUSPENSION_CHECK_EVERY_SECONDS = 1.0


class _SuspensionAskedOnceASecond:
    """rq asks Redis whether workers are suspended (``rq suspend``) before every job, a round trip each;
    asked at most once a second here, so a suspension stops a busy worker within a second (rq itself
    only asks between jobs, and while suspended asks every second)."""

    _last_asked = float("-inf")  # monotonic time of the last question

    def check_for_suspension(self, burst: bool) -> None:
        at = time.monotonic()
        if at - self._last_asked < SUSPENSION_CHECK_EVERY_SECONDS:
            return
        self._last_asked = at
        super().check_for_suspension(burst)  # type: ignore[misc]


class SupervisedSimpleWorker(
    _StopAware, _OneTripHeartbeat, _StateWrittenOnChange, _SuspensionAskedOnceASecond, rq.SimpleWorker
):
    pass


class SupervisedForkWorker(
    _StopAware, _OneTripHeartbeat, _StateWrittenOnChange, _SuspensionAskedOnceASecond, rq.Worker
):
    pass


SupervisedWorker = SupervisedSimpleWorker | SupervisedForkWorker


STRANDED_SECONDS = 3.0


def _requeue_stranded(conn: redis.Redis, queue: rq.Queue, seen: dict[str, float]) -> int:
    """Jobs a worker took off the queue (into rq's intermediate list) but died before starting.

    rq notices them only after a minute, in its 10-minute maintenance. Here: seen by this sweeper at
    least 3 s ago and still not started, back to the front of the queue. ``seen`` (job id → first
    sighting, monotonic) belongs to the caller. A live but very slow worker may then run the job twice;
    the dedupe claim and the per-job outcome marker make that harmless.
    """
    iq = queue.intermediate_queue
    moved = 0
    waiting = set(iq.get_job_ids())
    for job_id in list(seen):
        if job_id not in waiting:
            del seen[job_id]
    for job_id in waiting:
        if job_id in queue.started_job_registry:
            continue
        if time.monotonic() - seen.setdefault(job_id, time.monotonic()) < STRANDED_SECONDS:
            continue
        del seen[job_id]
        with conn.pipeline() as pipe:
            pipe.lrem(iq.key, 1, job_id)
            if conn.exists(Job.key_for(job_id)):
                queue.push_job_id(job_id, pipeline=pipe, at_front=True)
            pipe.execute()
        moved += 1
    if moved:
        log.warning("requeued %d job(s) stranded between dequeue and start by dead workers", moved)
    return moved


def run_supervised(
    make_worker: Callable[[str], SupervisedWorker],
    liveness: Liveness,
    *,
    burst: bool,
    work: Callable[[SupervisedWorker], object],
    sleep: Callable[[float], object] = time.sleep,
) -> None:
    """Run workers until a stop signal (or the end of a burst); a worker lost to a Redis outage is
    replaced by a fresh one after a backoff (0.5 s doubling to 15 s, reset after a healthy run)."""
    backoff = BACKOFF_START_SECONDS
    while True:
        w: SupervisedWorker | None = None
        began = time.monotonic()
        failure: BaseException | None = None
        try:
            w = make_worker(new_worker_name())  # talks to Redis already (CLIENT SETNAME)
            liveness.name = w.name
            liveness.beat()
            liveness.move_due_jobs()  # a --burst run ends before the thread's first tick
            work(w)
        except StopRequested:
            return
        except (redis.RedisError, OSError) as exc:
            failure = exc
        if w is None:
            log.error("WORKER COULD NOT START (%s: %s); retrying in %.1f s", type(failure).__name__, failure, backoff)
        elif burst or w.stopping:
            return
        elif time.monotonic() - began > 60:
            backoff = BACKOFF_START_SECONDS
        else:
            log.error(
                "WORKER %s STOPPED WITHOUT A STOP SIGNAL (%s); Redis unreachable? starting a new worker in %.1f s",
                w.name,
                f"{type(failure).__name__}: {failure}" if failure else "rq quit after an unhandled exception",
                backoff,
            )
        try:
            sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)
            wait_for_redis(liveness.conn, sleep)
        except StopRequested:  # rq's signal handlers stay installed between workers
            return


def wait_for_redis(conn: redis.Redis, sleep: Callable[[float], object] = time.sleep) -> None:
    """Block until Redis answers (and has loaded its AOF), retrying with backoff and logging loudly."""
    delay = BACKOFF_START_SECONDS
    while True:
        try:
            conn.ping()
            return
        except (redis.ConnectionError, redis.BusyLoadingError, redis.TimeoutError) as exc:
            log.error("Redis unreachable (%s); retrying in %.1f s", exc, delay)
            sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_SECONDS)
