from collections.abc import Iterator
from datetime import datetime
from typing import cast

from django.db import models
from django.db.models import Min, QuerySet
from django.utils import timezone

from ..db import database
from .execution import QueuedExecution
from .job import Job


class ScheduledExecution(QueuedExecution):
    """A job that waits for its time: deferred with run_after, or backing off before a retry."""

    # The status of the jobs this table holds.
    status = Job.Status.SCHEDULED
    job = models.OneToOneField(Job, on_delete=models.CASCADE, related_name="scheduled_execution")
    scheduled_at = models.DateTimeField()

    class Meta:
        db_table = "dq_scheduled_execution"
        indexes = [models.Index(fields=["scheduled_at", "-priority"], name="dq_scheduled_due")]

    def __str__(self) -> str:
        return f"job {self.job_id} scheduled at {self.scheduled_at:%Y-%m-%d %H:%M:%S}"

    @classmethod
    def row_for(cls, job: Job) -> "ScheduledExecution":
        return cls(
            job=job,
            queue_name=job.queue_name,
            priority=job.priority,
            scheduled_at=cast(datetime, job.scheduled_at),  # a scheduled job has its time
        )

    @classmethod
    def dispatch_due(cls, batch_size: int, *, using: str) -> int:
        """Move up to ``batch_size`` due jobs to ready, earliest first. Returns how many."""
        with database(using).atomic():
            due = list(
                cls.objects.using(using)
                .select_for_update(skip_locked=True)
                .filter(scheduled_at__lte=timezone.now())
                .order_by("scheduled_at", "-priority")
                .values_list("pk", "job_id")[:batch_size]
            )
            if not due:
                return 0
            cls.objects.using(using).filter(pk__in=[pk for pk, _ in due]).delete()
            Job.make_ready([job_id for _, job_id in due], using=using)
        return len(due)

    @classmethod
    def run_now(cls, job_id: int, *, using: str) -> bool:
        """Make a scheduled job ready at once (``run_now_batches`` for one job). False if it
        is no longer scheduled."""
        return any(cls.run_now_batches(cls.objects.filter(job_id=job_id), using=using))

    @classmethod
    def run_now_batches(
        cls, queryset: "QuerySet[ScheduledExecution]", *, batch_size: int = 500, using: str
    ) -> Iterator[list[Job]]:
        """Make the jobs of ``queryset``'s rows ready at once, ``batch_size`` at a time in
        primary-key order, one transaction per batch. Yields the jobs made ready (task
        path, queue and priority loaded) after each batch commits."""
        yield from cls.make_ready_batches(queryset, batch_size=batch_size, using=using)

    @classmethod
    def next_due_at(cls, *, using: str) -> datetime | None:
        # Aggregates are untyped: the earliest scheduled_at, None without rows.
        return cast(
            "datetime | None", cls.objects.using(using).aggregate(at=Min("scheduled_at"))["at"]
        )
