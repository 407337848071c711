from django.db import models, transaction

from .job import Job


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
        with transaction.atomic(using=using):
            failed = type(self).objects.using(using).select_for_update().filter(pk=self.pk).first()
            if failed is None:
                return False
            job = Job.objects.using(using).select_for_update().get(pk=self.job_id)
            failed.delete(using=using)
            job.max_attempts = job.failure_count + 1
            job.finished_at = None
            job.status = Job.Status.READY
            job.save(using=using, update_fields=["max_attempts", "finished_at", "status"])
            Job.place([job], using=using)
        return True
