import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from django.db import DatabaseError, InterfaceError, OperationalError, connections
from django.tasks import TaskContext, task_backends
from django.tasks.signals import task_finished, task_started
from django.utils import timezone

from ..db import database
from ..exceptions import (
    ClaimLostError,
    ExactlyOnceViolation,
    JobTimeoutError,
    ShutdownTimeoutError,
    TransactionRolledBackError,
)
from ..models import ClaimedExecution, Job, Process, ReadyExecution
from ..queues import QueueSelector, serves
from ..serialization import describe_error, exception_path, jsonable, load_task
from .base import Role, database_retry_delay
from .batching import GroupCommit
from .pool import Pool

logger = logging.getLogger("dq")

# After losing its LISTEN connection, how often a worker tries to open a new one.
RELISTEN_INTERVAL = 5.0
# A thread's connection unused for longer than this is checked before its next job: it may
# have been cut meanwhile (a database restart, idle_session_timeout, a proxy). Jobs that
# follow one another closely pay no query for the check.
CHECK_CONNECTION_AFTER = 1.0
# How often a worker looks for claims of its own that no thread runs (a statement that
# claimed jobs committed, but its reply was lost), and how old such a claim must be.
UNTRACKED_CLAIM_AGE = 10.0
_WRITES = ("INSERT", "UPDATE", "DELETE", "MERGE", "CREATE", "ALTER", "DROP", "TRUNCATE")


def resident_memory_mib():
    """This process's resident memory, or 0 if it cannot be read (no /proc)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerTaskContext(TaskContext):
    """The context a ``takes_context=True`` task receives from dq."""

    is_stopping: Callable[[], bool] = field(default=lambda: False, repr=False)
    database: str = "default"

    @property
    def stopping(self):
        """True once the worker running this job is shutting down: a long task should
        checkpoint and return; if it outlasts the shutdown timeout it is interrupted."""
        return self.is_stopping()

    @property
    def cancel_requested(self):
        """True once someone asked to cancel this job (``DQBackend.cancel``, the admin): a
        task that can stop early should; its run then ends as it returns or raises."""
        return (
            Job.objects.using(self.database)
            .filter(pk=int(self.task_result.id), cancel_requested_at__isnull=False)
            .exists()
        )


@dataclass
class _Stage:
    """How far an exactly_once run's transaction got: begun (its claim held), and the
    task run."""

    began: bool = False
    ran: bool = False


@dataclass
class Run:
    """A job running in one of the pool's threads."""

    job: Job
    deadline: float | None  # time.monotonic() past which it has outrun its timeout
    backend_pid: int | None = None  # the database session of an exactly_once run
    timed_out: bool = False


