from django.db import models

from .. import db as vendor
from .job import Job, make_ready_in_batches
from .semaphore import Semaphore


class BlockedExecution(models.Model):
    """A job waiting for a free slot of its concurrency key."""

    job = models.OneToOneField(Job, on_delete=models.CASCADE, related_name="blocked_execution")
    queue_name = models.CharField(max_length=100)
    priority = models.SmallIntegerField(default=0)
    concurrency_key = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "dq_blocked_execution"
        indexes = [
            models.Index(fields=["concurrency_key", "-priority", "job"], name="dq_blocked_release"),
        ]

    def __str__(self):
        return f"job {self.job_id} blocked on {self.concurrency_key}"

    @classmethod
    def release_next(cls, key, *, using):
        """Make the highest-priority blocked job of ``key`` ready if a slot is free.
        Returns whether one was released."""
        with vendor.atomic(using):
            blocked = (
                cls.objects.using(using)
                .select_for_update(skip_locked=True)
                .filter(concurrency_key=key)
                .order_by("-priority", "job_id")
                .first()
            )
            if blocked is None:
                return False
            job = Job.objects.using(using).get(pk=blocked.job_id)
            if not Semaphore.acquire(
                key, job.concurrency_limit, job.concurrency_duration, using=using
            ):
                return False
            blocked.delete(using=using)
            Job.make_ready([job.pk], using=using, slots_taken=True)
        return True

    @classmethod
    def run_now_batches(cls, queryset, *, batch_size=500, using):
        """Make the blocked executions of ``queryset`` ready at once, over their concurrency
        limit: each takes a slot its key does not have (the next releases pay it back).
        ``batch_size`` at a time, one transaction per batch; yields the jobs made ready."""
        yield from make_ready_in_batches(
            cls, queryset, batch_size=batch_size, using=using, over_limit=True
        )
