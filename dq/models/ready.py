from django.db import connections, models
from django.db.models import F
from django.db.models.functions import Coalesce, Substr
from django.utils import timezone

from .. import db as vendor
from ..conf import ALL_QUEUES
from .job import Job


class ReadyExecution(models.Model):
    """A job waiting for a worker. The only table workers poll, so it stays small."""

    job = models.OneToOneField(Job, on_delete=models.CASCADE, related_name="ready_execution")
    # Copied from the job so that claiming reads this table alone: a worker claims only
    # jobs of its own backend alias.
    backend = models.CharField(max_length=100)
    queue_name = models.CharField(max_length=100)
    priority = models.SmallIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "dq_ready_execution"
        indexes = [
            models.Index(
                fields=["backend", "queue_name", "-priority", "job"], name="dq_ready_queue_claim"
            ),
            models.Index(fields=["backend", "-priority", "job"], name="dq_ready_claim"),
        ]

    def __str__(self):
        return f"job {self.job_id} ready on {self.queue_name}"

    @classmethod
    def claim(cls, selectors, limit, process, *, backend, using):
        """Claim up to ``limit`` jobs of backend alias ``backend`` for ``process``, queue
        selectors in order, each by priority.

        Returns the claimed jobs, each with its ``claim_id``; their attempt has started.
        """
        jobs = []
        for selector in selectors:
            if len(jobs) >= limit:
                break
            jobs += cls._claim_from(selector, limit - len(jobs), process, backend, using)
        return jobs

    @classmethod
    def _claim_from(cls, selector, limit, process, backend, using):
        now = timezone.now()
        database = vendor.for_alias(using)
        statement = database.claim_statement(selector, limit)
        if statement is not None:
            sql, params = statement
            params.update(process_id=process.pk, now=now, backend=backend)
            with vendor.one_statement(using):
                return Job.run_returning(sql, params, using=using)
        if not connections[using].in_atomic_block and not cls._any_ready(selector, backend, using):
            return []  # on SQLite an empty poll must not take the write lock (unless held)
        if database.claim_in_transaction is not None:
            # Inside a transaction (a batch's ends) no savepoint: an error ends it all.
            with vendor.atomic(using, savepoint=False):
                returned = database.claim_in_transaction(
                    connections[using],
                    selector,
                    limit,
                    process_id=process.pk,
                    backend=backend,
                    now=now,
                )
            jobs = Job.from_returned(*returned, using=using)
            return sorted(jobs, key=lambda job: (-job.priority, job.pk))
        return cls._claim_with_orm(selector, limit, process, backend, using, now)

    @classmethod
    def _waiting(cls, selector, backend, using):
        """The ready rows of ``backend`` in the queues ``selector`` names that are not
        paused."""
        from .pause import Pause

        ready = (
            cls.objects.using(using)
            .filter(backend=backend)
            .exclude(queue_name__in=Pause.objects.using(using).values("queue_name"))
        )
        if selector.endswith("*") and selector != ALL_QUEUES:
            # Compared as text: SQLite's LIKE, and so startswith there, ignores case.
            prefix = selector[:-1]
            return ready.annotate(queue_prefix=Substr("queue_name", 1, len(prefix))).filter(
                queue_prefix=prefix
            )
        if selector != ALL_QUEUES:
            return ready.filter(queue_name=selector)
        return ready

    @classmethod
    def _any_ready(cls, selector, backend, using):
        return cls._waiting(selector, backend, using).exists()

    @classmethod
    def _claim_with_orm(cls, selector, limit, process, backend, using, now):
        from .claimed import ClaimedExecution

        ready = cls._waiting(selector, backend, using)
        with vendor.atomic(using, savepoint=False):
            picked = list(
                ready.select_for_update(skip_locked=True)
                .order_by("-priority", "job_id")
                .values_list("pk", "job_id")[:limit]
            )
            if not picked:
                return []
            job_ids = [job_id for _, job_id in picked]
            cls.objects.using(using).filter(pk__in=[pk for pk, _ in picked]).delete()
            claims = ClaimedExecution.objects.using(using).bulk_create(
                ClaimedExecution(job_id=job_id, process=process, claimed_at=now)
                for job_id in job_ids
            )
            Job.objects.using(using).filter(pk__in=job_ids).update(
                status=Job.Status.RUNNING,
                attempt_count=F("attempt_count") + 1,
                started_at=Coalesce("started_at", now),
                last_attempted_at=now,
            )
            jobs = Job.objects.using(using).in_bulk(job_ids)
        for claim in claims:
            jobs[claim.job_id].claim_id = claim.pk
        return [jobs[job_id] for job_id in job_ids]
