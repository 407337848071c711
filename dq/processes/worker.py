"""The worker: its main loop claims jobs into a buffer that its threads run from, and
writes what they hand back (the starts and successful ends of runs) together with its next
claim; it enforces timeouts, gives up claims it never received, and recycles itself past
its limits. How one job runs is in ``Running``."""

import contextlib
import logging
import os
import time
from collections.abc import Collection
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError, connections
from django.utils import timezone

from ..conf import Configuration, WorkerConfig
from ..db import Claim, Listener, database
from ..exceptions import ClaimLostError, JobTimeoutError, ProcessExitError, ShutdownTimeoutError
from ..models import ClaimedExecution, Job, Process, ReadyExecution
from ..queues import QueueSelector, serves
from .base import Role, StopMode, database_retry_delay
from .batching import WriteAbandoned, Writes
from .board import RunBoard, board_slots
from .pool import Buffer, Pool
from .running import Run, Running, job_fields

if TYPE_CHECKING:
    from .metrics import Metrics

logger = logging.getLogger(__name__)

# After losing its LISTEN connection, how often a worker tries to open a new one.
RELISTEN_INTERVAL = 5.0
# How often a worker looks for claims of its own that no thread runs (a statement that
# claimed jobs committed, but its reply was lost), and how old such a claim must be.
UNTRACKED_CLAIM_AGE = 10.0
# A worker claims ahead of its free threads the jobs it would start within this many
# seconds at the rate it has been ending them (at most ``prefetch``): many short jobs are
# claimed many at a time, long ones no sooner than a thread is free for them.
CLAIM_AHEAD = 0.05


