import json

from django.db import connections, models
from django.utils import timezone

from .. import conf
from .. import db as vendor
from .job import Job, exception_path
from .process import Process


class ClaimedExecution(models.Model):
    """A job a worker has claimed and is running: the attempt in progress."""

    job = models.OneToOneField(Job, on_delete=models.CASCADE, related_name="claimed_execution")
    # No constraint: a claim outlives a process row deleted by pruning, until recovered.
    process = models.ForeignKey(
        Process, on_delete=models.DO_NOTHING, db_constraint=False, related_name="claims"
    )
    claimed_at = models.DateTimeField()

    class Meta:
        db_table = "dq_claimed_execution"

    def __str__(self):
        return f"job {self.job_id} claimed by process {self.process_id}"

    @classmethod
    def _relock(cls, claim_ids, using):
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
    def hold(cls, claim_id, *, using):
        """Lock a claim until the current transaction ends: an exactly_once run holds its
        claim, so nobody can interrupt it while it may still commit. False if it is gone."""
        return cls.objects.using(using).select_for_update().filter(pk=claim_id).exists()

    # Whoever deletes a claim releases its job's concurrency slot, in the same transaction.

    @classmethod
    def finish(cls, claim_id, return_value, *, worker_id, using):
        """Record a successful run. Returns the job, or None if the claim was taken over."""
        with vendor.atomic(using):
            return cls._finish({claim_id: return_value}, worker_id, using)[claim_id]

    @classmethod
    def finish_many(cls, jobs, *, worker_id, using):
        """Record successful runs of one worker together, in a few statements whatever
        their number: ``jobs`` are claimed jobs (``claim_id`` set), each with the
        ``return_value`` of its run.

        Returns ``{claim_id: job}``, the job None where its claim was taken over.
        """
        return_values = {job.claim_id: job.return_value for job in jobs}
        if vendor.for_alias(using).FINISH_STATEMENT is None or any(
            job.concurrency_key for job in jobs
        ):
            # More than one statement: ending the claims, and giving their slots back.
            with vendor.atomic(using):
                return cls._finish(return_values, worker_id, using)
        with vendor.one_statement(using):
            return cls._finish(return_values, worker_id, using)

    @classmethod
    def finish_and_claim(cls, jobs, *, selector, limit, process, backend, using):
        """``finish_many`` for ``process``'s runs ``jobs`` and, in the same transaction, a
        claim of up to ``limit`` ready jobs of the queues ``selector`` names for the threads
        those runs free (jobs of backend alias ``backend``): one statement on PostgreSQL;
        on other databases the ORM's statements in one transaction (on SQLite, one hold
        of the write lock). Runs that hold concurrency slots are only finished: giving a
        slot back may release a blocked job, which the worker's loop then claims in
        priority order.

        Returns ``({claim_id: job}, [claimed jobs])``, as finish_many and claim do.
        """
        from .ready import ReadyExecution

        if not limit or any(job.concurrency_key for job in jobs):
            return cls.finish_many(jobs, worker_id=process.name, using=using), []
        return_values = {job.claim_id: job.return_value for job in jobs}
        make_statement = vendor.for_alias(using).finish_and_claim_statement
        if make_statement is None:
            with vendor.atomic(using):
                ended = cls._finish(return_values, process.name, using)
                claimed = ReadyExecution.claim(
                    (selector,), limit, process, backend=backend, using=using
                )
                return ended, claimed
        sql, params = make_statement(selector, limit)
        params.update(
            cls._finish_parameters(return_values, process.name),
            process_id=process.pk,
            backend=backend,
        )
        with vendor.one_statement(using):
            rows = Job.run_returning(sql, params, using=using)
        ended = {job.claim_id: job for job in rows if job.claim_id in return_values}
        claimed = [job for job in rows if job.claim_id not in return_values]
        return {claim_id: ended.get(claim_id) for claim_id in return_values}, claimed

    @staticmethod
    def _as_json_text(return_values):
        """``{claim_id: return value}`` with each value as the JSON text a statement
        writes, or None (SQL NULL)."""
        return {
            claim_id: None if value is None else json.dumps(value)
            for claim_id, value in return_values.items()
        }

    @classmethod
    def _finish_parameters(cls, return_values, worker_id):
        return {
            "claim_ids": list(return_values),
            "return_values": list(cls._as_json_text(return_values).values()),
            "worker_id": worker_id,
            "now": timezone.now(),
        }

    @classmethod
    def _finish(cls, return_values, worker_id, using):
        database = vendor.for_alias(using)
        if database.FINISH_STATEMENT is not None:
            jobs = Job.run_returning(
                database.FINISH_STATEMENT,
                cls._finish_parameters(return_values, worker_id),
                using=using,
            )
            ended = {job.claim_id: job for job in jobs}
        elif database.finish_in_transaction is not None:
            now = timezone.now()
            returned = database.finish_in_transaction(
                connections[using],
                cls._as_json_text(return_values),
                attempt=lambda started_at: Job.attempt(worker_id, started_at, now),
                now=now,
            )
            ended = {job.claim_id: job for job in Job.from_returned(*returned, using=using)}
        else:
            ended = cls._finish_with_orm(return_values, worker_id, timezone.now(), using)
        for job in ended.values():
            job.release_slot(using=using)
        return {claim_id: ended.get(claim_id) for claim_id in return_values}

    @classmethod
    def _finish_with_orm(cls, return_values, worker_id, now, using):
        claims = cls._relock(list(return_values), using)
        for claim in claims:
            job = claim.job
            job.record_attempt(worker_id=worker_id, started_at=claim.claimed_at, finished_at=now)
            job.status, job.finished_at = Job.Status.SUCCESSFUL, now
            job.return_value = return_values[claim.pk]
            job.end_uniqueness()
            job.save(using=using, update_fields=Job.FINISH_FIELDS)
        cls.objects.using(using).filter(pk__in=[claim.pk for claim in claims]).delete()
        return {claim.pk: claim.job for claim in claims}

    @classmethod
    def fail(cls, claim_id, error, *, worker_id, using):
        """Record a run that raised: retry after the job's backoff while attempts remain,
        else fail the job. Returns the job, or None if the claim was taken over."""
        with vendor.atomic(using):
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
    def interrupt(cls, claims, exception_class, message, *, using):
        """End attempts that started and will never finish (their process died, was pruned,
        or outran its shutdown timeout), each as its job's delivery policy says:
        at_least_once and exactly_once (whose writes were rolled back) run again, up to
        max_interruptions times; at_most_once fails.

        Returns the number of claims interrupted.
        """
        error = {
            "exception_class_path": exception_path(exception_class),
            "message": message,
            "traceback": f"{exception_path(exception_class)}: {message}\n",
        }
        with vendor.atomic(using):
            # A claim locked by a live exactly_once run is skipped: whoever holds it is
            # alive, and if it dies the database rolls back and the claim is orphaned.
            locked = list(
                claims.using(using)
                .select_for_update(skip_locked=True, of=("self", "job"))
                .select_related("job")
                .order_by("pk")
            )
            now = timezone.now()
            for claim in locked:
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

    @property
    def worker_id(self):
        try:
            return self.process.name
        except Process.DoesNotExist:
            return f"process-{self.process_id}"
