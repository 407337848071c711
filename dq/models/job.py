import json
import logging
from datetime import timedelta
from traceback import format_exception

from django.db import models, transaction
from django.tasks import Task
from django.utils import timezone
from django.utils.json import normalize_json
from django.utils.module_loading import import_string

from .. import db as vendor
from ..conf import exponential_backoff
from ..exceptions import TransitionNotAllowed

logger = logging.getLogger("dq")


def load_task(path):
    """The Task object at ``path``; ImportError with a clear message if there is none."""
    try:
        task = import_string(path)
    except ImportError as error:
        raise ImportError(f"Cannot import task {path!r}: {error}") from error
    if not isinstance(task, Task):
        raise ImportError(f"{path!r} is not a task: decorate it with @task.")
    return task


def jsonable(value, what):
    """``value`` as it will come back from the database's JSON; TypeError if it would not
    come back equal (dict keys must be strings, no NaN or infinity)."""
    try:
        normalized = normalize_json(value)
        json.dumps(normalized, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{what} must be JSON-serializable: {error}") from None
    _check_keys(normalized, what)
    return normalized


def _check_keys(value, what):
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"{what} must be JSON-serializable: dict key {key!r} is not a string "
                    "and would come back as one."
                )
            _check_keys(item, what)
    elif isinstance(value, list):
        for item in value:
            _check_keys(item, what)


def exception_path(exception_class):
    return f"{exception_class.__module__}.{exception_class.__qualname__}"


def describe_error(exception):
    """An attempt's error as stored on the job: class path, message and traceback."""
    return {
        "exception_class_path": exception_path(type(exception)),
        "message": str(exception),
        "traceback": "".join(format_exception(exception)),
    }


