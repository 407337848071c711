from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Self

from django.db import models
from django.db.models import QuerySet

from ..db import database
from .fields import ExactCharField
from .job import Job
from .paging import pk_batches


class Execution(models.Model):
    """A job's current state: one row, in the table of that state, per job in it. Each
    state model declares its ``job`` (a one-to-one relation whose name Job knows it by)."""

    class Meta:
        abstract = True

    if TYPE_CHECKING:
        # Each state model declares its job and has a manager: django-stubs sees neither here.
        objects: ClassVar[models.Manager[Self]]
        job: models.OneToOneField[Job, Job]

    @classmethod
    def make_ready_batches(
        cls, queryset: QuerySet[Self], *, batch_size: int, using: str, **changes: Any
    ) -> Iterator[list[Job]]:
        """Move the jobs of the rows in ``queryset`` to ready, ``batch_size`` at a time in
        primary-key order, one transaction per batch: lock and delete the rows, then
        ``Job.make_ready`` (with ``changes``). Yields each batch's jobs after it commits:
        rows another transaction took meanwhile are left out."""
        for batch in pk_batches(queryset.using(using), batch_size):
            with database(using).atomic():
                job_ids = list(
                    cls.objects.using(using)
                    .select_for_update()
                    .filter(pk__in=batch)
                    .order_by("pk")  # locks taken in one order, jobs yielded in it
                    .values_list("job_id", flat=True)
                )
                cls.objects.using(using).filter(job_id__in=job_ids).delete()
                jobs = Job.make_ready(job_ids, using=using, **changes)
                cls.left(jobs, using=using)
            if jobs:
                yield jobs

    @classmethod
    def left(cls, jobs: list[Job], *, using: str) -> None:
        """``jobs`` left this state for ready (in ``make_ready_batches``' transaction)."""


class QueuedExecution(Execution):
    """The state of a job that waits to run: it copies the job's queue and priority, so
    that the queries of its state read its table alone."""

    queue_name = ExactCharField(max_length=100)
    priority = models.SmallIntegerField(default=0)

    class Meta:
        abstract = True

    # cls: type[Self], or mypy takes cls.row_for's rows for other than cls.objects' Self.
    @classmethod
    def create_for(cls: type[Self], jobs: Sequence[Job], *, using: str) -> None:
        """Create the rows of ``jobs``, which have just entered this state."""
        cls.objects.using(using).bulk_create(cls.row_for(job) for job in jobs)

    @classmethod
    def row_for(cls, job: Job) -> Self:
        return cls(job=job, queue_name=job.queue_name, priority=job.priority)
