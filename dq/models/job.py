import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self, cast, overload

from django.db import connections, models
from django.db.models.base import ModelState
from django.utils.module_loading import import_string

from ..conf import exponential_backoff
from ..db import Returned
from ..serialization import attempt_record
from .clearing import Clearing
from .enqueueing import Enqueueing
from .fields import ExactCharField, PartialIndex
from .placing import Placing

if TYPE_CHECKING:
    from .batch import Batch
    from .blocked import BlockedExecution
    from .claimed import ClaimedExecution
    from .failed import FailedExecution
    from .ready import ReadyExecution
    from .scheduled import ScheduledExecution

    # The model of any job's execution row.
    ExecutionModel = type[
        ReadyExecution | ScheduledExecution | BlockedExecution | ClaimedExecution | FailedExecution
    ]

logger = logging.getLogger(__name__)


class Job(Enqueueing, Placing, Clearing, models.Model):
    """One enqueued task call, kept for its whole life; its state is its one execution row.

    What a job does is split by ability: ``Enqueueing`` (enqueue), ``Placing`` (into the
    state tables, concurrency slots), ``Clearing`` (discard, cancel, prune).
    """

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

    task_path = ExactCharField(max_length=255)
    queue_name = ExactCharField(max_length=100)
    priority = models.SmallIntegerField(default=0)
    args = models.JSONField(default=list)
    kwargs = models.JSONField(default=dict)
    backend = ExactCharField(max_length=100)
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
    concurrency_key = ExactCharField(max_length=255, default="", blank=True)
    concurrency_limit = models.PositiveIntegerField(null=True, blank=True)
    concurrency_duration = models.FloatField(null=True, blank=True)
    on_conflict = models.CharField(
        max_length=10, choices=OnConflict, default=OnConflict.BLOCK, blank=True
    )
    # Uniqueness: set while the job has not finished (and unique_for seconds after); NULL,
    # not "", for the jobs without one: the unique constraint holds many NULLs.
    unique_key = ExactCharField(max_length=255, null=True, blank=True)
    unique_for = models.FloatField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    # The batch the job belongs to (dq.batches), whose counts its end changes.
    batch = models.ForeignKey(
        "dq.Batch", null=True, blank=True, on_delete=models.CASCADE, related_name="jobs"
    )
    # A step of a chain (dq.chains): {"id", "step" (from 1), "steps", "next": the steps
    # after it, each {"task", "args", "kwargs", "queue_name", "priority"}}; a step that
    # stopped the chain lists the ids of the cancelled jobs of the steps not run
    # ("not_run"), each of which names it ("stopped_by").
    chain = models.JSONField(null=True, blank=True)
    # The W3C trace context (traceparent, tracestate) of the span that enqueued the job, its
    # runs' parent (dq.tracing); NULL without OpenTelemetry or a recorded span.
    trace_context = models.JSONField(null=True, blank=True)

    class Meta:
        db_table = "dq_job"
        indexes = [
            models.Index(fields=["status", "queue_name"], name="dq_job_status_queue"),
            # The admin's job list: newest first within a state or a task (a queue's jobs are
            # found through dq_job_status_queue).
            models.Index(fields=["status", "-id"], name="dq_job_status_newest"),
            models.Index(fields=["task_path", "-id"], name="dq_job_task_newest"),
            PartialIndex(
                fields=["-id"], condition=models.Q(attempt_count__gt=1), name="dq_job_retried"
            ),
            # Jobs ended per minute (the admin's activity chart).
            models.Index(fields=["finished_at"], name="dq_job_finished_at"),
        ]
        # A constraint, not unique=True: on PostgreSQL that would add an index for LIKE,
        # which no query of dq's uses and every job's insert and end would write.
        constraints = [models.UniqueConstraint(fields=["unique_key"], name="dq_job_unique_key")]
        permissions = [
            ("retry_job", "Can retry failed jobs"),
            ("discard_job", "Can discard jobs that are not running"),
            ("run_job_now", "Can run scheduled jobs now"),
            ("pause_queue", "Can pause and resume queues"),
            ("cancel_job", "Can cancel jobs"),
        ]

    # The relation through which a job in each status has its execution row (the related
    # names the execution models give their ``job``); a finished job has none.
    EXECUTION_OF_STATUS: ClassVar[dict[str, str]] = {
        Status.READY: "ready_execution",
        Status.SCHEDULED: "scheduled_execution",
        Status.BLOCKED: "blocked_execution",
        Status.RUNNING: "claimed_execution",
        Status.FAILED: "failed_execution",
    }
    # The statuses of jobs that can be cancelled: not started, or running (asked to stop).
    CANCELLABLE: ClassVar[tuple[str, ...]] = (
        Status.READY,
        Status.SCHEDULED,
        Status.BLOCKED,
        Status.RUNNING,
    )
    # What a job's progress through its states writes.
    PROGRESS_FIELDS: ClassVar[list[str]] = [
        "status",
        "attempt_count",
        "started_at",
        "last_attempted_at",
        "scheduled_at",
        "finished_at",
        "attempts",
        "interruption_count",
        "unique_key",
    ]

    # Set on jobs read back from a claim or an end: the id of their claim.
    claim_id: int
    # Set by enqueue on the job returned in place of a unique job's duplicate.
    duplicate: bool

    def __str__(self) -> str:
        return f"{self.task_path} #{self.pk}"

    @overload
    @classmethod
    def execution_model(cls, status: Literal[Status.READY]) -> "type[ReadyExecution]": ...
    @overload
    @classmethod
    def execution_model(cls, status: Literal[Status.SCHEDULED]) -> "type[ScheduledExecution]": ...
    @overload
    @classmethod
    def execution_model(cls, status: Literal[Status.BLOCKED]) -> "type[BlockedExecution]": ...
    @overload
    @classmethod
    def execution_model(cls, status: Literal[Status.RUNNING]) -> "type[ClaimedExecution]": ...
    @overload
    @classmethod
    def execution_model(cls, status: Literal[Status.FAILED]) -> "type[FailedExecution]": ...
    @overload
    @classmethod
    def execution_model(cls, status: str) -> "ExecutionModel | None": ...
    @classmethod
    def execution_model(cls, status: str) -> type[models.Model] | None:
        """The model of the execution row a job in ``status`` has (None once it ended),
        reached through the relation that model declares: the state tables import Job,
        not the other way round."""
        if status not in cls.EXECUTION_OF_STATUS:
            return None
        return cls._meta.get_field(cls.EXECUTION_OF_STATUS[status]).related_model

    def copy_with(self, **changes: Any) -> Self:
        """An unsaved copy of this unsaved job with ``changes`` (field values by attribute
        name). Its other values are this job's very objects, so a bulk insert sends them
        once (``Enqueueing.insert_placed``); none of them is changed in place after
        enqueue."""
        if not self._state.adding:
            raise ValueError("Only an unsaved job can be copied.")
        job = type(self).__new__(type(self))
        job.__dict__ = {**self.__dict__, "_state": ModelState(), **changes}
        return job

    @classmethod
    def from_returned(cls, returned: Returned, *, using: str) -> list[Self]:
        """Jobs from rows of ``claim_id`` then every column of the job, as the database
        returned them (converted as Django's queries would), each with its ``claim_id``."""
        connection = connections[using]
        at = {name: n for n, name in enumerate(returned.columns)}
        fields = cls._meta.concrete_fields
        # A concrete field has a column (django-stubs types Field.column as str | None).
        positions = [at[cast(str, field.column)] for field in fields] if returned.rows else []
        converters = []
        for n, field in enumerate(fields):
            column = field.get_col(cls._meta.db_table)
            chain = connection.ops.get_db_converters(column) + column.get_db_converters(connection)
            if chain:
                converters.append((n, column, chain))
        jobs = []
        for row in returned.rows:
            values = [row[position] for position in positions]
            for n, column, chain in converters:
                for convert in chain:
                    values[n] = convert(values[n], column, connection)
            job = cls.from_db(using, [field.attname for field in fields], values)
            job.claim_id = row[at["claim_id"]]
            jobs.append(job)
        return jobs

    @classmethod
    def batch_model(cls) -> "type[Batch]":
        """The Batch model, reached through the relation Job declares (it imports Job)."""
        return cast("type[Batch]", cls._meta.get_field("batch").related_model)

    @classmethod
    def ended(cls, jobs: "Iterable[Job]", *, using: str) -> None:
        """In the transaction that ended ``jobs`` (successful, failed or cancelled): each
        successful chain step's next step is enqueued, a failed or cancelled one's stop
        recorded, then the batches count their ends (``Batch.count_ends``)."""
        jobs = list(jobs)
        steps = [job for job in jobs if job.chain and job.chain["next"]]
        if steps:
            succeeded = [job for job in steps if job.status == cls.Status.SUCCESSFUL]
            cls.enqueue_next_steps(succeeded, using=using)
            cls.stop_chains([job for job in steps if job not in succeeded], using=using)
        in_batches = [job for job in jobs if job.batch_id is not None]
        if in_batches:
            cls.batch_model().count_ends(in_batches, using=using)

    @property
    def failure_count(self) -> int:
        """Attempts that ended in an exception raised by the task (interruptions excluded)."""
        return self.attempt_count - self.interruption_count

    @property
    def worker_ids(self) -> list[str]:
        return [attempt["worker_id"] for attempt in self.attempts]

    @property
    def errors(self) -> list[dict[str, str]]:
        return [attempt["error"] for attempt in self.attempts if attempt["error"]]

    @property
    def run_started_at(self) -> datetime:
        """When the run in progress began: its last attempt, set as a worker starts it."""
        assert self.last_attempted_at is not None, f"job {self.pk} has not started"
        return self.last_attempted_at

    def record_start(self, started_at: datetime) -> None:
        """Count a run that began at ``started_at``, as recording its start does."""
        self.attempt_count += 1
        self.started_at = self.started_at or started_at
        self.last_attempted_at = started_at

    def record_success(self, *, worker_id: str, finished_at: datetime) -> None:
        """End the job as its successful run's end recorded it (the run began at its
        ``last_attempted_at``)."""
        self.status, self.finished_at = self.Status.SUCCESSFUL, finished_at
        self.record_attempt(
            worker_id=worker_id, started_at=self.last_attempted_at, finished_at=finished_at
        )
        self.end_uniqueness()

    def record_attempt(
        self,
        *,
        worker_id: str,
        started_at: datetime | None,
        finished_at: datetime,
        error: dict[str, str] | None = None,
    ) -> None:
        self.attempts = [*self.attempts, attempt_record(worker_id, started_at, finished_at, error)]

    def retry_delay(self) -> float:
        """Seconds to wait before retrying after this job's latest failure."""
        if self.backoff is None:
            return exponential_backoff(self.failure_count)
        if isinstance(self.backoff, str):
            try:
                # The project's function: failures -> seconds.
                return cast(float, import_string(self.backoff)(self.failure_count))
            except Exception:
                logger.exception(
                    "Job %s: backoff %s failed; using the default", self.pk, self.backoff
                )
                return exponential_backoff(self.failure_count)
        return cast(float, self.backoff)  # JSON: a number of seconds here

    def uniqueness_expired(self, now: datetime) -> bool:
        if self.finished_at is None:
            return False
        return (
            self.unique_for is None or self.finished_at + timedelta(seconds=self.unique_for) <= now
        )

    def end_uniqueness(self) -> None:
        """The job has ended: free its unique key now, unless it keeps it for unique_for."""
        if self.unique_key and not self.unique_for:
            self.unique_key = None
