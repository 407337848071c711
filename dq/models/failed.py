from django.db import models
from django.db.models import F

from .. import db as vendor
from .job import Job, make_ready_in_batches

# A retried job gets one attempt more than it has failed, whatever its task allowed.
ONE_MORE_ATTEMPT = {
    "max_attempts": F("attempt_count") - F("interruption_count") + 1,
    "finished_at": None,
}


class FailedExecution(models.Model):
    """A job that ran out of attempts; kept until someone retries or discards it."""

    job = models.OneToOneField(Job, on_delete=models.CASCADE, related_name="failed_execution")
    exception_class_path = models.CharField(max_length=255)
    message = models.TextField(blank=True)
    traceback = models.TextField(blank=True)
    failed_at = models.DateTimeField()

    class Meta:
        db_table = "dq_failed_execution"

    def __str__(self):
        return f"job {self.job_id} failed: {self.exception_class_path}"

    def retry(self, *, using):
        """Put the job back to ready; its attempt history stays. False if already retried."""
        with vendor.atomic(using):
            failed = type(self).objects.using(using).select_for_update().filter(pk=self.pk).first()
            if failed is None:
                return False
            failed.delete(using=using)
            Job.make_ready([self.job_id], using=using, **ONE_MORE_ATTEMPT)
        return True

    @classmethod
    def retry_batches(cls, queryset, *, batch_size=500, using):
        """Retry the failed executions of ``queryset`` as ``retry`` does, ``batch_size`` at a
        time in primary-key order, one transaction per batch.

        Yields the jobs retried (task path, queue and priority loaded) after each batch commits.
        """
        yield from make_ready_in_batches(
            cls, queryset, batch_size=batch_size, using=using, **ONE_MORE_ATTEMPT
        )

    @classmethod
    def retry_all(cls, queryset, *, batch_size=500, using):
        """Retry every failed execution of ``queryset``; returns how many jobs were retried."""
        return sum(
            len(jobs) for jobs in cls.retry_batches(queryset, batch_size=batch_size, using=using)
        )
