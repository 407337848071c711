"""How a worker runs one claimed job in a pool thread and records how it ended: the task
called with its context, an exactly_once run in one transaction with its end, the end
written (retried on database errors), then announced through Django's signals and the log."""

import contextlib
import enum
import functools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError, InterfaceError, OperationalError, connections
from django.tasks import Task, TaskContext, TaskResult, task_backends
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.signals import task_finished, task_started
from django.utils import timezone

from .. import tracing
from ..db import database
from ..exceptions import ExactlyOnceViolation, TransactionRolledBackError
from ..log import job_context
from ..models import ClaimedExecution, Job
from ..results import record_outcome, result_of
from ..serialization import describe_error, exception_path, jsonable, load_task
from .base import Runnable, StopMode, database_retry_delay
from .batching import WriteAbandoned, Writes
from .board import RunBoard

if TYPE_CHECKING:
    from .metrics import Metrics

logger = logging.getLogger(__name__)

# A thread's connection unused for longer than this is checked before its next job: it may
# have been cut meanwhile (a database restart, idle_session_timeout, a proxy). Jobs that
# follow one another closely pay no query for the check.
CHECK_CONNECTION_AFTER = 1.0
_WRITES = ("INSERT", "UPDATE", "DELETE", "MERGE", "CREATE", "ALTER", "DROP", "TRUNCATE")


def job_fields(job: Job) -> dict[str, Any]:
    """What every log line about a job carries as ``extra``: logs a machine can filter."""
    return {
        "job_id": job.pk,
        "task": job.task_path,
        "queue": job.queue_name,
        "attempt": job.attempt_count,
    }


class Outcome(enum.StrEnum):
    """How a run ended, as the metrics count it (``dq_jobs_finished_total{status}``)."""

    SUCCESSFUL = "successful"
    FAILED = "failed"  # for good: no attempt left
    RETRIED = "retried"  # it raised, and will run again


# django-stubs declares TaskContext neither frozen (Django's is) nor subscriptable at runtime.
@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerTaskContext(TaskContext):  # type: ignore[misc, type-arg]
    """The context a ``takes_context=True`` task receives from dq."""

    is_stopping: Callable[[], bool] = field(default=lambda: False, repr=False)
    database: str = "default"
    # The batch the job belongs to, if any: ``with add_to_batch(context.batch_id):`` grows it.
    batch_id: str | None = None

    @property
    def stopping(self) -> bool:
        """True once the worker running this job is shutting down: a long task should
        checkpoint and return; if it outlasts the shutdown timeout it is interrupted."""
        return self.is_stopping()

    @property
    def cancel_requested(self) -> bool:
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


@dataclass(eq=False)
class Run:
    """A job this worker claimed, from its claim until its end is written: waiting in the
    buffer, then running in one of the pool's threads."""

    job: Job
    running: bool = False  # taken by a thread (and, but for at_least_once, its start written)
    deadline: float | None = None  # time.monotonic() past which it has outrun its timeout
    backend_pid: int | None = None  # the database session of an exactly_once run
    timed_out: bool = False
    # Its one TaskResult, and what announcing its end needs.
    result: "TaskResult[..., Any] | None" = None
    task: "Task[..., Any] | None" = None
    backend: BaseTaskBackend | None = None
    began: float = 0.0  # time.monotonic() when it started
    slot: int | None = None  # on the board, from its start until its end is written


