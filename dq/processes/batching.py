"""The starts and ends of runs that a worker's threads hand its main loop to write: many
runs' writes go to the database together, in one statement with the worker's next claim."""

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..models import Job

# A start not waited for (an at_least_once run's) is written once its run has lasted this
# long, in seconds: a shorter run has its start written with its end, in one update.
START_AFTER = 0.05


class WriteAbandoned(Exception):
    """The worker stopped before this write could be made (the database was failing it)."""


@dataclass(slots=True, eq=False)
class Write:
    """A start or an end of ``job``'s run, to be written from ``due`` (time.monotonic())."""

    job: Job
    due: float
    # Set once written, for a thread that waits for its write; None: nobody waits.
    done: threading.Event | None = None
    recorded: bool = False  # whether it took: the job's claim was still there
    error: BaseException | None = field(default=None, repr=False)
    end: bool = False  # an end (else a start)


class Writes:
    """What the threads hand in, until the main loop takes it (``due``) and says how it
    went (``written``, ``retry``, ``abandon``). A thread that waits for its write
    (``wait=True``) blocks until it is committed, and learns whether it took."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self._lock = threading.Lock()
        self._starts: dict[int, Write] = {}  # claim id -> write
        self._ends: dict[int, Write] = {}
        self._wake = wake
        # Where no main loop writes (a worker driven in-process), a thread that waits for
        # its write makes it itself with this.
        self.write_now: Callable[[], object] | None = None

    def start(self, job: Job, *, wait: bool) -> bool:
        """Record that ``job``'s run began (at its ``last_attempted_at``). Waited for: written
        at the next flush, and False if the claim was taken over; else written once the
        run has lasted START_AFTER, if it has not ended by then."""
        if not wait:
            with self._lock:
                self._starts[job.claim_id] = Write(job, time.monotonic() + START_AFTER)
            return True
        write = Write(job, 0.0, threading.Event())
        with self._lock:
            self._starts[job.claim_id] = write
        self._wake()
        return self._wait(write)

    def end(self, job: Job, *, wait: bool) -> bool:
        """Record that ``job``'s run succeeded (its ``return_value`` set), at the next flush;
        a start of it not written yet is written with it. Waited for: False if the claim
        was taken over."""
        write = Write(job, 0.0, threading.Event() if wait else None, end=True)
        with self._lock:
            start = self._starts.get(job.claim_id)
            if start is not None and start.done is None:
                del self._starts[job.claim_id]
            self._ends[job.claim_id] = write
        self._wake()
        return self._wait(write) if wait else True

    def _wait(self, write: Write) -> bool:
        assert write.done is not None
        if self.write_now is not None:
            self.write_now()
        write.done.wait()
        if write.error is not None:
            raise write.error
        return write.recorded

    def due(self) -> tuple[list[Write], list[Write]]:
        """Take the starts due and every end, for one flush."""
        now = time.monotonic()
        with self._lock:
            starts = [write for write in self._starts.values() if write.due <= now]
            for write in starts:
                del self._starts[write.job.claim_id]
            ends, self._ends = list(self._ends.values()), {}
        return starts, ends

    def due_now(self) -> bool:
        """Whether a flush now would write something."""
        now = time.monotonic()
        with self._lock:
            return bool(self._ends) or any(write.due <= now for write in self._starts.values())

    def next_due(self) -> float | None:
        """When the next start not yet due is (time.monotonic()), if any."""
        with self._lock:
            return min((write.due for write in self._starts.values()), default=None)

    def written(self, writes: list[Write], recorded: set[int]) -> None:
        """The flush of ``writes`` committed; ``recorded`` are the claim ids that took."""
        for write in writes:
            write.recorded = write.job.claim_id in recorded
            if write.done is not None:
                write.done.set()

    def retry(self, starts: list[Write], ends: list[Write]) -> None:
        """The flush of these writes failed: hand them in again for the next one (a start
        whose end came meanwhile is written with it)."""
        with self._lock:
            for write in ends:
                self._ends.setdefault(write.job.claim_id, write)
            for write in starts:
                if write.job.claim_id not in self._ends or write.done is not None:
                    self._starts.setdefault(write.job.claim_id, write)

    def abandon(self, error: BaseException) -> list[Write]:
        """Give up every write not made (the worker is stopping): threads waiting for theirs
        get ``error``. Returns the writes given up."""
        with self._lock:
            left = [*self._starts.values(), *self._ends.values()]
            self._starts, self._ends = {}, {}
        for write in left:
            if write.done is not None:
                write.error = error
                write.done.set()
        return left