class Job(models.Model):
    """One enqueued task call, kept for its whole life; its state is its one execution row."""

    class Status(models.TextChoices):
        READY = "ready"
        SCHEDULED = "scheduled"
        RUNNING = "running"
        SUCCESSFUL = "successful"
        FAILED = "failed"

    class Delivery(models.TextChoices):
        AT_LEAST_ONCE = "at_least_once"
        AT_MOST_ONCE = "at_most_once"
        EXACTLY_ONCE = "exactly_once"

    task_path = models.CharField(max_length=255)
    queue_name = models.CharField(max_length=100)
    priority = models.SmallIntegerField(default=0)
    args = models.JSONField(default=list)
    kwargs = models.JSONField(default=dict)
    backend = models.CharField(max_length=100)
    delivery = models.CharField(max_length=20, choices=Delivery, default=Delivery.AT_LEAST_ONCE)
    max_attempts = models.PositiveIntegerField(default=1)
    # Seconds before a retry, or the dotted path of a function (failures) -> seconds;
    # None: conf.exponential_backoff.
    backoff = models.JSONField(null=True, blank=True)
    # Seconds a run may take before it is interrupted; None: no limit.
    timeout = models.FloatField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=Status)
    scheduled_at = models.DateTimeField(null=True, blank=True)
    enqueued_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True)
    last_attempted_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Runs started (claims), and how many of them were interrupted rather than ended.
    attempt_count = models.PositiveIntegerField(default=0)
    interruption_count = models.PositiveIntegerField(default=0)
    # One entry per ended attempt: worker_id, started_at, finished_at, error (or None).
    attempts = models.JSONField(default=list)
    return_value = models.JSONField(null=True, blank=True)

    class Meta:
        db_table = "dq_job"
        indexes = [models.Index(fields=["status", "queue_name"], name="dq_job_status_queue")]

    def __str__(self):
        return f"{self.task_path} #{self.pk}"

    @property
    def failure_count(self):
        """Attempts that ended in an exception raised by the task (interruptions excluded)."""
        return self.attempt_count - self.interruption_count

    @property
    def worker_ids(self):
        return [attempt["worker_id"] for attempt in self.attempts]

    @property
    def errors(self):
        return [attempt["error"] for attempt in self.attempts if attempt["error"]]

    def record_attempt(self, *, worker_id, started_at, finished_at, error=None):
        self.attempts = [
            *self.attempts,
            {
                "worker_id": worker_id,
                "started_at": started_at.isoformat() if started_at else None,
                "finished_at": finished_at.isoformat(),
                "error": error,
            },
        ]

    def retry_delay(self):
        """Seconds to wait before retrying after this job's latest failure."""
        if self.backoff is None:
            return exponential_backoff(self.failure_count)
        if isinstance(self.backoff, str):
            try:
                return import_string(self.backoff)(self.failure_count)
            except Exception:
                logger.exception(
                    "Job %s: backoff %s failed; using the default", self.pk, self.backoff
                )
                return exponential_backoff(self.failure_count)
        return self.backoff

    def schedule_retry(self, now, delay, *, using):
        """Make the job ready again, or scheduled ``delay`` seconds from ``now``."""
        if delay > 0:
            self.status, self.scheduled_at = self.Status.SCHEDULED, now + timedelta(seconds=delay)
        else:
            self.status = self.Status.READY
        self.save(using=using, update_fields=self._progress_fields)
        self.place([self], using=using)

    def fail(self, error, now, *, using):
        """End the job as failed with ``error``; it stays until someone retries or discards it."""
        from .failed import FailedExecution

        self.status, self.finished_at = self.Status.FAILED, now
        self.save(using=using, update_fields=self._progress_fields)
        FailedExecution.objects.using(using).create(
            job=self,
            exception_class_path=error["exception_class_path"],
            message=error["message"],
            traceback=error["traceback"],
            failed_at=now,
        )

    @classmethod
    def discard(cls, job_id, *, using):
        """Delete a job that is ready, scheduled or failed, with its execution row.

        TransitionNotAllowed if it is running, finished, or changed state meanwhile.
        """
        with transaction.atomic(using=using):
            job = cls.objects.using(using).get(pk=job_id)
            execution = job.execution_model()
            if job.status == cls.Status.RUNNING:
                raise TransitionNotAllowed(
                    f"Job {job_id} is running on a worker and cannot be discarded; it can be "
                    "once it has ended."
                )
            if execution is None:
                raise TransitionNotAllowed(
                    f"Job {job_id} has finished; there is nothing to discard."
                )
            # Lock the execution row first, in the order a claim takes its locks.
            if (
                not execution.objects.using(using)
                .select_for_update()
                .filter(job_id=job_id)
                .exists()
            ):
                raise TransitionNotAllowed(
                    f"Job {job_id} changed state while being discarded; reload and try again."
                )
            cls.objects.using(using).filter(pk=job_id).delete()

    def execution_model(self):
        """The model of the execution row this job's status names, None once it succeeded."""
        from .claimed import ClaimedExecution
        from .failed import FailedExecution
        from .ready import ReadyExecution
        from .scheduled import ScheduledExecution

        return {
            self.Status.READY: ReadyExecution,
            self.Status.SCHEDULED: ScheduledExecution,
            self.Status.RUNNING: ClaimedExecution,
            self.Status.FAILED: FailedExecution,
        }.get(self.status)

    _progress_fields = [
        "status",
        "scheduled_at",
        "finished_at",
        "attempts",
        "interruption_count",
    ]

    @classmethod
    def enqueue(cls, jobs, *, using):
        """Insert new (unsaved) jobs and their first execution rows, in one transaction.

        Jobs due now become ready, later ones scheduled. Inside an outer
        ``atomic()`` on the same database nothing is visible before it commits.
        """
        now = timezone.now()
        for job in jobs:
            job.enqueued_at = now
            due = job.scheduled_at is None or job.scheduled_at <= now
            job.status = cls.Status.READY if due else cls.Status.SCHEDULED
        with transaction.atomic(using=using, savepoint=False):
            if len(jobs) == 1:
                jobs[0].save(using=using, force_insert=True)
            else:
                cls.objects.using(using).bulk_create(jobs)
            cls.place(jobs, using=using)
        return jobs

    @classmethod
    def place(cls, jobs, *, using):
        """Create the execution row each job's status names (ready or scheduled)."""
        from .ready import ReadyExecution
        from .scheduled import ScheduledExecution

        ready = [job for job in jobs if job.status == cls.Status.READY]
        scheduled = [job for job in jobs if job.status == cls.Status.SCHEDULED]
        if ready:
            ReadyExecution.objects.using(using).bulk_create(
                ReadyExecution(job=job, queue_name=job.queue_name, priority=job.priority)
                for job in ready
            )
            vendor.notify_ready(using, {job.queue_name for job in ready})
        if scheduled:
            ScheduledExecution.objects.using(using).bulk_create(
                ScheduledExecution(
                    job=job,
                    queue_name=job.queue_name,
                    priority=job.priority,
                    scheduled_at=job.scheduled_at,
                )
                for job in scheduled
            )
