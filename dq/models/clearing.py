"""How jobs leave the queue before they run or after they ended: discarded, cancelled,
pruned."""

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, cast

from django.db.models import QuerySet
from django.utils import timezone

from ..db import database
from ..exceptions import TransitionNotAllowed
from .paging import pk_batches

if TYPE_CHECKING:
    from .job import ExecutionModel, Job


class Clearing:
    """Job's discard, cancel and prune (``Job`` mixes ``Clearing`` in)."""

    # cls and self are the Job this is mixed into; cls as a type parameter J (through a
    # cls: type[Job] mypy leaves cls.objects a manager of an unbound Self). mypy takes these
    # self-types, not supertypes of this class, only with an ignore[misc].

    @classmethod
    def discard[J: Job](cls: type[J], job_id: int, *, using: str) -> None:  # type: ignore[misc]
        """Delete a job that is ready, scheduled, blocked or failed, with its execution row
        (``discard_batches`` for one job). TransitionNotAllowed, saying why, if it is
        running, finished, or changed state meanwhile."""
        batches = list(cls.discard_batches(cls.objects.filter(pk=job_id), using=using))
        if not batches:
            raise cls.DoesNotExist(f"No job {job_id}.")
        [(_, kept)] = batches
        if kept:
            raise TransitionNotAllowed(kept[0].why_not_discarded())

    @classmethod
    def discard_batches[J: Job](  # type: ignore[misc]
        cls: type[J], queryset: QuerySet[J], *, batch_size: int = 500, using: str
    ) -> Iterator[tuple[list[J], list[J]]]:
        """Discard the jobs of ``queryset`` that are neither running nor finished (ready,
        scheduled, blocked, failed), ``batch_size`` at a time in primary-key order, one
        transaction per batch.

        Yields ``(discarded, kept)`` after each batch commits: the batch's jobs (task path and
        status loaded), split into those deleted and those kept because they were running,
        finished, or changed state meanwhile.
        """
        # Each status of EXECUTION_OF_STATUS has its model.
        discardable = [
            cast("ExecutionModel", cls.execution_model(status))
            for status in cls.EXECUTION_OF_STATUS
            if status != cls.Status.RUNNING
        ]
        for batch in pk_batches(queryset.using(using), batch_size):
            with database(using).atomic():
                # Lock the execution rows first, in the order a claim takes its locks.
                locked: set[int] = set()
                for model in discardable:
                    locked.update(
                        model.objects.using(using)
                        .select_for_update()
                        .filter(job_id__in=batch)
                        .values_list("job_id", flat=True)
                    )
                jobs = list(
                    cls.objects.using(using)
                    .filter(pk__in=batch)
                    .only("task_path", "status", "concurrency_key", "batch_id")
                )
                cls.objects.using(using).filter(pk__in=locked).delete()
                for job in cls.in_key_order(jobs):
                    if job.pk in locked and job.status == cls.Status.READY:
                        job.release_slot(using=using)
                discarded = [job for job in jobs if job.pk in locked and job.batch_id]
                if discarded:
                    cls.batch_model().count_discards(discarded, using=using)
            yield (
                [job for job in jobs if job.pk in locked],
                [job for job in jobs if job.pk not in locked],
            )

    def why_not_discarded(self: "Job") -> str:  # type: ignore[misc]
        """Why discarding this job left it, by the status it had."""
        if self.status == self.Status.RUNNING:
            return (
                f"Job {self.pk} was not discarded: it is running on a worker, and can be "
                "discarded once it has ended."
            )
        if self.status in (self.Status.SUCCESSFUL, self.Status.CANCELLED):
            return f"Job {self.pk} was not discarded: it has finished."
        if self.status == self.Status.READY:
            return (
                f"Job {self.pk} was not discarded: a worker has claimed it to run next (or it "
                "changed state meanwhile); reload and try again."
            )
        return f"Job {self.pk} was not discarded: it changed state meanwhile; reload and try again."

    @classmethod
    def cancel[J: Job](cls: type[J], job_id: int, *, using: str) -> str:  # type: ignore[misc]
        """Cancel a job: one that is waiting ends as cancelled; a running one, or one a
        worker has claimed to run next, is asked to stop (its task sees
        ``context.cancel_requested``). Returns the job's status afterwards;
        TransitionNotAllowed if it has finished."""
        claims = cls.execution_model(cls.Status.RUNNING).objects.using(using)
        with database(using).atomic():
            job = cls.objects.using(using).get(pk=job_id)
            if job.status == cls.Status.RUNNING or claims.filter(job_id=job_id).exists():
                cls.objects.using(using).filter(pk=job_id).update(
                    cancel_requested_at=timezone.now()
                )
                return job.status
            execution = cls.execution_model(job.status)
            if execution is None or job.status == cls.Status.FAILED:
                raise TransitionNotAllowed(f"Job {job_id} has finished; it cannot be cancelled.")
            # Delete the execution row first: a claim that took it meanwhile wins.
            if not execution.objects.using(using).filter(job_id=job_id).delete()[0]:
                raise TransitionNotAllowed(
                    f"Job {job_id} changed state while being cancelled; reload and try again."
                )
            was_ready = job.status == cls.Status.READY
            job.status, job.finished_at = cls.Status.CANCELLED, timezone.now()
            job.end_uniqueness()
            job.save(using=using, update_fields=["status", "finished_at", "unique_key"])
            if was_ready:
                job.release_slot(using=using)
            cls.ended([job], using=using)
        return job.status

    @classmethod
    def prune[J: Job](  # type: ignore[misc]
        cls: type[J],
        *,
        backend: str,
        finished_before: datetime,
        statuses: Sequence[str],
        batch_size: int,
        using: str,
    ) -> int:
        """Delete jobs of backend alias ``backend`` in ``statuses`` that finished before
        ``finished_before``, a batch per transaction so that no lock is held long. Returns
        how many."""
        pruned = 0
        while True:
            # A batch's jobs go with their batch (Batch.prune): its counts stay theirs.
            batch = list(
                cls.objects.using(using)
                .filter(
                    backend=backend,
                    status__in=statuses,
                    finished_at__lt=finished_before,
                    batch__isnull=True,
                )
                .order_by("pk")
                .values_list("pk", flat=True)[:batch_size]
            )
            if not batch:
                return pruned
            with database(using).atomic():
                pruned += (
                    cls.objects.using(using)
                    .filter(pk__in=batch, status__in=statuses)
                    .delete()[1]
                    .get(cls._meta.label, 0)
                )
