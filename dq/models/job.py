import json
import logging
import re
from datetime import timedelta
from traceback import format_exception

from django.db import IntegrityError, connections, models
from django.db.models.base import ModelState
from django.tasks import Task
from django.utils import timezone
from django.utils.json import normalize_json
from django.utils.module_loading import import_string

from .. import db as vendor
from ..conf import exponential_backoff
from ..exceptions import TransitionNotAllowed

logger = logging.getLogger("dq")

# Job._inserted_columns, per database vendor.
_INSERTED_COLUMNS = {}


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
    _check_storable(normalized, what)
    return normalized


def _check_storable(value, what):
    """TypeError unless every dict key is a string and no string holds a NUL."""
    if isinstance(value, str) and "\x00" in value:
        raise TypeError(
            f"{what} must be JSON-serializable: a string holds a NUL character (\\x00), "
            "which PostgreSQL cannot store in JSON."
        )
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"{what} must be JSON-serializable: dict key {key!r} is not a string "
                    "and would come back as one."
                )
            _check_storable(key, what)
            _check_storable(item, what)
    elif isinstance(value, list):
        for item in value:
            _check_storable(item, what)


def exception_path(exception_class):
    return f"{exception_class.__module__}.{exception_class.__qualname__}"


def describe_error(exception):
    """An attempt's error as stored on the job: class path, message and traceback."""
    return {
        "exception_class_path": exception_path(type(exception)),
        "message": str(exception),
        "traceback": "".join(format_exception(exception)),
    }


def pk_batches(queryset, batch_size):
    """The primary keys of ``queryset`` in ascending lists of at most ``batch_size``, each read
    by one query that starts after the previous batch: never all in memory at once."""
    keys = queryset.order_by("pk").values_list("pk", flat=True)
    batch = list(keys[:batch_size])
    while batch:
        yield batch
        if len(batch) < batch_size:
            return
        batch = list(keys.filter(pk__gt=batch[-1])[:batch_size])


def make_ready_in_batches(execution, queryset, *, batch_size, using, **changes):
    """Move the jobs of the ``execution`` rows in ``queryset`` to ready, ``batch_size`` at a
    time in primary-key order, one transaction per batch: lock and delete the rows, then
    ``Job.make_ready``. Yields each batch's jobs after it commits."""
    for batch in pk_batches(queryset.using(using), batch_size):
        with vendor.atomic(using):
            job_ids = list(
                execution.objects.using(using)
                .select_for_update()
                .filter(pk__in=batch)
                .values_list("job_id", flat=True)
            )
            execution.objects.using(using).filter(job_id__in=job_ids).delete()
            jobs = Job.make_ready(job_ids, using=using, **changes)
        if jobs:
            yield jobs