class Worker(Role):
    """Claims ready jobs, at most as many as it has idle threads, and runs them."""

    kind = Process.Kind.WORKER

    def __init__(self, config, worker_config, **kwargs):
        super().__init__(config, **kwargs)
        self.worker_config = worker_config
        self.queues = tuple(QueueSelector(text) for text in worker_config.queues)
        self.threads = worker_config.threads
        self.polling_interval = (
            worker_config.polling_interval or database(self.database).polling_interval
        )
        self.pool = None
        self.listener = None
        self.next_listen_at = 0.0
        self.runs = {}  # claim id -> Run
        # Successful runs are recorded together with those that end at the same time.
        self.finishes = GroupCommit(self.finish_batch)
        self.thread_state = threading.local()
        self.jobs_done = 0
        self.next_claims_audit = 0.0
        self.recycling = None  # why this worker is stopping to be replaced

    def metadata(self):
        return {"queues": list(self.worker_config.queues), "threads": self.threads}

    def start(self):
        self.pool = Pool(self.threads, on_idle=self.wakeup.set)

    def listen(self):
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

    def poll(self):
        if self.listener is None:
            self.listen()
        self.enforce_timeouts()
        self.release_untracked_claims()
        if self.stopping is not None:  # recycling: claim nothing, not even the job just timed out
            return 0
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

    def track(self, job):
        """Note a claimed job as running here, with the deadline of its timeout."""
        deadline = time.monotonic() + job.timeout if job.timeout else None
        self.runs[job.claim_id] = Run(job=job, deadline=deadline)

    def wait(self, timeout):
        """Wait for a free thread, a signal, or a notification about a queue this worker serves."""
        if self.listener is None:
            return super().wait(timeout)
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

    def enforce_timeouts(self):
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
                logger.exception("%s: cannot interrupt job %s now", self.name, run.job.pk)

    def release_untracked_claims(self):
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

    def recycle(self, reason):
        """Stop gracefully so that the supervisor starts a fresh worker in this one's place."""
        if self.recycling is None:
            self.recycling = reason
            logger.info("%s: recycling: %s", self.name, reason)
            self.stop("graceful")

    def perform(self, job):
        """Run one claimed job in a pool thread and record how it ended. Returns the job
        this thread runs next, claimed (and tracked) in the statement that recorded this
        one's end, or None."""
        state = self.thread_state
        connection = connections[self.database]
        suspect = (
            getattr(state, "database_errors", 0) != self.database_errors
            or time.monotonic() - getattr(state, "last_used", 0.0) > CHECK_CONNECTION_AFTER
        )
        if suspect and connection.connection is not None and not connection.is_usable():
            connection.close()
        state.database_errors = self.database_errors
        next_job = None
        try:
            next_job = self._perform(job)
        except Exception:
            logger.exception("%s: could not record the end of job %s", self.name, job.pk)
        finally:
            self.runs.pop(job.claim_id, None)
            connection = connections[self.database]
            if connection.errors_occurred and not connection.is_usable():
                connection.close()
            state.last_used = time.monotonic()
            self.jobs_done += 1
            self.check_recycling()
        return next_job

    def claims_next(self):
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

    def check_recycling(self):
        limit_jobs, limit_memory = self.worker_config.max_jobs, self.worker_config.max_memory
        if limit_jobs and self.jobs_done >= limit_jobs:
            self.recycle(f"ran {self.jobs_done} jobs (max_jobs {limit_jobs})")
        elif limit_memory and (memory := resident_memory_mib()) > limit_memory:
            self.recycle(f"uses {memory:.0f} MiB (max_memory {limit_memory})")

    def _perform(self, job):
        task = backend = None
        started = time.monotonic()
        try:
            # Anything that goes wrong from here on is the job's failure, never the worker's.
            task = load_task(job.task_path)
            backend = task_backends[job.backend]
            result = backend.to_result(job, task, running_worker_id=self.name)
            task_started.send(type(backend), task_result=result)
            if job.delivery == Job.Delivery.EXACTLY_ONCE:
                ended, next_job = self.run_exactly_once(job, task, result), None
            else:
                job.return_value = self.call(job, task, result)
                ended, next_job = self.record_end(
                    functools.partial(self.finishes.submit, (job, self.claims_next()))
                )
        except BaseException as error:  # a task's SystemExit must not stop the worker
            if isinstance(error, TransactionRolledBackError):
                end = functools.partial(self.interrupt_run, job, error)
            else:
                end = functools.partial(
                    ClaimedExecution.fail,
                    job.claim_id,
                    describe_error(error),
                    worker_id=self.name,
                    using=self.database,
                )
            ended = self.record_end(end)
            # Announced while the error is handled: a receiver of task_finished that logs
            # (Django's own) logs its traceback.
            self.announce(job, ended, task, backend, error, time.monotonic() - started)
            return None
        # The end is committed, and so is the claim of next_job: whatever the announcing
        # does, next_job is returned to run.
        self.announce(job, ended, task, backend, None, time.monotonic() - started)
        return next_job

    def announce(self, job, ended, task, backend, failure, duration):
        """Signal and log how a job's run ended, once its end is recorded; called while
        ``failure``, if any, is being handled."""
        try:
            if ended is None:
                logger.warning(
                    "%s: job %s was taken over while it ran (%.1fs); its outcome is dropped",
                    self.name,
                    job.pk,
                    duration,
                )
            elif failure is not None and ended.status != ended.Status.FAILED:
                logger.warning(
                    "%s: job %s (%s) attempt %s raised %s: %s; retrying at %s",
                    self.name,
                    job.pk,
                    job.task_path,
                    ended.attempt_count,
                    exception_path(type(failure)),
                    failure,
                    ended.scheduled_at if ended.status == ended.Status.SCHEDULED else "once",
                )
            elif backend is not None:
                task_finished.send(type(backend), task_result=backend.to_result(ended, task))
            else:
                logger.error(
                    "%s: job %s (%s) failed: %s",
                    self.name,
                    job.pk,
                    job.task_path,
                    ended.errors[-1]["message"],
                    exc_info=failure,
                )
        except Exception:
            logger.exception("%s: could not announce the end of job %s", self.name, job.pk)

    def call(self, job, task, result):
        if task.takes_context:
            context = WorkerTaskContext(
                task_result=result,
                is_stopping=lambda: self.stopping is not None,
                database=self.database,
            )
            value = task.call(context, *job.args, **job.kwargs)
        else:
            value = task.call(*job.args, **job.kwargs)
        return jsonable(value, f"The return value of {job.task_path}")

    def run_exactly_once(self, job, task, result):
        """Run the task and record its success in one transaction: a crash, an error or an
        interruption rolls back both, and the job runs again. A database error before
        the task runs (a lock wait at BEGIN) is retried; one that rolls the transaction
        back after it began running (a lock timeout, a deadlock, a failed commit) is
        raised as TransactionRolledBackError, an interruption."""
        stage = _Stage()
        try:
            return self.record_end(
                functools.partial(self._run_in_one_transaction, job, task, result, stage),
                retry=lambda error: not stage.began,  # nothing of the task ran: again
                doing=f"begin job {job.pk}'s transaction",
            )
        except DatabaseError as error:
            # Not a TransactionManagementError: a task that broke its own transaction.
            lost_commit = stage.ran and isinstance(error, OperationalError | InterfaceError)
            if lost_commit or database(self.database).lock_conflict(error):
                raise TransactionRolledBackError(
                    f"the transaction of its run on {self.name} was rolled back: "
                    f"{exception_path(type(error))}: {error}"
                ) from error
            raise

    def _run_in_one_transaction(self, job, task, result, stage):
        stage.began = stage.ran = False
        with database(self.database).atomic():
            if not ClaimedExecution.hold(job.claim_id, using=self.database):
                return None
            stage.began = True
            run = self.runs.get(job.claim_id)
            if run is not None:
                run.backend_pid = database(self.database).session_id()
            with writes_confined_to(self.database):
                value = self.call(job, task, result)
            stage.ran = True
            return ClaimedExecution.finish(
                job.claim_id, value, worker_id=self.name, using=self.database
            )

    def interrupt_run(self, job, error):
        """Record a run whose transaction was rolled back as an interruption: the job runs
        again, as its delivery policy says. Returns the job, or None if its claim was
        taken over."""
        claim = ClaimedExecution.objects.filter(pk=job.claim_id)
        if not ClaimedExecution.interrupt(claim, type(error), str(error), using=self.database):
            return None
        return Job.objects.using(self.database).get(pk=job.pk)

    def finish_batch(self, items):
        """Record runs that succeeded (each job's ``return_value`` set) in one transaction
        and, in the same statement, claim a job for each of their threads that asks for one.
        Items are ``(job, wants_next)``; returns ``(ended job or None, next job or None)``
        for each."""
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
        claimed = iter(claimed)
        return [
            (ended[job.claim_id], next(claimed, None) if wants else None) for job, wants in items
        ]

    def record_end(self, write, *, retry=lambda error: True, doing="record a job's end"):
        """Record how a job ended, retrying on database errors (those ``retry`` accepts): a
        job must never stay claimed by a live worker that is no longer running it."""
        failures = 0
        while True:
            try:
                return write()
            except DatabaseError as error:
                failures += 1
                self.database_errors += 1  # other threads' connections may be cut too
                if self.stopping == "immediate" or not retry(error):
                    raise
                delay = database_retry_delay(failures)
                logger.exception("%s: cannot %s; retrying in %.1fs", self.name, doing, delay)
                connections[self.database].close()
                time.sleep(delay)  # backoff between retries, in this job's own thread

    def shut_down(self):
        if self.pool is None:
            return super().shut_down()
        self.pool.shutdown()
        if self.stopping == "graceful":
            deadline = time.monotonic() + self.config.shutdown_timeout
            while self.running_count() and self.stopping == "graceful":
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
        if self.stopping == "graceful" and running:
            return (
                ShutdownTimeoutError,
                f"still running when {self.name}'s shutdown timeout of "
                f"{self.config.shutdown_timeout}s ran out",
            )
        return super().shut_down()

    def running_count(self):
        """Jobs still running whose end matters (a timed-out run was already interrupted)."""
        return sum(not run.timed_out for run in list(self.runs.values()))


@contextlib.contextmanager
def writes_confined_to(alias):
    """Refuse, in this thread, writes to any database but ``alias``: they would not be
    part of the transaction that makes an exactly_once run exactly once."""
    with contextlib.ExitStack() as stack:
        for other in connections:
            if other != alias:
                stack.enter_context(
                    connections[other].execute_wrapper(_refuse_writes(other, alias))
                )
        yield


def _refuse_writes(other, alias):
    def refuse(execute, sql, params, many, context):
        if sql.lstrip().upper().startswith(_WRITES):
            raise ExactlyOnceViolation(
                f"An exactly_once task wrote to database {other!r}; only its writes to "
                f"{alias!r} commit together with the job. Move the write, or use "
                "delivery='at_least_once' for this task."
            )
        return execute(sql, params, many, context)

    return refuse
