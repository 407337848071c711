"""How a worker runs one claimed job in a pool thread and records how it ended: the task
called with its context, an exactly_once run in one transaction with its end, the end
written (retried on database errors), then announced through Django's signals and the log."""

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast

from django.db import DatabaseError, InterfaceError, OperationalError, connections
from django.tasks import Task, TaskContext, TaskResult, task_backends
from django.tasks.signals import task_finished, task_started

from ..db import database
from ..exceptions import ExactlyOnceViolation, TransactionRolledBackError
from ..models import ClaimedExecution, Job
from ..serialization import describe_error, exception_path, jsonable, load_task
from .base import Runnable, StopMode, database_retry_delay
from .batching import GroupCommit

logger = logging.getLogger(__name__)

T = TypeVar("T")

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


# django-stubs declares TaskContext neither frozen (Django's is) nor subscriptable at runtime.
@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerTaskContext(TaskContext):  # type: ignore[misc, type-arg]
    """The context a ``takes_context=True`` task receives from dq."""

    is_stopping: Callable[[], bool] = field(default=lambda: False, repr=False)
    database: str = "default"

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


class ResultBackend(Protocol):
    """What a worker uses of its jobs' backend, a DQBackend (dq.processes does not import it)."""

    def to_result(
        self,
        job: Job,
        task: "Task[..., Any] | None" = None,
        *,
        running_worker_id: str | None = None,
    ) -> "TaskResult[..., Any]": ...


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


class Running(Runnable):
    """A worker's way of running jobs (``Worker`` mixes it in)."""

    # What the worker keeps: its runs by claim id, each pool thread's own state, the
    # jobs run so far, and the group commit that writes successful ends together.
    runs: dict[int, Run]
    thread_state: threading.local
    jobs_done: int
    finishes: GroupCommit[tuple[Job, bool], tuple[Job | None, Job | None]]

    def claims_next(self) -> bool:
        """Whether a thread whose run is ending takes a new job as the end is recorded."""
        raise NotImplementedError

    def check_recycling(self) -> None:
        """Recycle the worker once it is past a limit (after a job's end)."""
        raise NotImplementedError

    def perform(self, job: Job) -> Job | None:
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
            logger.exception(
                "%s: could not record the end of job %s", self.name, job.pk, extra=job_fields(job)
            )
        finally:
            self.runs.pop(job.claim_id, None)
            connection = connections[self.database]
            if connection.errors_occurred and not connection.is_usable():
                connection.close()
            state.last_used = time.monotonic()
            self.jobs_done += 1
            self.check_recycling()
        return next_job

    def _perform(self, job: Job) -> Job | None:
        task = backend = None
        started = time.monotonic()
        try:
            # Anything that goes wrong from here on is the job's failure, never the worker's.
            task = load_task(job.task_path)
            # A worker claims only jobs of the alias it runs, a DQBackend's.
            backend = cast(ResultBackend, task_backends[job.backend])
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

    def announce(
        self,
        job: Job,
        ended: Job | None,
        task: "Task[..., Any] | None",
        backend: ResultBackend | None,
        failure: BaseException | None,
        duration: float,
    ) -> None:
        """Signal and log how a job's run ended, once its end is recorded; called while
        ``failure``, if any, is being handled."""
        fields = {**job_fields(job), "duration": duration}
        try:
            if ended is None:
                logger.warning(
                    "%s: job %s was taken over while it ran (%.1fs); its outcome is dropped",
                    self.name,
                    job.pk,
                    duration,
                    extra=fields,
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
                    extra=fields,
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
                    extra=fields,
                )
        except Exception:
            logger.exception(
                "%s: could not announce the end of job %s", self.name, job.pk, extra=fields
            )

    def call(self, job: Job, task: "Task[..., Any]", result: "TaskResult[..., Any]") -> Any:
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

    def run_exactly_once(
        self, job: Job, task: "Task[..., Any]", result: "TaskResult[..., Any]"
    ) -> Job | None:
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

    def _run_in_one_transaction(
        self, job: Job, task: "Task[..., Any]", result: "TaskResult[..., Any]", stage: _Stage
    ) -> Job | None:
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

    def interrupt_run(self, job: Job, error: TransactionRolledBackError) -> Job | None:
        """Record a run whose transaction was rolled back as an interruption: the job runs
        again, as its delivery policy says. Returns the job, or None if its claim was
        taken over."""
        claim = ClaimedExecution.objects.filter(pk=job.claim_id)
        if not ClaimedExecution.interrupt(claim, type(error), str(error), using=self.database):
            return None
        return Job.objects.using(self.database).get(pk=job.pk)

    def record_end(
        self,
        write: Callable[[], T],
        *,
        retry: Callable[[DatabaseError], bool] = lambda error: True,
        doing: str = "record a job's end",
    ) -> T:
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
    def refuse(
        execute: Callable[[str, Any, bool, dict[str, Any]], Any],
        sql: str,
        params: Any,
        many: bool,
        context: dict[str, Any],
    ) -> Any:
        if sql.lstrip().upper().startswith(_WRITES):
            raise ExactlyOnceViolation(
                f"An exactly_once task wrote to database {other!r}; only its writes to "
                f"{alias!r} commit together with the job. Move the write, or use "
                "delivery='at_least_once' for this task."
            )
        return execute(sql, params, many, context)

    return refuse
