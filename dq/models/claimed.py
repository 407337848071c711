import logging
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ObjectDoesNotExist
from django.db import models
from django.db.models import QuerySet
from django.utils import timezone

from .. import conf
from ..db import database
from ..queues import QueueSelector
from ..serialization import describe_interruption
from .execution import Execution
from .job import Job

if TYPE_CHECKING:
    from .process import Process

logger = logging.getLogger(__name__)


class ClaimedExecution(Execution):
    """A job a worker has claimed and is running: the attempt in progress."""

    # The status of the jobs this table holds.
    status = Job.Status.RUNNING
    job = models.OneToOneField(Job, on_delete=models.CASCADE, related_name="claimed_execution")
    # No constraint: a claim outlives a process row deleted by pruning, until recovered.
    process = models.ForeignKey(
        "dq.Process", on_delete=models.DO_NOTHING, db_constraint=False, related_name="claims"
    )
    claimed_at = models.DateTimeField()

    class Meta:
        db_table = "dq_claimed_execution"

    def __str__(self) -> str:
        return f"job {self.job_id} claimed by process {self.process_id}"

    @property
    def worker_id(self) -> str:
        try:
            return self.process.name
        except ObjectDoesNotExist:
            return f"process-{self.process_id}"

    @classmethod
    def _relock(cls, claim_ids: list[int], using: str) -> list["ClaimedExecution"]:
        """The claims with their jobs, locked, in id order; those someone else already
        ended are missing."""
        return list(
            cls.objects.using(using)
            .select_for_update(of=("self", "job"))
            .select_related("job")
            .filter(pk__in=claim_ids)
            .order_by("pk")
        )

    @classmethod
    def hold(cls, claim_id: int, *, using: str) -> bool:
        """Lock a claim until the current transaction ends: an exactly_once run holds its
        claim, so nobody can interrupt it while it may still commit. False if it is gone."""
        return cls.objects.using(using).select_for_update().filter(pk=claim_id).exists()

    # Whoever deletes a claim releases its job's concurrency slot, in the same transaction.

    @classmethod
    def finish(cls, claim_id: int, return_value: Any, *, worker_id: str, using: str) -> Job | None:
        """Record a successful run. Returns the job, or None if the claim was taken over."""
        with database(using).atomic():
            return cls._finish({claim_id: return_value}, worker_id, using)[claim_id]

    @classmethod
    def finish_many(cls, jobs: list[Job], *, worker_id: str, using: str) -> dict[int, Job | None]:
        """Record successful runs of one worker together, in a few statements whatever
        their number: ``jobs`` are claimed jobs (``claim_id`` set), each with the
        ``return_value`` of its run.

        Returns ``{claim_id: job}``, the job None where its claim was taken over.
        """
        return_values = {job.claim_id: job.return_value for job in jobs}
        if any(job.concurrency_key for job in jobs):
            # Giving their slots back is more statements: one transaction for them all.
            with database(using).atomic():
                return cls._finish(return_values, worker_id, using)
        return cls._finish(return_values, worker_id, using)

    @classmethod
    def finish_and_claim(
        cls,
        jobs: list[Job],
        *,
        selector: QueueSelector,
        limit: int,
        process: "Process",
        backend: str,
        using: str,
    ) -> tuple[dict[int, Job | None], list[Job]]:
        """``finish_many`` for ``process``'s runs ``jobs`` and, in the same transaction, a
        claim of up to ``limit`` ready jobs of the queues ``selector`` names for the threads
        those runs free (jobs of backend alias ``backend``): one statement on PostgreSQL;
        on SQLite one hold of the write lock. Runs that hold concurrency slots are only
        finished: giving a slot back may release a blocked job, which the worker's loop
        then claims in priority order.

        Returns ``({claim_id: job}, [claimed jobs])``, as finish_many and claim do.
        """
        if not limit or any(job.concurrency_key for job in jobs):
            return cls.finish_many(jobs, worker_id=process.name, using=using), []
        return_values = {job.claim_id: job.return_value for job in jobs}
        returned = database(using).finish_and_claim(
            return_values,
            selector,
            limit,
            worker_id=process.name,
            backend=backend,
            process_id=process.pk,
            now=timezone.now(),
        )
        rows = Job.from_returned(returned, using=using)
        ended = {job.claim_id: job for job in rows if job.claim_id in return_values}
        claimed = [job for job in rows if job.claim_id not in return_values]
        claimed.sort(key=lambda job: (-job.priority, job.pk))
        return {claim_id: ended.get(claim_id) for claim_id in return_values}, claimed

    @classmethod
    def _finish(
        cls, return_values: dict[int, Any], worker_id: str, using: str
    ) -> dict[int, Job | None]:
        returned = database(using).finish(return_values, worker_id=worker_id, now=timezone.now())
        ended = {job.claim_id: job for job in Job.from_returned(returned, using=using)}
        for job in Job.in_key_order(ended.values()):
            job.release_slot(using=using)
        return {claim_id: ended.get(claim_id) for claim_id in return_values}

    @classmethod
    def fail(
        cls, claim_id: int, error: dict[str, str], *, worker_id: str, using: str
    ) -> Job | None:
        """Record a run that raised: retry after the job's backoff while attempts remain,
        else fail the job. Returns the job, or None if the claim was taken over."""
        with database(using).atomic():
            claims = cls._relock([claim_id], using)
            if not claims:
                return None
            claim = claims[0]
            job, now = claim.job, timezone.now()
            job.record_attempt(
                worker_id=worker_id, started_at=claim.claimed_at, finished_at=now, error=error
            )
            claim.delete(using=using)
            job.release_slot(using=using)
            if job.failure_count < job.max_attempts and job.cancel_requested_at is None:
                job.schedule_retry(now, job.retry_delay(), using=using)
            else:
                job.fail(error, now, using=using)
        return job

    @classmethod
    def interrupt(
        cls,
        claims: "QuerySet[ClaimedExecution]",
        exception_class: type[BaseException],
        message: str,
        *,
        using: str,
    ) -> int:
        """End attempts that started and will never finish (their process died, was pruned,
        or outran its shutdown timeout), each as its job's delivery policy says:
        at_least_once and exactly_once (whose writes were rolled back) run again, up to
        max_interruptions times; at_most_once fails.

        Returns the number of claims interrupted.
        """
        error = describe_interruption(exception_class, message)
        with database(using).atomic():
            # A claim locked by a live exactly_once run is skipped: whoever holds it is
            # alive, and if it dies the database rolls back and the claim is orphaned.
            locked = list(
                claims.using(using)
                .select_for_update(skip_locked=True, of=("self", "job"))
                .select_related("job")
                .order_by("pk")
            )
            now = timezone.now()
            # Each claim gives back its slot and, run again, takes one: in key order.
            for claim in sorted(locked, key=lambda claim: claim.job.concurrency_key):
                job = claim.job
                job.interruption_count += 1
                job.record_attempt(
                    worker_id=claim.worker_id,
                    started_at=claim.claimed_at,
                    finished_at=now,
                    error=error,
                )
                claim.delete(using=using)
                job.release_slot(using=using)
                if (
                    job.delivery != Job.Delivery.AT_MOST_ONCE
                    and job.interruption_count <= conf.max_interruptions(job.backend)
                ):
                    job.schedule_retry(now, 0, using=using)
                else:
                    job.fail(error, now, using=using)
        return len(locked)
