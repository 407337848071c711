from collections.abc import Iterator

from django.db import models
from django.db.models import F, QuerySet
from django.utils import timezone

from .batch import Batch
from .execution import Execution
from .job import Job

# A retried job gets one attempt more than it has failed, whatever its task allowed.
ONE_MORE_ATTEMPT = {
    "max_attempts": F("attempt_count") - F("interruption_count") + 1,
    "finished_at": None,
}


class FailedExecution(Execution):
    """A job that ran out of attempts; kept until someone retries or discards it."""

    # The status of the jobs this table holds.
    status = Job.Status.FAILED
    job = models.OneToOneField(Job, on_delete=models.CASCADE, related_name="failed_execution")
    exception_class_path = models.CharField(max_length=255)
    message = models.TextField(blank=True)
    traceback = models.TextField(blank=True)
    failed_at = models.DateTimeField()

    class Meta:
        db_table = "dq_failed_execution"

    def __str__(self) -> str:
        return f"job {self.job_id} failed: {self.exception_class_path}"

    @classmethod
    def retry(cls, job_id: int, *, using: str) -> bool:
        """Put a failed job back to ready, its attempt history kept (``retry_batches`` for
        one job). False if it is no longer failed."""
        return any(cls.retry_batches(cls.objects.filter(job_id=job_id), using=using))

    @classmethod
    def retry_batches(
        cls, queryset: "QuerySet[FailedExecution]", *, batch_size: int = 500, using: str
    ) -> Iterator[list[Job]]:
        """Retry the jobs of ``queryset``'s rows, ``batch_size`` at a time in primary-key
        order, one transaction per batch. Yields the jobs retried (task path, queue and
        priority loaded) after each batch commits."""
        yield from cls.make_ready_batches(
            queryset,
            batch_size=batch_size,
            using=using,
            # Due from its retry on: its pickup delay is counted from then.
            scheduled_at=timezone.now(),
            **ONE_MORE_ATTEMPT,
        )

    @classmethod
    def left(cls, jobs: list[Job], *, using: str) -> None:
        """Retried: their batches are pending again (``Batch.count_retries``), and so are
        the steps of the chains they stopped."""
        if any(job.batch_id for job in jobs):
            Batch.count_retries(jobs, using=using)
        Job.resume_chains(jobs, using=using)
