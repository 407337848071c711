import functools
import logging
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from django.core.exceptions import ObjectDoesNotExist
from django.db import models
from django.db.models import QuerySet
from django.dispatch import Signal
from django.utils import timezone

from .. import conf
from ..db import Claim, End, database
from ..serialization import describe_interruption
from .execution import Execution
from .job import Job

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

# Sent when the transaction block of ``ClaimedExecution.interrupt`` is over, if it
# interrupted runs that had started, with ``exception_class`` (the kind of interruption)
# and ``jobs`` (theirs, as the interruption left them): dq's metrics count them.
runs_interrupted = Signal()


class ClaimedExecution(Execution):
    """A job a worker has claimed: running, or held in its worker's buffer until a thread
    is free (``started_at`` None)."""

    # The status of the jobs this table holds.
    status = Job.Status.RUNNING
    job = models.OneToOneField(Job, on_delete=models.CASCADE, related_name="claimed_execution")
    # No constraint: a claim outlives a process row deleted by pruning, until recovered.
    process = models.ForeignKey(
        "dq.Process", on_delete=models.DO_NOTHING, db_constraint=False, related_name="claims"
    )
    claimed_at = models.DateTimeField()
    # When its run started, once recorded; None: claimed ahead of a free thread, or started
    # so recently that the start is not written yet.
    started_at = models.DateTimeField(null=True, blank=True)

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
            .select_for_update(of=database(using).lockable("self", "job"))
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
    def flush(
        cls,
        *,
        starts: Sequence[Job],
        ends: Sequence[Job],
        claim: Claim | None,
        worker_id: str,
        using: str,
    ) -> tuple[set[int], set[int], list[Job]]:
        """Write a worker's starts and successful ends and claim more jobs for it, in one
        transaction: one statement on PostgreSQL, one hold of the write lock on SQLite.
        ``starts`` are claimed jobs whose run began at their ``last_attempted_at``;
        ``ends`` claimed jobs that ran from their ``last_attempted_at`` and returned their
        ``return_value``.

        Returns the claim ids whose start and whose end were recorded (a claim taken over
        meanwhile is in neither) and the jobs claimed, by priority then age.
        """
        now = timezone.now()
        write = functools.partial(
            database(using).flush,
            starts={job.claim_id: job.run_started_at for job in starts},
            ends={job.claim_id: End(job.return_value, job.run_started_at) for job in ends},
            claim=claim,
            worker_id=worker_id,
            now=now,
        )
        keyed = [job for job in ends if job.concurrency_key]
        # Jobs of a batch or a chain: their ends are counted, or their next steps enqueued.
        followed = [job for job in ends if job.batch_id is not None or job.chain]
        if keyed or followed:
            # Giving their slots back and what follows their ends are more statements: one
            # transaction for them all.
            with database(using).atomic():
                started, ended, returned = write()
                for job in Job.in_key_order(job for job in keyed if job.claim_id in ended):
                    job.release_slot(using=using)
                cls.record_successes(ends, ended, worker_id=worker_id, now=now)
                Job.ended([job for job in followed if job.claim_id in ended], using=using)
        else:
            started, ended, returned = write()
            cls.record_successes(ends, ended, worker_id=worker_id, now=now)
        claimed = Job.from_returned(returned, using=using)
        claimed.sort(key=lambda job: (-job.priority, job.pk))
        return started, ended, claimed

    @staticmethod
    def record_successes(
        ends: Sequence[Job], ended: set[int], *, worker_id: str, now: datetime
    ) -> None:
        """Bring the jobs of ``ends`` whose claim is in ``ended`` up to their end."""
        for job in ends:
            if job.claim_id in ended:
                job.record_success(worker_id=worker_id, finished_at=now)

    @classmethod
    def finish(cls, job: Job, *, worker_id: str, using: str) -> bool:
        """Record a successful run of claimed ``job`` (``flush`` for one end). False if
        its claim was taken over."""
        with database(using).atomic():
            _, ended, _ = cls.flush(
                starts=[], ends=[job], claim=None, worker_id=worker_id, using=using
            )
        return job.claim_id in ended

    @classmethod
    def fail(cls, job: Job, error: dict[str, str], *, worker_id: str, using: str) -> Job | None:
        """Record a run of claimed ``job`` (begun at its ``last_attempted_at``) that raised:
        retry after the job's backoff while attempts remain, else fail the job. Returns the
        job as recorded, or None if the claim was taken over."""
        with database(using).atomic():
            claims = cls._relock([job.claim_id], using)
            if not claims:
                return None
            claim = claims[0]
            recorded, now = claim.job, timezone.now()
            if claim.started_at is None:
                recorded.record_start(job.run_started_at)
            recorded.record_attempt(
                worker_id=worker_id,
                started_at=job.run_started_at,
                finished_at=now,
                error=error,
            )
            claim.delete(using=using)
            recorded.release_slot(using=using)
            if recorded.failure_count < recorded.max_attempts and not recorded.cancel_requested_at:
                recorded.schedule_retry(now, recorded.retry_delay(), using=using)
            else:
                recorded.fail(error, now, using=using)
        return recorded

    @classmethod
    def interrupt(
        cls,
        claims: "QuerySet[ClaimedExecution]",
        exception_class: type[BaseException],
        message: str,
        *,
        running: Collection[int] = (),
        skip_locked: bool = True,
        using: str,
    ) -> int:
        """End the claims of runs that will never finish (their process died, was pruned,
        or outran its shutdown timeout). A run that started (its start recorded, or its
        claim id in ``running``: what its worker was running when it died) ends as its
        job's delivery policy says: at_least_once and exactly_once (whose writes were
        rolled back) run again, up to max_interruptions times; at_most_once fails. A job
        claimed but not started goes back to ready, as if never claimed.

        A claim locked by someone else is skipped (with ``skip_locked``, as a recovery
        does), or waited for (as the worker that owns the claim does).

        Returns the number of claims ended.
        """
        error = describe_interruption(exception_class, message)
        with database(using).atomic():
            # A claim locked by a live exactly_once run is skipped: whoever holds it is
            # alive, and if it dies the database rolls back and the claim is orphaned.
            locked = list(
                claims.using(using)
                .select_for_update(
                    skip_locked=skip_locked, of=database(using).lockable("self", "job")
                )
                .select_related("job")
                .order_by("pk")
            )
            unstarted = [
                claim for claim in locked if claim.started_at is None and claim.pk not in running
            ]
            if unstarted:
                cls.objects.using(using).filter(pk__in=[claim.pk for claim in unstarted]).delete()
                # Still ready, with the slot it took: back in the ready table.
                Job.place([claim.job for claim in unstarted], using=using, slots_taken=True)
            now = timezone.now()
            started = [claim for claim in locked if claim not in unstarted]
            # Each claim gives back its slot and, run again, takes one: in key order.
            for claim in sorted(started, key=lambda claim: claim.job.concurrency_key):
                job = claim.job
                began = claim.started_at or claim.claimed_at
                if claim.started_at is None:
                    job.record_start(began)
                job.interruption_count += 1
                job.record_attempt(
                    worker_id=claim.worker_id, started_at=began, finished_at=now, error=error
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
        if started:
            runs_interrupted.send(
                cls, exception_class=exception_class, jobs=[claim.job for claim in started]
            )
        return len(locked)