class Job(models.Model):
    """One enqueued task call, kept for its whole life; its state is its one execution row."""

    class Status(models.TextChoices):
        READY = "ready"
        SCHEDULED = "scheduled"
        BLOCKED = "blocked"
        RUNNING = "running"
        SUCCESSFUL = "successful"
        FAILED = "failed"
        CANCELLED = "cancelled"

    class Delivery(models.TextChoices):
        AT_LEAST_ONCE = "at_least_once"
        AT_MOST_ONCE = "at_most_once"
        EXACTLY_ONCE = "exactly_once"

    class OnConflict(models.TextChoices):
        BLOCK = "block"
        DISCARD = "discard"

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
    # Concurrency limit: at most concurrency_limit jobs of one key ready or running at once.
    concurrency_key = models.CharField(max_length=255, default="", blank=True)
    concurrency_limit = models.PositiveIntegerField(null=True, blank=True)
    concurrency_duration = models.FloatField(null=True, blank=True)
    on_conflict = models.CharField(
        max_length=10, choices=OnConflict, default=OnConflict.BLOCK, blank=True
    )
    # Uniqueness: set while the job has not finished (and unique_for seconds after).
    unique_key = models.CharField(max_length=255, null=True, blank=True, unique=True)
    unique_for = models.FloatField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "dq_job"
        indexes = [
            models.Index(fields=["status", "queue_name"], name="dq_job_status_queue"),
            # The admin's job list: newest first within a state or a task (a queue's jobs are
            # found through dq_job_status_queue).
            models.Index(fields=["status", "-id"], name="dq_job_status_newest"),
            models.Index(fields=["task_path", "-id"], name="dq_job_task_newest"),
            models.Index(
                fields=["-id"], condition=models.Q(attempt_count__gt=1), name="dq_job_retried"
            ),
            # Jobs ended per minute (the admin's activity chart).
            models.Index(fields=["finished_at"], name="dq_job_finished_at"),
        ]
        permissions = [
            ("retry_job", "Can retry failed jobs"),
            ("discard_job", "Can discard jobs that are not running"),
            ("run_job_now", "Can run scheduled jobs now"),
            ("pause_queue", "Can pause and resume queues"),
            ("cancel_job", "Can cancel jobs"),
        ]

    # What finishing a run writes.
    FINISH_FIELDS = ["status", "finished_at", "return_value", "attempts", "unique_key"]

    def __str__(self):
        return f"{self.task_path} #{self.pk}"

    def copy_with(self, **changes):
        """An unsaved copy of this unsaved job with ``changes`` (field values by attribute
        name). Its other values are this job's very objects, so a bulk insert sends them
        once (``_insert_placed``); none of them is changed in place after enqueue."""
        if not self._state.adding:
            raise ValueError("Only an unsaved job can be copied.")
        job = Job.__new__(type(self))
        job.__dict__ = {**self.__dict__, "_state": ModelState(), **changes}
        return job

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
        self.attempts = [*self.attempts, self.attempt(worker_id, started_at, finished_at, error)]

    @staticmethod
    def attempt(worker_id, started_at, finished_at, error=None):
        """One entry of ``attempts``: who ran it, when, and its error (or None)."""
        return {
            "worker_id": worker_id,
            "started_at": started_at.isoformat() if started_at else None,
            "finished_at": finished_at.isoformat(),
            "error": error,
        }

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
        self.end_uniqueness()
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
        with vendor.atomic(using):
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
            if job.status == cls.Status.READY:
                job.release_slot(using=using)

    @classmethod
    def discard_batches(cls, queryset, *, batch_size=500, using):
        """Discard the jobs of ``queryset`` that are neither running nor finished (ready,
        scheduled, failed), ``batch_size`` at a time in primary-key order, one transaction
        per batch.

        Yields ``(discarded, kept)`` after each batch commits: the batch's jobs (task path and
        status loaded), split into those deleted and those kept because they were running,
        finished, or changed state meanwhile.
        """
        discardable = [
            model
            for status, model in cls.execution_models().items()
            if status != cls.Status.RUNNING
        ]
        for batch in pk_batches(queryset.using(using), batch_size):
            with vendor.atomic(using):
                # Lock the execution rows first, in the order a claim takes its locks.
                locked = set()
                for model in discardable:
                    locked.update(
                        model.objects.using(using)
                        .select_for_update()
                        .filter(job_id__in=batch)
                        .values_list("job_id", flat=True)
                    )
                jobs = list(
                    cls.objects.using(using)
                    .filter(pk__in=batch)
                    .only("task_path", "status", "concurrency_key")
                )
                cls.objects.using(using).filter(pk__in=locked).delete()
                for job in jobs:
                    if job.pk in locked and job.status == cls.Status.READY:
                        job.release_slot(using=using)
            yield (
                [job for job in jobs if job.pk in locked],
                [job for job in jobs if job.pk not in locked],
            )

    @classmethod
    def discard_all(cls, queryset, *, batch_size=500, using):
        """Discard every job of ``queryset`` that can be; returns (discarded, kept) counts."""
        discarded = kept = 0
        for gone, left in cls.discard_batches(queryset, batch_size=batch_size, using=using):
            discarded, kept = discarded + len(gone), kept + len(left)
        return discarded, kept

    @classmethod
    def execution_models(cls):
        """Status -> the model of the execution row a job in that status has."""
        from .blocked import BlockedExecution
        from .claimed import ClaimedExecution
        from .failed import FailedExecution
        from .ready import ReadyExecution
        from .scheduled import ScheduledExecution

        return {
            cls.Status.READY: ReadyExecution,
            cls.Status.SCHEDULED: ScheduledExecution,
            cls.Status.RUNNING: ClaimedExecution,
            cls.Status.FAILED: FailedExecution,
            cls.Status.BLOCKED: BlockedExecution,
        }

    def execution_model(self):
        """The model of the execution row this job's status names, None once it succeeded."""
        return self.execution_models().get(self.status)

    CANCELLABLE = (Status.READY, Status.SCHEDULED, Status.BLOCKED, Status.RUNNING)

    CONCURRENCY_FIELDS = (
        "concurrency_key",
        "concurrency_limit",
        "concurrency_duration",
        "on_conflict",
        "unique_key",
        "finished_at",
    )

    _progress_fields = [
        "status",
        "scheduled_at",
        "finished_at",
        "attempts",
        "interruption_count",
        "unique_key",
    ]

    @classmethod
    def enqueue(cls, jobs, *, using):
        """Insert new (unsaved) jobs and their first execution rows, in one transaction.

        Jobs due now become ready (or blocked, when their concurrency key has no free
        slot), later ones scheduled. Inside an outer ``atomic()`` on the same database
        nothing is visible before it commits. A unique job whose key is taken is not
        inserted: its place in the list returned holds the existing job, marked
        ``duplicate``.
        """
        now = timezone.now()
        for job in jobs:
            job.enqueued_at = now
            due = job.scheduled_at is None or job.scheduled_at <= now
            job.status = cls.Status.READY if due else cls.Status.SCHEDULED
        if not any(job.unique_key or job.concurrency_key for job in jobs):
            statement = vendor.for_alias(using).enqueue_statement
            if statement is not None:
                cls._insert_placed(jobs, statement, now, using)
                return jobs
        with vendor.atomic(using, savepoint=False):
            if any(job.unique_key for job in jobs):
                return [cls._enqueue_unique(job, now, using) for job in jobs]
            cls.admit(jobs, using=using)
            if len(jobs) == 1:
                jobs[0].save(using=using, force_insert=True)
            else:
                cls.objects.using(using).bulk_create(jobs)
            cls.place(jobs, using=using, slots_taken=True)
        return jobs

    @classmethod
    def run_returning(cls, sql, params, *, using):
        """Run one of dq's vendor statements whose rows are ``claim_id`` then every column
        of the job; returns the jobs, each with its ``claim_id``."""
        with vendor.for_alias(using).cursor(using) as cursor:
            cursor.execute(sql, params)
            columns = [column[0] for column in cursor.description]
            rows = cursor.fetchall()
        return cls.from_returned(columns, rows, using=using)

    @classmethod
    def from_returned(cls, columns, rows, *, using):
        """Jobs from rows of ``columns``, ``claim_id`` then every column of the job, as
        the database returned them (converted as Django's queries would)."""
        connection = connections[using]
        at = {name: n for n, name in enumerate(columns)}
        fields = cls._meta.concrete_fields
        positions = [at[field.column] for field in fields] if rows else []
        converters = []
        for n, field in enumerate(fields):
            column = field.get_col(cls._meta.db_table)
            chain = connection.ops.get_db_converters(column) + column.get_db_converters(connection)
            if chain:
                converters.append((n, column, chain))
        jobs = []
        for row in rows:
            values = [row[position] for position in positions]
            for n, column, chain in converters:
                for convert in chain:
                    values[n] = convert(values[n], column, connection)
            job = cls.from_db(using, [field.attname for field in fields], values)
            job.claim_id = row[at["claim_id"]]
            jobs.append(job)
        return jobs

    @classmethod
    def _inserted_columns(cls, connection):
        """The fields an insert writes, with their SQL types on ``connection``'s database."""
        if connection.vendor not in _INSERTED_COLUMNS:
            # Without a length: an explicit cast to varchar(100) cuts a longer value
            # silently, where the column's own check raises.
            _INSERTED_COLUMNS[connection.vendor] = [
                (field, re.sub(r"\(\d+\)$", "", field.cast_db_type(connection)))
                for field in cls._meta.concrete_fields
                if not field.primary_key
            ]
        return _INSERTED_COLUMNS[connection.vendor]

    @classmethod
    def _insert_placed(cls, jobs, statement, now, using):
        """Insert jobs that need no slot and no unique key, with their execution rows, in
        the vendor's one ``statement``. A column is sent once when every job holds the very
        same value object in it (as jobs built from one task do), else as an array."""
        connection = connections[using]
        shared, varying = [], []
        for field, sql_type in cls._inserted_columns(connection):
            values = [getattr(job, field.attname) for job in jobs]
            if all(value is values[0] for value in values):
                shared.append(
                    (field.column, sql_type, field.get_db_prep_save(values[0], connection))
                )
            else:
                prepared = [field.get_db_prep_save(value, connection) for value in values]
                varying.append((field.column, sql_type, prepared))
        ready_queues = {job.queue_name for job in jobs if job.status == cls.Status.READY}
        sql, params = statement(
            shared, varying, count=len(jobs), now=now, ready_queues=ready_queues
        )
        with vendor.one_statement(using), vendor.for_alias(using).cursor(using) as cursor:
            cursor.execute(sql, params)
            ids = [pk for (pk,) in cursor.fetchall()]
        for job, pk in zip(jobs, ids, strict=True):
            job.pk = pk
            job._state.adding, job._state.db = False, using

    @classmethod
    def _enqueue_unique(cls, job, now, using):
        """Insert one job, or return the unfinished job that holds its unique key."""
        status = job.status
        for _ in range(2):
            try:
                with vendor.atomic(using):
                    cls.admit([job], using=using)
                    job.save(using=using, force_insert=True)
                    cls.place([job], using=using, slots_taken=True)
                return job
            except IntegrityError:
                job.pk, job._state.adding = None, True
                job.status, job.finished_at = status, None
                holder = cls.objects.using(using).filter(unique_key=job.unique_key).first()
                if holder is None:
                    continue  # it ended meanwhile
                if not holder.uniqueness_expired(now):
                    holder.duplicate = True
                    return holder
                cls.objects.using(using).filter(pk=holder.pk, unique_key=job.unique_key).update(
                    unique_key=None
                )
        raise IntegrityError(f"Could not enqueue unique job {job.unique_key!r}.")

    def uniqueness_expired(self, now):
        if self.finished_at is None:
            return False
        return (
            self.unique_for is None or self.finished_at + timedelta(seconds=self.unique_for) <= now
        )

    def end_uniqueness(self):
        """The job has ended: free its unique key now, unless it keeps it for unique_for."""
        if self.unique_key and not self.unique_for:
            self.unique_key = None

    @classmethod
    def admit(cls, jobs, *, using):
        """Give each ready job with a concurrency key a slot, or else block it (or cancel
        it, if its task says so). Returns the jobs whose status changed."""
        from .semaphore import Semaphore

        changed = []
        # Keys in one order, so that two transactions never wait for each other's semaphores.
        for job in sorted(jobs, key=lambda job: job.concurrency_key):
            if job.status != cls.Status.READY or not job.concurrency_key:
                continue
            if Semaphore.acquire(
                job.concurrency_key, job.concurrency_limit, job.concurrency_duration, using=using
            ):
                continue
            if job.on_conflict == cls.OnConflict.DISCARD:
                job.status, job.finished_at = cls.Status.CANCELLED, timezone.now()
                job.end_uniqueness()
            else:
                job.status = cls.Status.BLOCKED
            changed.append(job)
        return changed

    def release_slot(self, *, using):
        """Give back the concurrency slot a ready or running job held."""
        from .semaphore import Semaphore

        if self.concurrency_key:
            Semaphore.release(self.concurrency_key, using=using)

    @classmethod
    def cancel(cls, job_id, *, using):
        """Cancel a job: one that has not started ends as cancelled; a running one is asked
        to stop (its task sees ``context.cancel_requested``). Returns the job's status
        afterwards; TransitionNotAllowed if it has finished."""
        with vendor.atomic(using):
            job = cls.objects.using(using).get(pk=job_id)
            if job.status == cls.Status.RUNNING:
                cls.objects.using(using).filter(pk=job_id).update(
                    cancel_requested_at=timezone.now()
                )
                return job.status
            execution = job.execution_model()
            if execution is None or job.status == cls.Status.FAILED:
                raise TransitionNotAllowed(f"Job {job_id} has finished; it cannot be cancelled.")
            # Delete the execution row first: a claim that took it meanwhile wins.
            if not execution.objects.using(using).filter(job_id=job_id).delete()[0]:
                raise TransitionNotAllowed(
                    f"Job {job_id} changed state while being cancelled; reload and try again."
                )
            was_ready = job.status == cls.Status.READY
            job.status, job.finished_at = cls.Status.CANCELLED, timezone.now()
            job.end_uniqueness()
            job.save(using=using, update_fields=["status", "finished_at", "unique_key"])
            if was_ready:
                job.release_slot(using=using)
        return job.status

    @classmethod
    def prune(cls, *, backend, finished_before, statuses, batch_size, using):
        """Delete jobs of backend alias ``backend`` in ``statuses`` that finished before
        ``finished_before``, a batch per transaction so that no lock is held long. Returns
        how many."""
        pruned = 0
        while True:
            batch = list(
                cls.objects.using(using)
                .filter(backend=backend, status__in=statuses, finished_at__lt=finished_before)
                .order_by("pk")
                .values_list("pk", flat=True)[:batch_size]
            )
            if not batch:
                return pruned
            with vendor.atomic(using):
                pruned += (
                    cls.objects.using(using)
                    .filter(pk__in=batch, status__in=statuses)
                    .delete()[1]
                    .get(cls._meta.label, 0)
                )

    @classmethod
    def make_ready(cls, job_ids, *, using, slots_taken=False, over_limit=False, **changes):
        """Make these jobs ready (with ``changes`` to their fields) and create their ready
        rows; the caller deleted their previous execution rows in the same transaction.
        Returns the jobs, with what the admin and placing need loaded."""
        cls.objects.using(using).filter(pk__in=job_ids).update(status=cls.Status.READY, **changes)
        jobs = list(
            cls.objects.using(using)
            .filter(pk__in=job_ids)
            .only(
                "task_path",
                "backend",
                "queue_name",
                "priority",
                "status",
                *cls.CONCURRENCY_FIELDS,
            )
        )
        cls.place(jobs, using=using, slots_taken=slots_taken, over_limit=over_limit)
        return jobs

    @classmethod
    def place(cls, jobs, *, using, slots_taken=False, over_limit=False):
        """Create the execution row each job's status names (ready, scheduled or blocked);
        ready jobs with a concurrency key take a slot first unless ``slots_taken``, and
        with ``over_limit`` (a person's "run now") take one even if none is free."""
        from .blocked import BlockedExecution
        from .ready import ReadyExecution
        from .scheduled import ScheduledExecution
        from .semaphore import Semaphore

        if over_limit:
            for job in jobs:
                if job.status == cls.Status.READY and job.concurrency_key:
                    Semaphore.take_over_limit(job.concurrency_key, using=using)
        elif not slots_taken:
            for job in cls.admit(jobs, using=using):
                job.save(using=using, update_fields=["status", "finished_at", "unique_key"])
        ready = [job for job in jobs if job.status == cls.Status.READY]
        scheduled = [job for job in jobs if job.status == cls.Status.SCHEDULED]
        blocked = [job for job in jobs if job.status == cls.Status.BLOCKED]
        if ready:
            ReadyExecution.objects.using(using).bulk_create(
                ReadyExecution(
                    job=job, backend=job.backend, queue_name=job.queue_name, priority=job.priority
                )
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
        if blocked:
            BlockedExecution.objects.using(using).bulk_create(
                BlockedExecution(
                    job=job,
                    queue_name=job.queue_name,
                    priority=job.priority,
                    concurrency_key=job.concurrency_key,
                )
                for job in blocked
            )
