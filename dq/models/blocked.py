from collections.abc import Iterator
from datetime import timedelta

from django.db import models
from django.db.models import QuerySet
from django.utils import timezone

from ..db import database
from .claimed import ClaimedExecution
from .execution import QueuedExecution
from .fields import ExactCharField
from .job import Job
from .ready import ReadyExecution
from .semaphore import Semaphore


class BlockedExecution(QueuedExecution):
    """A job waiting for a free slot of its concurrency key."""

    # The status of the jobs this table holds.
    status = Job.Status.BLOCKED
    job = models.OneToOneField(Job, on_delete=models.CASCADE, related_name="blocked_execution")
    concurrency_key = ExactCharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "dq_blocked_execution"
        indexes = [
            models.Index(fields=["concurrency_key", "-priority", "job"], name="dq_blocked_release"),
        ]

    def __str__(self) -> str:
        return f"job {self.job_id} blocked on {self.concurrency_key}"

    def slot_holders(self, limit: int, *, using: str) -> list[int]:
        """Up to ``limit`` ids of the jobs that hold a slot of this job's key now: running
        ones first, then ready ones (a ready job took its slot when it became ready). Read
        from the claimed and ready tables, which stay small, joined to their jobs."""
        holders: list[int] = []
        for execution in (ClaimedExecution, ReadyExecution):
            if len(holders) < limit:
                holders += (
                    execution.objects.using(using)
                    .filter(job__concurrency_key=self.concurrency_key)
                    .order_by("job_id")
                    .values_list("job_id", flat=True)[: limit - len(holders)]
                )
        return holders

    @classmethod
    def row_for(cls, job: Job) -> "BlockedExecution":
        return cls(
            job=job,
            queue_name=job.queue_name,
            priority=job.priority,
            concurrency_key=job.concurrency_key,
        )

    @classmethod
    def release_next(cls, key: str, *, using: str) -> bool:
        """Make the highest-priority blocked job of ``key`` ready if a slot is free.
        Returns whether one was released."""
        with database(using).atomic():
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
            # Both are set with the key.
            if not Semaphore.acquire(
                key,
                job.concurrency_limit,  # type: ignore[arg-type]
                job.concurrency_duration,  # type: ignore[arg-type]
                using=using,
            ):
                return False
            blocked.delete(using=using)
            Job.make_ready([job.pk], using=using, slots_taken=True)
        return True

    @classmethod
    def run_now_batches(
        cls, queryset: "QuerySet[BlockedExecution]", *, batch_size: int = 500, using: str
    ) -> Iterator[list[Job]]:
        """Make the jobs of ``queryset``'s rows ready at once, over their concurrency
        limit: each takes a slot its key does not have (the next releases pay it back).
        ``batch_size`` at a time, one transaction per batch; yields the jobs made ready."""
        yield from cls.make_ready_batches(
            queryset, batch_size=batch_size, using=using, over_limit=True
        )

    @classmethod
    def reclaim_expired_slots(cls, *, using: str) -> int:
        """Recount the slots of expired semaphores from the jobs that hold them (ready or
        running), and release blocked jobs into what is free: a slot held by a job that
        vanished is reclaimed. Returns the jobs released."""
        released = 0
        now = timezone.now()
        for key in (
            Semaphore.objects.using(using).filter(expires_at__lt=now).values_list("key", flat=True)
        ):
            with database(using).atomic():
                semaphore = (
                    Semaphore.objects.using(using).select_for_update().filter(key=key).first()
                )
                if semaphore is None or semaphore.expires_at >= now:
                    continue
                holders = (
                    Job.objects.using(using)
                    .filter(concurrency_key=key, status__in=[Job.Status.READY, Job.Status.RUNNING])
                    .count()
                )
                if (
                    not holders
                    and not cls.objects.using(using).filter(concurrency_key=key).exists()
                ):
                    semaphore.delete(using=using)
                    continue
                semaphore.value = max(0, semaphore.limit - holders)
                semaphore.expires_at = now + timedelta(seconds=semaphore.duration)
                semaphore.save(using=using, update_fields=["value", "expires_at"])
                while cls.release_next(key, using=using):
                    released += 1
        return released
