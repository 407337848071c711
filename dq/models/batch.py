"""A batch: jobs enqueued together whose end runs callbacks, each enqueued once, in the
transaction that ends the batch's last job (``dq.batches`` makes them)."""

import logging
import uuid
from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.db import DatabaseError, models
from django.db.models import F, Q
from django.utils import timezone

from ..db import database
from ..serialization import load_task
from .enqueueing import enqueued_as
from .job import Job

logger = logging.getLogger(__name__)


def new_batch_id() -> str:
    return uuid.uuid4().hex


class Batch(models.Model):
    """A group of jobs counted as they end. Its counts change in the transactions that
    change its jobs (an end, a retry, a discard), so they never drift from them."""

    class Callback(models.TextChoices):
        FINISH = "finish"  # every job ended: successful, failed or cancelled
        SUCCESS = "success"  # every job succeeded
        FAILURE = "failure"  # every job ended, and at least one did not succeed

    id = models.CharField(primary_key=True, max_length=32, default=new_batch_id, editable=False)
    description = models.CharField(max_length=255, blank=True)
    # The backend alias of its jobs (whose dispatcher prunes it).
    backend = models.CharField(max_length=100)
    # Per callback (Callback): {"task": path, "queue_name": ..., "priority": ...}.
    callbacks = models.JSONField(default=dict)
    # Passed to every callback, with batch_id.
    kwargs = models.JSONField(default=dict)
    total = models.PositiveIntegerField(default=0)
    succeeded = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    cancelled = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField()
    # When its last job ended; None while any is pending (again, once one is retried).
    finished_at = models.DateTimeField(null=True, blank=True)
    # The job each callback enqueued, by Callback; a callback is enqueued at most once.
    callback_jobs = models.JSONField(default=dict)

    class Meta:
        db_table = "dq_batch"
        verbose_name_plural = "batches"
        indexes = [
            models.Index(fields=["finished_at"], name="dq_batch_finished_at"),
            # The admin's list: newest first.
            models.Index(fields=["-created_at"], name="dq_batch_newest"),
        ]

    def __str__(self) -> str:
        return self.description or f"batch {self.pk}"

    @property
    def pending(self) -> int:
        return self.total - self.succeeded - self.failed - self.cancelled

    @property
    def is_finished(self) -> bool:
        return self.finished_at is not None

    @staticmethod
    def by_batch(jobs: Iterable[Job]) -> dict[str, Counter[str]]:
        """Those of ``jobs`` in a batch, counted by status per batch, in batch id order (the
        order in which batch rows are locked: two transactions never wait for each other)."""
        tally: dict[str, Counter[str]] = {}
        for job in jobs:
            if job.batch_id is not None:
                tally.setdefault(job.batch_id, Counter())[job.status] += 1
        return dict(sorted(tally.items()))

    @classmethod
    def count_ends(cls, jobs: Iterable[Job], *, using: str) -> None:
        """Count the ends of ``jobs`` (successful, failed or cancelled, as their status
        says) in their batches, in the transaction that ended them. A batch whose last job
        they were finishes, and its callbacks are enqueued, in that same transaction."""
        for batch_id, counts in cls.by_batch(jobs).items():
            cls.change(
                batch_id,
                using=using,
                succeeded=F("succeeded") + counts[Job.Status.SUCCESSFUL],
                failed=F("failed") + counts[Job.Status.FAILED],
                cancelled=F("cancelled") + counts[Job.Status.CANCELLED],
            )

    @classmethod
    def count_retries(cls, jobs: Iterable[Job], *, using: str) -> None:
        """Failed ``jobs`` were made ready again: their batches are pending again (a
        finished one re-opens; a callback it has enqueued is not enqueued again)."""
        for batch_id, counts in cls.by_batch(jobs).items():
            cls.change(batch_id, using=using, failed=F("failed") - counts.total(), finished_at=None)

    @classmethod
    def count_discards(cls, jobs: Iterable[Job], *, using: str) -> None:
        """``jobs`` (their status as before) were deleted: they leave their batches, which
        may finish by it."""
        for batch_id, counts in cls.by_batch(jobs).items():
            cls.change(
                batch_id,
                using=using,
                total=F("total") - counts.total(),
                failed=F("failed") - counts[Job.Status.FAILED],
            )

    @classmethod
    def change(cls, batch_id: str, *, using: str, **changes: Any) -> None:
        """Update one batch's counts (locking its row until the transaction ends), then
        finish it if nothing of it is pending any more."""
        cls.objects.using(using).filter(pk=batch_id).update(**changes)
        batch = cls.objects.using(using).filter(pk=batch_id).first()
        if batch is not None and batch.finished_at is None and batch.pending == 0:
            batch.finish(timezone.now(), using=using)

    def finish(self, now: datetime, *, using: str) -> None:
        """Every job has ended: record it and enqueue the callbacks due, those not yet
        enqueued (after a retry re-opened the batch, on_success may still be due)."""
        self.finished_at = now
        due = [self.Callback.FINISH]
        due.append(self.Callback.SUCCESS if self.succeeded == self.total else self.Callback.FAILURE)
        for kind in due:
            if kind in self.callbacks and kind not in self.callback_jobs:
                self.callback_jobs[kind] = self.enqueue_callback(kind)
        self.save(using=using, update_fields=["finished_at", "callback_jobs"])

    def enqueue_callback(self, kind: str) -> int | str:
        """Enqueue callback ``kind`` (on the batch's database: it joins this transaction);
        its job's id, or the error that kept it from being enqueued (its task gone since
        the batch was made, say), which is logged."""
        callback = self.callbacks[kind]
        try:
            task = load_task(callback["task"]).using(
                queue_name=callback["queue_name"], priority=callback["priority"]
            )
            with enqueued_as({}):
                return int(task.enqueue(batch_id=self.pk, **self.kwargs).id)
        except DatabaseError:
            raise  # the transaction is lost: whoever runs it tries it again
        except Exception as error:
            logger.exception("Batch %s: cannot enqueue its on_%s callback", self.pk, kind)
            return f"{type(error).__name__}: {error}"

    @classmethod
    def grow(cls, batch_id: str, count: int, *, using: str) -> bool:
        """Add ``count`` jobs to an unfinished batch (its row locked until the transaction
        ends). False if it has finished (or does not exist)."""
        return bool(
            cls.objects.using(using)
            .filter(pk=batch_id, finished_at__isnull=True)
            .update(total=F("total") + count)
        )

    @classmethod
    def prune(
        cls,
        *,
        backend: str,
        finished_before: datetime,
        failed: bool,
        using: str,
    ) -> int:
        """Delete the batches of ``backend`` that finished before ``finished_before``, with
        their jobs: those with a failed job (``failed``: kept as long as failed jobs are)
        or those without. One transaction per batch.
        Returns how many batches."""
        with_failures = Q(failed__gt=0)
        batches = (
            cls.objects.using(using)
            .filter(backend=backend, finished_at__lt=finished_before)
            .filter(with_failures if failed else ~with_failures)
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        pruned = 0
        for batch_id in list(batches):
            with database(using).atomic():
                still = cls.objects.using(using).select_for_update()
                if not still.filter(pk=batch_id, finished_at__lt=finished_before).exists():
                    continue  # re-opened meanwhile
                Job.objects.using(using).filter(batch_id=batch_id).delete()
                pruned += cls.objects.using(using).filter(pk=batch_id).delete()[0]
        return pruned