class Running(Runnable):
    """A worker's way of running jobs (``Worker`` mixes it in)."""

    # What the worker keeps: its runs by claim id, the board its supervisor reads, the
    # writes its threads hand its main loop, the jobs run so far, and what it counts.
    runs: dict[int, Run]
    board: RunBoard
    writes: Writes
    jobs_started: int
    metrics: "Metrics | None"
    # Per pool thread (by number): database_errors when it last ran a job, and when.
    connection_errors: dict[int, int]
    connection_used: dict[int, float]

    def perform(self, job: Job, thread: int) -> None:
        """Run one claimed job in pool thread number ``thread`` and record how it ended: an
        at_least_once run's end is handed to the main loop (which writes and announces it),
        the others' are written before the thread goes on."""
        connection = connections[self.database]
        last_used = self.connection_used.get(thread, 0.0)
        suspect = (
            self.connection_errors.get(thread, 0) != self.database_errors
            or time.monotonic() - last_used > CHECK_CONNECTION_AFTER
        )
        if suspect and connection.connection is not None and not connection.is_usable():
            connection.close()
        self.connection_errors[thread] = self.database_errors
        run = self.runs.setdefault(job.claim_id, Run(job))
        self.jobs_started += 1
        try:
            with job_context(job_fields(job)):
                self._perform(job, run)
        except Exception:
            logger.exception(
                "%s: could not record the end of job %s", self.name, job.pk, extra=job_fields(job)
            )
            self.forget(job.claim_id)
        finally:
            connection = connections[self.database]
            if connection.errors_occurred and not connection.is_usable():
                connection.close()
            self.connection_used[thread] = time.monotonic()

    def _perform(self, job: Job, run: Run) -> None:
        task = backend = None
        run.began = time.monotonic()
        if job.timeout:
            run.deadline = run.began + job.timeout
        at_least_once = job.delivery == Job.Delivery.AT_LEAST_ONCE
        if at_least_once:
            # Its start is written later with its end, or once it has run a while; if this
            # process dies first, its supervisor reads the board.
            run.slot = self.board.began(job.claim_id)
            run.running = True
        # (A job claimed by a worker driven in-process may have its start recorded.)
        if job.status != Job.Status.RUNNING:
            job.record_start(timezone.now())
            job.status = Job.Status.RUNNING
            try:
                if not self.writes.start(job, wait=not at_least_once):
                    self.forget(job.claim_id)
                    self.announce(job, None, run, None)
                    return
            except WriteAbandoned:  # never started: it goes back to ready
                return
        if not at_least_once:
            run.slot = self.board.began(job.claim_id)
            run.running = True
        if self.metrics is not None:
            self.metrics.job_started(job)
        exactly_once = job.delivery == Job.Delivery.EXACTLY_ONCE
        try:
            # Anything that goes wrong from here on is the job's failure, never the worker's.
            with tracing.run_span(job):
                task = load_task(job.task_path)
                backend = task_backends[job.backend]
                result = result_of(job, task, database=self.database, running_worker_id=self.name)
                run.result, run.task, run.backend = result, task, backend
                task_started.send(type(backend), task_result=result)
                if exactly_once:
                    ended = self.run_exactly_once(job, task, result)
                else:
                    job.return_value = self.call(job, task, result)
        except BaseException as error:  # a task's SystemExit must not stop the worker
            if isinstance(error, TransactionRolledBackError):
                end = functools.partial(self.interrupt_run, job, error)
            else:
                end = functools.partial(
                    ClaimedExecution.fail,
                    job,
                    describe_error(error),
                    worker_id=self.name,
                    using=self.database,
                )
            recorded = self.record_end(end)
            self.forget(job.claim_id)
            # Announced while the error is handled: a receiver of task_finished that logs
            # (Django's own) logs its traceback.
            self.announce(job, recorded, run, error)
            return
        if at_least_once:
            self.writes.end(job, wait=False)  # the main loop writes and announces it
            return
        if not exactly_once:
            try:
                ended = self.writes.end(job, wait=True)
            except WriteAbandoned:
                logger.warning(
                    "%s: stopped before the end of job %s could be written",
                    self.name,
                    job.pk,
                    extra=job_fields(job),
                )
                return
        self.forget(job.claim_id)
        self.announce(job, job if ended else None, run, None)

    def forget(self, claim_id: int) -> None:
        """The run of ``claim_id`` is over here: its end written, or taken over."""
        run = self.runs.pop(claim_id, None)
        if run is not None:
            self.board.recorded(run.slot)

    def announce_end(self, job: Job, recorded: bool) -> None:
        """Announce the end of an at_least_once run, written by the main loop."""
        run = self.runs.get(job.claim_id)
        if run is not None:
            self.announce(job, job if recorded else None, run, None)

    def announce(
        self, job: Job, recorded: Job | None, run: Run | None, failure: BaseException | None
    ) -> None:
        """Signal and log how a job's run ended, once its end is recorded (``recorded``:
        the job as its end left it; None if its claim was taken over); called while
        ``failure``, if any, is being handled."""
        duration = time.monotonic() - run.began if run else 0.0
        fields = {**job_fields(job), "duration": duration}
        backend = run.backend if run else None
        try:
            # Records logged meanwhile (Django's, receivers') are about this job too.
            with job_context(fields):
                self.count_end(job, recorded, failure, duration)
                if recorded is None:
                    logger.warning(
                        "%s: job %s was taken over while it ran (%.1fs); its outcome is dropped",
                        self.name,
                        job.pk,
                        duration,
                        extra=fields,
                    )
                elif failure is not None and recorded.status != recorded.Status.FAILED:
                    logger.warning(
                        "%s: job %s (%s) attempt %s raised %s: %s; retrying at %s",
                        self.name,
                        job.pk,
                        job.task_path,
                        recorded.attempt_count,
                        exception_path(type(failure)),
                        failure,
                        recorded.scheduled_at
                        if recorded.status == recorded.Status.SCHEDULED
                        else "once",
                        extra=fields,
                    )
                elif backend is not None and run is not None and run.result is not None:
                    record_outcome(run.result, recorded)
                    task_finished.send(type(backend), task_result=run.result)
                else:
                    logger.error(
                        "%s: job %s (%s) failed: %s",
                        self.name,
                        job.pk,
                        job.task_path,
                        recorded.errors[-1]["message"],
                        exc_info=failure,
                        extra=fields,
                    )
        except Exception:
            logger.exception(
                "%s: could not announce the end of job %s", self.name, job.pk, extra=fields
            )

    def count_end(
        self, job: Job, recorded: Job | None, failure: BaseException | None, duration: float
    ) -> None:
        """Count a run's end in the metrics, if any: not one taken over (whoever took it
        counted it), nor one whose transaction rolled back (an interruption, counted so)."""
        if self.metrics is None or recorded is None:
            return
        if isinstance(failure, TransactionRolledBackError):
            return
        if recorded.status == Job.Status.FAILED:
            outcome = Outcome.FAILED
        elif failure is not None:
            outcome = Outcome.RETRIED
        else:
            outcome = Outcome.SUCCESSFUL
        self.metrics.job_ended(job, outcome, duration)

    def call(self, job: Job, task: "Task[..., Any]", result: "TaskResult[..., Any]") -> Any:
        if task.takes_context:
            context = WorkerTaskContext(
                task_result=result,
                is_stopping=lambda: self.stopping is not None,
                database=self.database,
                batch_id=job.batch_id,
            )
            value = task.call(context, *job.args, **job.kwargs)
        else:
            value = task.call(*job.args, **job.kwargs)
        return jsonable(value, f"The return value of {job.task_path}")

    def run_exactly_once(
        self, job: Job, task: "Task[..., Any]", result: "TaskResult[..., Any]"
    ) -> bool:
        """Run the task and record its success in one transaction: a crash, an error or an
        interruption rolls back both, and the job runs again. A database error before
        the task runs (a lock wait at BEGIN) is retried; one that rolls the transaction
        back after it began running (a lock timeout, a deadlock, a failed commit) is
        raised as TransactionRolledBackError, an interruption. False if the claim was
        taken over."""
        stage = _Stage()
        try:
            ended: bool = self.record_end(
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
        return ended

    def _run_in_one_transaction(
        self, job: Job, task: "Task[..., Any]", result: "TaskResult[..., Any]", stage: _Stage
    ) -> bool:
        stage.began = stage.ran = False
        with database(self.database).atomic():
            if not ClaimedExecution.hold(job.claim_id, using=self.database):
                return False
            stage.began = True
            run = self.runs.get(job.claim_id)
            if run is not None:
                run.backend_pid = database(self.database).session_id()
            with writes_confined_to(self.database):
                job.return_value = self.call(job, task, result)
            stage.ran = True
            return ClaimedExecution.finish(job, worker_id=self.name, using=self.database)

    def interrupt_run(self, job: Job, error: TransactionRolledBackError) -> Job | None:
        """Record a run whose transaction was rolled back as an interruption: the job runs
        again, as its delivery policy says. Returns the job, or None if its claim was
        taken over. Its claim is this worker's: a lock on it or its job (another
        transaction's, the one its own deadlocked with) is waited for, never skipped."""
        claim = ClaimedExecution.objects.filter(pk=job.claim_id)
        interrupted = ClaimedExecution.interrupt(
            claim,
            type(error),
            str(error),
            running={job.claim_id},
            skip_locked=False,
            using=self.database,
        )
        if not interrupted:
            return None
        return Job.objects.using(self.database).get(pk=job.pk)

    def record_end(
        self,
        write: Callable[[], Any],
        *,
        retry: Callable[[DatabaseError], bool] = lambda error: True,
        doing: str = "record a job's end",
    ) -> Any:
        """Record how a job ended, retrying on database errors (those ``retry`` accepts): a
        job must never stay claimed by a live worker that is no longer running it."""
        failures = 0
        while True:
            try:
                return write()
            except DatabaseError as error:
                failures += 1
                self.database_errors += 1  # other threads' connections may be cut too
                if self.stopping is StopMode.IMMEDIATE or not retry(error):
                    raise
                delay = database_retry_delay(failures)
                logger.exception("%s: cannot %s; retrying in %.1fs", self.name, doing, delay)
                connections[self.database].close()
                time.sleep(delay)  # backoff between retries, in this job's own thread


@contextlib.contextmanager
def writes_confined_to(alias: str) -> Iterator[None]:
    """Refuse, in this thread, writes to any database but ``alias``: they would not be
    part of the transaction that makes an exactly_once run exactly once."""
    with contextlib.ExitStack() as stack:
        for other in connections:
            if other != alias:
                stack.enter_context(
                    connections[other].execute_wrapper(_refuse_writes(other, alias))
                )
        yield


def _refuse_writes(other: str, alias: str) -> Callable[..., Any]:
    def refuse(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        if sql.lstrip().upper().startswith(_WRITES):
            raise ExactlyOnceViolation(
                f"An exactly_once task wrote to database {other!r}; only its writes to "
                f"{alias!r} commit together with the job. Move the write, or use "
                "delivery='at_least_once' for this task."
            )
        return execute(sql, params, many, context)

    return refuse
