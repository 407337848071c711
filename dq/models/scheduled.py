from django.db import models
from django.db.models import Min
from django.utils import timezone

from .. import db as vendor
from .job import Job, make_ready_in_batches


class ScheduledExecution(models.Model):
    """A job that waits for its time: deferred with run_after, or backing off before a retry."""

    job = models.OneToOneField(Job, on_delete=models.CASCADE, related_name="scheduled_execution")
    queue_name = models.CharField(max_length=100)
    priority = models.SmallIntegerField(default=0)
    scheduled_at = models.DateTimeField()

    class Meta:
        db_table = "dq_scheduled_execution"
        indexes = [models.Index(fields=["scheduled_at", "-priority"], name="dq_scheduled_due")]

    def __str__(self):
        return f"job {self.job_id} scheduled at {self.scheduled_at:%Y-%m-%d %H:%M:%S}"

    @classmethod
    def dispatch_due(cls, batch_size, *, using):
        """Move up to ``batch_size`` due jobs to ready, earliest first. Returns how many."""
        with vendor.atomic(using):
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
    def run_now(cls, job_id, *, using):
        """Make a scheduled job ready at once. False if it is no longer scheduled."""
        with vendor.atomic(using):
            scheduled = cls.objects.using(using).select_for_update().filter(job_id=job_id).first()
            if scheduled is None:
                return False
            scheduled.delete(using=using)
            Job.make_ready([job_id], using=using)
        return True

    @classmethod
    def run_now_batches(cls, queryset, *, batch_size=500, using):
        """Make the scheduled executions of ``queryset`` ready at once, ``batch_size`` at a time
        in primary-key order, one transaction per batch.

        Yields the jobs made ready (task path, queue and priority loaded) after each batch commits.
        """
        yield from make_ready_in_batches(cls, queryset, batch_size=batch_size, using=using)

    @classmethod
    def next_due_at(cls, *, using):
        return cls.objects.using(using).aggregate(at=Min("scheduled_at"))["at"]
