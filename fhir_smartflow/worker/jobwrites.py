"""The writes of one event job that land in its final transaction, with the dedupe ``done`` mark.

While `collecting()` is open on a thread (`jobs.handle_event`, around the dispatch of the job's own
event), `RedisPriorState.put` and `RunHistory.add` hand their writes here instead of sending them; the
job then sends them in the same MULTI as ``done`` and its outcome counter (`jobs._count_outcome`): one
WATCH + MGET + EXEC instead of a compare-and-set and a pipeline each. Atomic with ``done`` too: a worker
killed before it leaves the transition to fire again on the retry (execution is idempotent); one killed
after it has nothing left to do.

Without an open collection (follow-up jobs, nested events found by re-querying criteria, tests, the
console) they write at once, as before.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class GuardedSet:
    """``SET key payload EX ttl`` unless ``keep_stored(stored value)`` says the stored one wins."""

    key: str
    payload: str
    ttl: int
    keep_stored: Callable[[bytes], bool]


@dataclass
class JobWrites:
    guarded: dict[str, GuardedSet] = field(default_factory=dict)  # by key: the last write of a key wins
    queued: list[Callable[[Any], object]] = field(default_factory=list)  # unconditional, queued on a pipeline
    # Values the job read ahead (with its claim) for the dispatch, by key; each is taken once.
    read_ahead: dict[str, bytes | None] = field(default_factory=dict)

    def watched(self) -> list[str]:
        return list(self.guarded)

    def queue_on(self, pipe: Any, stored: dict[str, bytes | None]) -> None:
        """Queue every write on ``pipe`` (in MULTI); ``stored``: the guarded keys' values read under WATCH."""
        for write in self.guarded.values():
            held = stored.get(write.key)
            if held is None or not write.keep_stored(held):
                pipe.set(write.key, write.payload, ex=write.ttl)
        for queue in self.queued:
            queue(pipe)


class _Local(threading.local):
    writes: JobWrites | None = None


_local = _Local()


def current() -> JobWrites | None:
    """The open collection of this thread, if any."""
    return _local.writes


@contextlib.contextmanager
def collecting(writes: JobWrites | None = None) -> Iterator[JobWrites]:
    """Collect this thread's prior-state and history writes until the block ends (not nestable); into
    ``writes`` when given (an event dispatched in steps collects into one JobWrites throughout)."""
    if current() is not None:
        raise RuntimeError("job writes are already being collected on this thread")
    writes = _local.writes = writes if writes is not None else JobWrites()
    try:
        yield writes
    finally:
        _local.writes = None
