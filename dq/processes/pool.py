"""A worker's threads and the buffer of claimed jobs they take their next job from."""

import collections
import threading
from collections.abc import Callable

from ..models import Job


class Buffer:
    """Claimed jobs waiting for a free thread, oldest claim first within a priority (the
    order the claim returned them). ``take`` blocks until a job or the buffer's closing;
    below ``low`` jobs it calls ``on_low`` (the main loop claims more)."""

    def __init__(self, *, low: int, on_low: Callable[[], None]) -> None:
        self._jobs: collections.deque[Job] = collections.deque()
        self._taken = 0  # jobs handed to threads so far
        self._changed = threading.Condition()
        self._closed = False
        self.low = low
        self._on_low = on_low

    def __len__(self) -> int:
        return len(self._jobs)

    def taken_or_waiting(self) -> int:
        """The jobs handed to threads so far and those still waiting, read at one moment:
        a job a thread has just taken (and not yet started) is counted once."""
        with self._changed:
            return self._taken + len(self._jobs)

    def put(self, jobs: list[Job]) -> None:
        with self._changed:
            self._jobs.extend(jobs)
            self._changed.notify(len(jobs))  # as many threads as there are jobs, no more

    def take(self) -> Job | None:
        """The next job, or None once the buffer is closed."""
        with self._changed:
            while not self._jobs and not self._closed:
                self._changed.wait()
            if self._closed:
                return None
            job = self._jobs.popleft()
            self._taken += 1
            low = len(self._jobs) < self.low
        if low:
            self._on_low()
        return job

    def close(self) -> list[Job]:
        """Stop handing out jobs; returns those no thread took."""
        with self._changed:
            self._closed = True
            left, self._jobs = list(self._jobs), collections.deque()
            self._changed.notify_all()
        return left


class Pool:
    """A fixed set of threads, each known by its number, that run the jobs they take
    from a buffer until it closes."""

    def __init__(self, threads: int, buffer: Buffer, run: Callable[[Job, int], None]) -> None:
        self.size = threads
        self._buffer = buffer
        self._run = run
        self._threads = [
            threading.Thread(
                target=self._serve, args=(number,), name=f"dq-job-{number}", daemon=True
            )
            for number in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def _serve(self, number: int) -> None:
        while (job := self._buffer.take()) is not None:
            self._run(job, number)
