"""The worker: claims ready jobs for its idle threads and runs them (``Running``), enforces
their timeouts, gives up claims it never received, and recycles itself past its limits."""

import contextlib
import logging
import os
import threading
import time
from datetime import timedelta
from typing import Any

from django.db import DatabaseError
from django.utils import timezone

from ..conf import Configuration, WorkerConfig
from ..db import Listener, database
from ..exceptions import ClaimLostError, JobTimeoutError, ShutdownTimeoutError
from ..models import ClaimedExecution, Job, Process, ReadyExecution
from ..queues import QueueSelector, serves
from .base import Role, StopMode
from .batching import GroupCommit
from .pool import Pool
from .running import Run, Running, job_fields

logger = logging.getLogger(__name__)

# After losing its LISTEN connection, how often a worker tries to open a new one.
RELISTEN_INTERVAL = 5.0
# How often a worker looks for claims of its own that no thread runs (a statement that
# claimed jobs committed, but its reply was lost), and how old such a claim must be.
UNTRACKED_CLAIM_AGE = 10.0


def resident_memory_mib() -> float:
    """This process's resident memory, or 0 if it cannot be read (no /proc)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


class Worker(Running, Role):
    """Claims ready jobs, at most as many as it has idle threads, and runs them."""

    kind = Process.Kind.WORKER

    def __init__(
        self,
        config: Configuration,
        worker_config: WorkerConfig,
        *,
        supervisor_pid: int,
        supervisor_id: int,
    ) -> None:
        super().__init__(config, supervisor_pid=supervisor_pid, supervisor_id=supervisor_id)
        self.worker_config = worker_config
        self.queues = tuple(QueueSelector(text) for text in worker_config.queues)
        self.threads = worker_config.threads
        self.polling_interval = (
            worker_config.polling_interval or database(self.database).polling_interval
        )
        self.pool: Pool | None = None
        self.listener: Listener | None = None
        self.next_listen_at = 0.0
        self.runs: dict[int, Run] = {}  # claim id -> Run
        # Successful runs are recorded together with those that end at the same time.
        self.finishes = GroupCommit(self.finish_batch)
        self.thread_state = threading.local()
        self.jobs_done = 0
        self.next_claims_audit = 0.0
        self.recycling: str | None = None  # why this worker is stopping to be replaced

    def metadata(self) -> dict[str, Any]:
        return {"queues": list(self.worker_config.queues), "threads": self.threads}

    def start(self) -> None:
        self.pool = Pool(self.threads, on_idle=self.wakeup.set)

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
        if self.stopping is not None:  # recycling: claim nothing, not even the job just timed out
            return 0
        assert self.pool is not None
        assert self.process is not None
        idle = self.pool.idle
        jobs = []
        if idle:
            jobs = ReadyExecution.claim(
                self.queues, idle, self.process, backend=self.config.backend, using=self.database
            )
        for job in jobs:
            self.track(job)
            self.pool.submit(self.perform, job)
        now = time.monotonic()
        delay = 0 if idle and len(jobs) == idle else self.polling_interval
        deadlines = [
            run.deadline for run in self.runs.values() if run.deadline and not run.timed_out
        ]
        return min([delay, *(deadline - now for deadline in deadlines)])

    def track(self, job: Job) -> None:
        """Note a claimed job as running here, with the deadline of its timeout."""
        deadline = time.monotonic() + job.timeout if job.timeout else None
        self.runs[job.claim_id] = Run(job=job, deadline=deadline)

    def wait(self, timeout: float) -> None:
        """Wait for a free thread, a signal, or a notification about a queue this worker serves."""
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
        """Interrupt claims of this process that no thread of it runs: a statement that
        claimed them committed, but its reply was lost with the connection. Every claim is
        tracked as soon as its statement returns, so an untracked one this old is lost."""
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

    def claims_next(self) -> bool:
        """Whether a thread whose run is ending takes a new job as the end is recorded
        (else it goes idle, and the main loop claims for idle threads)."""
        max_jobs, max_memory = self.worker_config.max_jobs, self.worker_config.max_memory
        return (
            self.stopping is None
            and len(self.queues) == 1  # one claim statement serves one queue selector
            # Not past a recycling limit: the worker is about to be replaced.
            and not (max_jobs and self.jobs_done + 1 >= max_jobs)
            and not (max_memory and resident_memory_mib() > max_memory)
        )

    def check_recycling(self) -> None:
        limit_jobs, limit_memory = self.worker_config.max_jobs, self.worker_config.max_memory
        if limit_jobs and self.jobs_done >= limit_jobs:
            self.recycle(f"ran {self.jobs_done} jobs (max_jobs {limit_jobs})")
        elif limit_memory and (memory := resident_memory_mib()) > limit_memory:
            self.recycle(f"uses {memory:.0f} MiB (max_memory {limit_memory})")

    def finish_batch(self, items: list[tuple[Job, bool]]) -> list[tuple[Job | None, Job | None]]:
        """Record runs that succeeded (each job's ``return_value`` set) in one transaction
        and, in the same statement, claim a job for each of their threads that asks for one.
        Items are ``(job, wants_next)``; returns ``(ended job or None, next job or None)``
        for each."""
        assert self.process is not None
        jobs = [job for job, _ in items]
        wanted = sum(wants for _, wants in items) if self.stopping is None else 0
        ended, claimed = ClaimedExecution.finish_and_claim(
            jobs,
            selector=self.queues[0],
            limit=wanted,
            process=self.process,
            backend=self.config.backend,
            using=self.database,
        )
        for next_job in claimed:  # running here from the moment its claim is committed
            self.track(next_job)
        next_jobs = iter(claimed)
        return [
            (ended[job.claim_id], next(next_jobs, None) if wants else None) for job, wants in items
        ]

    def shut_down(self) -> tuple[type[BaseException], str]:
        if self.pool is None:
            return super().shut_down()
        self.pool.shutdown()
        if self.stopping is StopMode.GRACEFUL:
            deadline = time.monotonic() + self.config.shutdown_timeout
            while self.running_count() and self.stopping is StopMode.GRACEFUL:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.wakeup.wait(left)
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

    def running_count(self) -> int:
        """Jobs still running whose end matters (a timed-out run was already interrupted)."""
        return sum(not run.timed_out for run in list(self.runs.values()))
