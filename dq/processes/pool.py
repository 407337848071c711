import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..models import Job


class Pool:
    """A fixed set of threads that run claimed jobs; knows how many are idle."""

    def __init__(self, threads: int, *, on_idle: Callable[[], None]) -> None:
        self.size = threads
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="dq-job")
        self._busy = 0
        self._lock = threading.Lock()
        self._on_idle = on_idle

    @property
    def idle(self) -> int:
        with self._lock:
            return self.size - self._busy

    def submit(self, run: Callable[["Job"], "Job | None"], job: "Job") -> None:
        with self._lock:
            if self._busy >= self.size:
                raise RuntimeError("No idle thread: claim at most Pool.idle jobs.")
            self._busy += 1
        self._executor.submit(self._run, run, job)

    def _run(self, run: Callable[["Job"], "Job | None"], job: "Job | None") -> None:
        try:
            while job is not None:  # run(job) returns the job this thread runs next, if any
                job = run(job)
        finally:
            with self._lock:
                self._busy -= 1
            self._on_idle()

    def shutdown(self) -> None:
        """Stop accepting work; running jobs carry on until the process exits."""
        self._executor.shutdown(wait=False, cancel_futures=True)