def resident_memory_mib() -> float:
    """This process's resident memory, or 0 if it cannot be read (no /proc)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


class Worker(Running, Role):
    """Claims ready jobs for its threads and a few ahead of them, and runs them."""

    kind = Process.Kind.WORKER

    def __init__(
        self,
        config: Configuration,
        worker_config: WorkerConfig,
        *,
        supervisor_pid: int,
        supervisor_id: int,
        board: RunBoard | None = None,
        metrics: "Metrics | None" = None,
    ) -> None:
        super().__init__(config, supervisor_pid=supervisor_pid, supervisor_id=supervisor_id)
        self.worker_config = worker_config
        self.metrics = metrics
        self.queues = tuple(QueueSelector(text) for text in worker_config.queues)
        self.threads = worker_config.threads
        self.polling_interval = (
            worker_config.polling_interval or database(self.database).polling_interval
        )
        self.board = board or RunBoard(board_slots(self.threads, worker_config.prefetch))
        self.buffer = Buffer(low=self.threads, on_low=self.buffer_low)
        self.writes = Writes(self.wakeup.set)
        self.pool: Pool | None = None
        self.listener: Listener | None = None
        self.next_listen_at = 0.0
        self.runs: dict[int, Run] = {}  # claim id -> Run, from its claim to its end written
        self.jobs_started = 0
        self.connection_errors: dict[int, int] = {}
        self.connection_used: dict[int, float] = {}
        self.end_rate = 0.0  # runs ended per second, recently
        self.last_flush = time.monotonic()
        # The last claim took all it asked for: more may be ready (so far: nothing known).
        self.more_ready = True
        self.next_claims_audit = 0.0
        self.recycling: str | None = None  # why this worker is stopping to be replaced

    def metadata(self) -> dict[str, Any]:
        return {"queues": list(self.worker_config.queues), "threads": self.threads}

    def start(self) -> None:
        self.pool = Pool(self.threads, self.buffer, self.perform)

    def listen(self) -> None:
        db = database(self.database)
        if not db.notifies or time.monotonic() < self.next_listen_at:
            return
        self.next_listen_at = time.monotonic() + RELISTEN_INTERVAL
        try:
            self.listener = db.listen()
        except Exception:
            logger.exception(
                "%s: cannot LISTEN; polling every %ss", self.name, self.polling_interval
            )

    def poll(self) -> float:
        if self.listener is None:
            self.listen()
        self.enforce_timeouts()
        self.release_untracked_claims()
        claimed = self.flush()
        self.check_recycling()
        now = time.monotonic()
        if self.writes.due_now() or (self.more_ready and len(self.buffer) < self.buffer.low):
            return 0
        delays = [self.polling_interval if not claimed else 1.0]
        if (due := self.writes.next_due()) is not None:
            delays.append(due - now)
        delays += [
            run.deadline - now for run in self.runs.values() if run.deadline and not run.timed_out
        ]
        return min(delays)

    def wanted(self, ending: int = 0) -> int:
        """How many jobs to claim now, while the ends of ``ending`` runs are written: one
        for each thread without a job, and those it would start within CLAIM_AHEAD (none
        once it is stopping)."""
        if self.stopping is not None:
            return 0
        ahead = min(self.worker_config.prefetch, int(self.end_rate * CLAIM_AHEAD))
        wanted = self.threads + ahead - (len(self.runs) - ending)
        if self.worker_config.max_jobs:  # no more than it runs before it is recycled
            # Counted by the buffer at one moment: a job a thread has taken but not yet
            # started is neither in jobs_started nor in the buffer any more.
            left = self.worker_config.max_jobs - self.buffer.taken_or_waiting()
            wanted = min(wanted, left)
        return max(0, wanted)

    def flush(self, *, claim: bool = True) -> int:
        """Write the starts and ends the threads handed in and (with ``claim``) claim jobs
        for the buffer, in one transaction. Returns how many jobs it claimed."""
        starts, ends = self.writes.due()
        # Claimed when the buffer runs low, many at a time; the runs ending free places.
        low = claim and len(self.buffer) < self.buffer.low
        limit = self.wanted(len(ends)) if low else 0
        if not (starts or ends or limit):
            return 0
        assert self.process is not None
        selector = self.queues[0] if len(self.queues) == 1 else None
        claiming = None
        if selector is not None and limit:
            claiming = Claim(selector, limit, self.config.backend, self.process.pk)
        try:
            started, ended, claimed = ClaimedExecution.flush(
                starts=[write.job for write in starts],
                ends=[write.job for write in ends],
                claim=claiming,
                worker_id=self.name,
                using=self.database,
            )
        except DatabaseError:
            self.writes.retry(starts, ends)
            raise
        self.writes.written(starts, started)
        self.writes.written(ends, ended)
        self.track(claimed)
        now = time.monotonic()
        elapsed, self.last_flush = max(now - self.last_flush, 1e-3), now
        self.end_rate = 0.8 * self.end_rate + 0.2 * (len(ends) / elapsed)
        for write in ends:
            if write.done is None:  # the thread that ran it went on: announce it here
                self.announce_end(write.job, write.job.claim_id in ended)
            self.forget(write.job.claim_id)
        if selector is None and limit:  # one claim statement serves one selector
            claimed = ReadyExecution.claim(
                self.queues, limit, self.process, backend=self.config.backend, using=self.database
            )
            self.track(claimed)
        if limit:  # a flush that claimed nothing learned nothing of what is ready
            self.more_ready = len(claimed) >= limit
        return len(claimed)

    def buffer_low(self) -> None:
        """A thread took a job and left the buffer low: claim more, if more may be ready
        (else a notification or the next poll finds them; an idle worker woken for one
        job must not send an empty claim while that job starts)."""
        if self.more_ready:
            self.wakeup.set()

    def track(self, claimed: list[Job]) -> None:
        """Hold jobs just claimed as runs of this worker, buffered for its threads."""
        for job in claimed:
            self.runs[job.claim_id] = Run(job)
        self.buffer.put(claimed)

    def wait(self, timeout: float) -> None:
        """Wait for a thread's write or free place, a signal, or a notification about a
        queue this worker serves."""
        if self.listener is None:
            super().wait(timeout)
            return
        deadline = time.monotonic() + timeout
        while self.wakeup.wait(deadline - time.monotonic(), self.listener):
            try:
                queues = self.listener.drain()
            except Exception:
                logger.exception("%s: lost the LISTEN connection; polling", self.name)
                with contextlib.suppress(Exception):
                    self.listener.close()
                self.listener = None
                self.database_errors += 1
                return
            if "" in queues or any(serves(self.queues, queue) for queue in queues):
                return

    def enforce_timeouts(self) -> None:
        """Interrupt runs that outlived their task's timeout, then recycle this worker:
        a Python thread cannot be stopped, so the process that runs it must go."""
        now = time.monotonic()
        for claim_id, run in list(self.runs.items()):
            if run.timed_out or run.deadline is None or now < run.deadline:
                continue
            run.timed_out = True
            logger.error(
                "%s: job %s (%s) outran its timeout of %ss",
                self.name,
                run.job.pk,
                run.job.task_path,
                run.job.timeout,
                extra=job_fields(run.job),
            )
            self.recycle(f"job {run.job.pk} outran its timeout and its thread cannot be stopped")
            try:
                if run.backend_pid is not None:
                    # Roll back the run's transaction so that its claim can be interrupted.
                    database(self.database).terminate_session(run.backend_pid)
                ClaimedExecution.interrupt(
                    ClaimedExecution.objects.filter(pk=claim_id),
                    JobTimeoutError,
                    f"ran longer than its timeout of {run.job.timeout}s on {self.name}",
                    running={claim_id},
                    using=self.database,
                )
            except DatabaseError:
                # Its claim is recovered as orphaned once this process has exited.
                logger.exception(
                    "%s: cannot interrupt job %s now",
                    self.name,
                    run.job.pk,
                    extra=job_fields(run.job),
                )

    def release_untracked_claims(self) -> None:
        """End claims of this process that no thread of it runs nor waits to: a statement
        that claimed them committed, but its reply was lost with the connection. Every
        claim is tracked as soon as its statement returns, so an untracked one this old is
        lost (none of them started here: they go back to ready)."""
        if time.monotonic() < self.next_claims_audit:
            return
        self.next_claims_audit = time.monotonic() + UNTRACKED_CLAIM_AGE
        lost = ClaimedExecution.objects.filter(
            process=self.process,
            claimed_at__lt=timezone.now() - timedelta(seconds=UNTRACKED_CLAIM_AGE),
        ).exclude(pk__in=list(self.runs))
        released = ClaimedExecution.interrupt(
            lost,
            ClaimLostError,
            f"claimed by {self.name}, which never received the claim",
            using=self.database,
        )
        if released:
            logger.warning("%s: released %s claim(s) it never received", self.name, released)

    def recycle(self, reason: str) -> None:
        """Stop gracefully so that the supervisor starts a fresh worker in this one's place."""
        if self.recycling is None:
            self.recycling = reason
            logger.info("%s: recycling: %s", self.name, reason)
            self.stop(StopMode.GRACEFUL)

    def check_recycling(self) -> None:
        limit_jobs, limit_memory = self.worker_config.max_jobs, self.worker_config.max_memory
        if limit_jobs and self.jobs_started >= limit_jobs:
            self.recycle(f"ran {self.jobs_started} jobs (max_jobs {limit_jobs})")
        elif limit_memory and (memory := resident_memory_mib()) > limit_memory:
            self.recycle(f"uses {memory:.0f} MiB (max_memory {limit_memory})")

    def shut_down(self) -> tuple[type[BaseException], str]:
        """Give the buffered jobs back, let running ones end (gracefully: within the
        shutdown timeout) while their ends are written, then write what is left."""
        if self.pool is None:
            return super().shut_down()
        self.release_buffered()
        deadline = time.monotonic() + self.config.shutdown_timeout
        while True:  # the running end; their ends are written as they come
            self.flush_waiting_out_errors(deadline)
            left = deadline - time.monotonic()
            if not self.unended_count() or self.stopping is not StopMode.GRACEFUL or left <= 0:
                break
            self.wakeup.wait(left)
        self.flush_waiting_out_errors(time.monotonic() + 1.0)
        # Starts not waited for are left: the runs still going are interrupted here.
        abandoned = self.writes.abandon(WriteAbandoned(f"{self.name} stopped first"))
        lost = [write for write in abandoned if write.end]
        if lost:
            logger.warning(
                "%s: the ends of %s run(s) could not be written before it stopped: they run again",
                self.name,
                len(lost),
            )
        if self.listener is not None:
            with contextlib.suppress(Exception):
                self.listener.close()
        running = self.running_count()
        if running:
            logger.warning(
                "%s: %s job(s) still running at shutdown are interrupted", self.name, running
            )
        if self.stopping is StopMode.GRACEFUL and running:
            return (
                ShutdownTimeoutError,
                f"still running when {self.name}'s shutdown timeout of "
                f"{self.config.shutdown_timeout}s ran out",
            )
        return super().shut_down()

    def release_buffered(self) -> None:
        """Put the jobs no thread took back in the ready table, as if never claimed."""
        left = self.buffer.close()
        if not left:
            return
        with contextlib.suppress(DatabaseError):  # else deregistering gives them back
            ClaimedExecution.interrupt(
                ClaimedExecution.objects.filter(pk__in=[job.claim_id for job in left]),
                ProcessExitError,
                f"{self.name} stopped before running it",
                using=self.database,
            )
        for job in left:
            self.forget(job.claim_id)

    def flush_waiting_out_errors(self, deadline: float) -> None:
        """``flush``, retried after database errors until ``deadline`` (while stopping)."""
        failures = 0
        while self.writes.due_now() and time.monotonic() < deadline:
            try:
                self.flush()
                return
            except DatabaseError:
                failures += 1
                self.database_errors += 1
                logger.exception("%s: cannot write the ends of runs; retrying", self.name)
                connections[self.database].close()
                self.wakeup.wait(min(database_retry_delay(failures), deadline - time.monotonic()))

    def running_count(self) -> int:
        """Runs in progress whose end matters (a timed-out run was already interrupted)."""
        return sum(run.running and not run.timed_out for run in list(self.runs.values()))

    def unended_count(self) -> int:
        """Runs whose end is not written yet, once the buffer is closed: running, or taken
        by a thread that has not started them yet (it is about to: a graceful stop waits
        for those too, rather than interrupt a run as it begins)."""
        return sum(not run.timed_out for run in list(self.runs.values()))

    def running_claims(self) -> set[int]:
        return {claim_id for claim_id, run in list(self.runs.items()) if run.running}

    def deregister(
        self, exception_class: type[BaseException], message: str, *, running: Collection[int] = ()
    ) -> None:
        """Deregister, interrupting the runs in progress here (not those buffered)."""
        super().deregister(exception_class, message, running={*running, *self.running_claims()})
