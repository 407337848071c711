"""How a job enters a state: ready (with a concurrency slot, or else blocked or cancelled),
scheduled, failed; and how it gives its slot back."""

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.utils import timezone

from .semaphore import Semaphore

if TYPE_CHECKING:
    from .job import Job

# Each of these is a Job's classmethod or method (``Job`` mixes ``Placing`` in); the state
# tables are reached through the relations they declare (``Job.execution_model``).


class Placing:
    """A job's way into the state tables."""

    # cls and self are the Job this is mixed into; cls as a type parameter J (through a
    # cls: type[Job] mypy leaves cls.objects a manager of an unbound Self). mypy takes these
    # self-types, not supertypes of this class, only with an ignore[misc].

    if TYPE_CHECKING:
        # Job's fields these methods set on self: else mypy takes them for this class's own.
        status: str
        scheduled_at: datetime | None
        finished_at: datetime | None

    @classmethod
    def admit[J: Job](cls: type[J], jobs: list[J], *, using: str) -> list[J]:  # type: ignore[misc]
        """Give each ready job with a concurrency key a slot, or else block it (or cancel
        it, if its task says so). Returns the jobs whose status changed."""
        changed = []
        for job in cls.in_key_order(jobs):
            if job.status != cls.Status.READY or not job.concurrency_key:
                continue
            # Both are set with the key.
            if Semaphore.acquire(
                job.concurrency_key,
                job.concurrency_limit,  # type: ignore[arg-type]
                job.concurrency_duration,  # type: ignore[arg-type]
                using=using,
            ):
                continue
            if job.on_conflict == cls.OnConflict.DISCARD:
                job.status, job.finished_at = cls.Status.CANCELLED, timezone.now()
                job.end_uniqueness()
            else:
                job.status = cls.Status.BLOCKED
            changed.append(job)
        cls.ended([job for job in changed if job.status == cls.Status.CANCELLED], using=using)
        return changed

    @classmethod
    def place[J: Job](  # type: ignore[misc]
        cls: type[J],
        jobs: list[J],
        *,
        using: str,
        slots_taken: bool = False,
        over_limit: bool = False,
    ) -> None:
        """Create the execution row each job's status names (ready, scheduled or blocked);
        ready jobs with a concurrency key take a slot first unless ``slots_taken``, and
        with ``over_limit`` (a person's "run now") take one even if none is free."""
        if over_limit:
            for job in cls.in_key_order(jobs):
                if job.status == cls.Status.READY and job.concurrency_key:
                    Semaphore.take_over_limit(job.concurrency_key, using=using)
        elif not slots_taken:
            for job in cls.admit(jobs, using=using):
                job.save(using=using, update_fields=["status", "finished_at", "unique_key"])
        for status in (cls.Status.READY, cls.Status.SCHEDULED, cls.Status.BLOCKED):
            placed = [job for job in jobs if job.status == status]
            if placed:
                cls.execution_model(status).create_for(placed, using=using)

    @classmethod
    def make_ready[J: Job](  # type: ignore[misc]
        cls: type[J],
        job_ids: list[int],
        *,
        using: str,
        slots_taken: bool = False,
        over_limit: bool = False,
        **changes: Any,
    ) -> list[J]:
        """Make these jobs ready (with ``changes`` to their fields) and create their ready
        rows; the caller deleted their previous execution rows in the same transaction.
        Returns the jobs, with what the admin and placing need loaded."""
        cls.objects.using(using).filter(pk__in=job_ids).update(status=cls.Status.READY, **changes)
        jobs = list(
            cls.objects.using(using)
            .filter(pk__in=job_ids)
            .only("task_path", "backend", "queue_name", "priority", "status", *CONCURRENCY_FIELDS)
            .order_by("pk")
        )
        cls.place(jobs, using=using, slots_taken=slots_taken, over_limit=over_limit)
        return jobs

    def schedule_retry(self: "Job", now: datetime, delay: float, *, using: str) -> None:  # type: ignore[misc]
        """Make the job ready again, or scheduled ``delay`` seconds from ``now``."""
        if delay > 0:
            self.status, self.scheduled_at = self.Status.SCHEDULED, now + timedelta(seconds=delay)
        else:
            self.status = self.Status.READY
        self.save(using=using, update_fields=self.PROGRESS_FIELDS)
        self.place([self], using=using)

    def fail(self: "Job", error: dict[str, str], now: datetime, *, using: str) -> None:  # type: ignore[misc]
        """End the job as failed with ``error``; it stays until someone retries or discards it."""
        self.status, self.finished_at = self.Status.FAILED, now
        self.end_uniqueness()
        self.save(using=using, update_fields=self.PROGRESS_FIELDS)
        self.execution_model(self.Status.FAILED).objects.using(using).create(
            job=self,
            exception_class_path=error["exception_class_path"],
            message=error["message"],
            traceback=error["traceback"],
            failed_at=now,
        )
        self.ended([self], using=using)

    @classmethod
    def in_key_order[J: Job](cls, jobs: Iterable[J]) -> list[J]:
        """``jobs`` in the order of their concurrency keys: every transaction that takes or
        gives back the slots of several keys does so in this order, so two of them never
        wait for each other's semaphores."""
        return sorted(jobs, key=lambda job: job.concurrency_key)

    def release_slot(self: "Job", *, using: str) -> None:  # type: ignore[misc]
        """Give back the concurrency slot a ready or running job held, and let the next
        blocked job of its key take it."""
        if self.concurrency_key:
            Semaphore.release(self.concurrency_key, using=using)
            self.execution_model(self.Status.BLOCKED).release_next(
                self.concurrency_key, using=using
            )


# What placing a job needs of it beyond its queue, priority and status.
CONCURRENCY_FIELDS = (
    "concurrency_key",
    "concurrency_limit",
    "concurrency_duration",
    "on_conflict",
    "unique_key",
    "finished_at",
    "batch_id",
    "chain",
)
