from collections.abc import Sequence

from django.db import models
from django.utils import timezone

from ..db import Claim, database
from ..queues import QueueSelector
from .execution import QueuedExecution
from .fields import ExactCharField
from .job import Job
from .process import Process


class ReadyExecution(QueuedExecution):
    """A job waiting for a worker. The only table workers poll, so it stays small."""

    # The status of the jobs this table holds.
    status = Job.Status.READY
    job = models.OneToOneField(Job, on_delete=models.CASCADE, related_name="ready_execution")
    # Copied from the job, like its queue and priority, so that claiming reads this table
    # alone: a worker claims only jobs of its own backend alias.
    backend = ExactCharField(max_length=100)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "dq_ready_execution"
        indexes = [
            models.Index(
                fields=["backend", "queue_name", "-priority", "job"], name="dq_ready_queue_claim"
            ),
            models.Index(fields=["backend", "-priority", "job"], name="dq_ready_claim"),
        ]

    def __str__(self) -> str:
        return f"job {self.job_id} ready on {self.queue_name}"

    @classmethod
    def create_for(cls, jobs: Sequence[Job], *, using: str) -> None:
        """The jobs' ready rows; idle workers of their queues are woken at commit."""
        super().create_for(jobs, using=using)
        database(using).notify_ready({job.queue_name for job in jobs})

    @classmethod
    def row_for(cls, job: Job) -> "ReadyExecution":
        return cls(job=job, backend=job.backend, queue_name=job.queue_name, priority=job.priority)

    @classmethod
    def claim(
        cls,
        selectors: tuple[QueueSelector, ...],
        limit: int,
        process: Process,
        *,
        backend: str,
        using: str,
    ) -> list[Job]:
        """Claim up to ``limit`` jobs of backend alias ``backend`` for ``process``, queue
        selectors in order, each by priority then age.

        Returns the claimed jobs, each with its ``claim_id``; their runs have not started.
        """
        jobs: list[Job] = []
        for selector in selectors:
            if len(jobs) >= limit:
                break
            returned = database(using).claim(
                Claim(selector, limit - len(jobs), backend, process.pk), now=timezone.now()
            )
            claimed = Job.from_returned(returned, using=using)
            jobs += sorted(claimed, key=lambda job: (-job.priority, job.pk))
        return jobs
