"""How jobs are enqueued: inserted with their first execution row, in one transaction;
many at once in one statement where the database can; a unique job at most once."""

import contextlib
import logging
import re
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from django.db import DatabaseError, IntegrityError, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field
from django.utils import timezone

from ..db import database
from ..serialization import load_task

if TYPE_CHECKING:
    from .job import Job

logger = logging.getLogger(__name__)


def _prepared(field: "Field[Any, Any]", value: Any, connection: BaseDatabaseWrapper) -> Any:
    """``value`` of ``field`` as the database takes it. A task's jobs share their options'
    values: those of the plain kinds are prepared once (per database vendor)."""
    if value is None:
        return None
    if not isinstance(value, str | int | float):
        return field.get_db_prep_save(value, connection)
    key = (connection.vendor, field.attname, type(value), value)
    if key not in _PREPARED:
        if len(_PREPARED) > 4096:
            _PREPARED.clear()
        _PREPARED[key] = field.get_db_prep_save(value, connection)
    return _PREPARED[key]


_PREPARED: dict[tuple[str, str, type, Any], Any] = {}

# The batch block (dq.batches.OpenBatch) open in this thread or task, if any: the dq jobs
# enqueued meanwhile join it.
open_block: ContextVar[Any] = ContextVar("dq_open_batch", default=None)
# Fields (by attribute name) that the jobs enqueued meanwhile are given: a chain's next
# step its place in the chain, and its batch.
given_fields: ContextVar[dict[str, Any]] = ContextVar("dq_given_fields", default={})  # noqa: B039 - never changed in place


@contextlib.contextmanager
def enqueued_as(fields: dict[str, Any]) -> Iterator[None]:
    """Enqueues meanwhile are dq's own (a callback, a chain's next step): no batch block
    open here takes their jobs, and they get ``fields``."""
    block, given = open_block.set(None), given_fields.set(fields)
    try:
        yield
    finally:
        given_fields.reset(given)
        open_block.reset(block)


# The fields an insert writes with their SQL types (Enqueueing.inserted_columns), per vendor.
_INSERTED_COLUMNS: "dict[str, list[tuple[Field[Any, Any], str]]]" = {}
# How many times an enqueue that met a deadlock (or a lock wait that timed out) runs.
_LOCK_CONFLICT_ATTEMPTS = 5


class Enqueueing:
    """Job's enqueue (``Job`` mixes ``Enqueueing`` in)."""

    # cls is the Job this is mixed into, as a type parameter J (through a cls: type[Job] mypy
    # leaves cls.objects a manager of an unbound Self); mypy takes it only with ignore[misc].

    @classmethod
    def enqueue[J: Job](cls: type[J], jobs: list[J], *, using: str) -> list[J]:  # type: ignore[misc]
        """Insert new (unsaved) jobs and their first execution rows, in one transaction.

        Jobs due now become ready (or blocked, when their concurrency key has no free
        slot), later ones scheduled. Inside an outer ``atomic()`` on the same database
        nothing is visible before it commits. A unique job whose key is taken is not
        inserted: its place in the list returned holds the existing job, marked
        ``duplicate``.
        """
        now = timezone.now()
        for job in jobs:
            job.enqueued_at = now
            due = job.scheduled_at is None or job.scheduled_at <= now
            job.status = cls.Status.READY if due else cls.Status.SCHEDULED
        if not any(job.unique_key or job.concurrency_key for job in jobs):
            cls.insert_placed(jobs, now, using)
            return jobs
        statuses = [job.status for job in jobs]
        for attempt in range(1, _LOCK_CONFLICT_ATTEMPTS + 1):
            try:
                return cls._enqueue_flowing(jobs, now, using)
            except DatabaseError as error:
                # Enqueues racing for one semaphore or unique key can deadlock on MySQL
                # (waiters on a duplicate key hold shared locks): the database rolled the
                # transaction back; run it again, unless it was part of the caller's.
                if (
                    connections[using].in_atomic_block
                    or not database(using).lock_conflict(error)
                    or attempt == _LOCK_CONFLICT_ATTEMPTS
                ):
                    raise
                for job, status in zip(jobs, statuses, strict=True):
                    job.pk, job._state.adding = None, True
                    job.status, job.finished_at = status, None
        raise AssertionError("unreachable")

    @classmethod
    def enqueue_next_steps[J: Job](cls: type[J], jobs: list[J], *, using: str) -> None:  # type: ignore[misc]
        """In the transaction that ended chain steps ``jobs`` successfully: enqueue each
        one's next step, with its return value as the first argument (and in its batch,
        which grows by it before the step's end is counted)."""
        for job in jobs:
            assert job.chain is not None
            following, *rest = job.chain["next"]
            fields: dict[str, Any] = {
                "chain": {**job.chain, "step": job.chain["step"] + 1, "next": rest},
                "trace_context": job.trace_context,  # the chain is one trace
            }
            if job.batch_id is not None:
                cls.batch_model().grow(job.batch_id, 1, using=using)
                fields["batch_id"] = job.batch_id
            try:
                task = load_task(following["task"]).using(
                    queue_name=following["queue_name"], priority=following["priority"]
                )
                with enqueued_as(fields):
                    task.enqueue(job.return_value, *following["args"], **following["kwargs"])
            except DatabaseError:
                raise  # the transaction is lost: whoever runs it tries it again
            except Exception:
                logger.exception("Job %s: cannot enqueue the next step of its chain", job.pk)
                if job.batch_id is not None:
                    cls.batch_model().grow(job.batch_id, -1, using=using)

    @classmethod
    def stop_chains[J: Job](cls: type[J], jobs: list[J], *, using: str) -> None:  # type: ignore[misc]
        """In the transaction that ended chain steps ``jobs`` as failed or cancelled: the
        steps after each are never enqueued; each is recorded as a cancelled job that says
        which job stopped it (``chain["stopped_by"]``), listed in the stopping job's chain
        (``chain["not_run"]``) so that a retry of it can take them away again."""
        now = timezone.now()
        for job in jobs:
            assert job.chain is not None
            not_run = []
            for number, following in enumerate(job.chain["next"], start=job.chain["step"] + 1):
                placeholder = cls(
                    task_path=following["task"],
                    queue_name=following["queue_name"],
                    priority=following["priority"],
                    args=following["args"],
                    kwargs=following["kwargs"],
                    backend=job.backend,
                    status=cls.Status.CANCELLED,
                    enqueued_at=now,
                    finished_at=now,
                    chain={**job.chain, "step": number, "next": [], "stopped_by": job.pk},
                    trace_context=job.trace_context,
                )
                placeholder.save(using=using, force_insert=True)
                not_run.append(placeholder.pk)
            job.chain = {**job.chain, "not_run": not_run}
            cls.objects.using(using).filter(pk=job.pk).update(chain=job.chain)

    @classmethod
    def resume_chains[J: Job](cls: type[J], jobs: list[J], *, using: str) -> None:  # type: ignore[misc]
        """Stopped chain steps ``jobs`` were retried: the steps they stopped are pending
        again, to be enqueued if they succeed (their cancelled records go)."""
        for job in jobs:
            if job.chain and job.chain.get("not_run"):
                cls.objects.using(using).filter(pk__in=job.chain["not_run"]).delete()
                job.chain = {key: value for key, value in job.chain.items() if key != "not_run"}
                cls.objects.using(using).filter(pk=job.pk).update(chain=job.chain)

    @classmethod
    def _enqueue_flowing[J: Job](cls: type[J], jobs: list[J], now: datetime, using: str) -> list[J]:  # type: ignore[misc]
        """Insert jobs with a concurrency key or a unique key, in one transaction."""
        with database(using).atomic(savepoint=False):
            if any(job.unique_key for job in jobs):
                return [cls._enqueue_unique(job, now, using) for job in jobs]
            cls.admit(jobs, using=using)
            if len(jobs) == 1:
                jobs[0].save(using=using, force_insert=True)
            else:
                cls.objects.using(using).bulk_create(jobs)
            cls.place(jobs, using=using, slots_taken=True)
        return jobs

    @classmethod
    def inserted_columns[J: Job](  # type: ignore[misc]
        cls: type[J], connection: BaseDatabaseWrapper
    ) -> "list[tuple[Field[Any, Any], str]]":
        """The fields an insert writes, with their SQL types on ``connection``'s database
        (without a length: a cast to varchar(100) cuts a longer value silently, where the
        column's own check raises)."""
        if connection.vendor not in _INSERTED_COLUMNS:
            _INSERTED_COLUMNS[connection.vendor] = [
                # A concrete field has a type (django-stubs: str | None).
                (field, re.sub(r"\(\d+\)$", "", cast(str, field.cast_db_type(connection))))
                for field in cls._meta.concrete_fields
                if not field.primary_key
            ]
        return _INSERTED_COLUMNS[connection.vendor]

    @classmethod
    def insert_placed[J: Job](cls: type[J], jobs: list[J], now: datetime, using: str) -> None:  # type: ignore[misc]
        """Insert jobs that need no slot and no unique key, with their execution rows
        (``Database.insert_jobs``). A column is sent once when every job holds the very
        same value object in it (as jobs built from one task do), else a value per job."""
        connection = connections[using]
        shared, varying = [], []
        for field, sql_type in cls.inserted_columns(connection):
            column = cast(str, field.column)  # a concrete field has one
            first = getattr(jobs[0], field.attname)
            values = [getattr(job, field.attname) for job in jobs] if len(jobs) > 1 else [first]
            if all(value is first for value in values):
                shared.append((column, sql_type, _prepared(field, first, connection)))
            else:
                prepared = [field.get_db_prep_save(value, connection) for value in values]
                varying.append((column, sql_type, prepared))
        ready_queues = {job.queue_name for job in jobs if job.status == cls.Status.READY}
        ids = database(using).insert_jobs(
            shared, varying, count=len(jobs), now=now, ready_queues=ready_queues
        )
        for job, pk in zip(jobs, ids, strict=True):
            job.pk = pk
            job._state.adding, job._state.db = False, using

    @classmethod
    def _enqueue_unique[J: Job](cls: type[J], job: J, now: datetime, using: str) -> J:  # type: ignore[misc]
        """Insert one job, or return the unfinished job that holds its unique key."""
        status = job.status
        for _ in range(2):
            try:
                with database(using).atomic():
                    cls.admit([job], using=using)
                    job.save(using=using, force_insert=True)
                    cls.place([job], using=using, slots_taken=True)
                return job
            except IntegrityError:
                job.pk, job._state.adding = None, True
                job.status, job.finished_at = status, None
                holder = cls.objects.using(using).filter(unique_key=job.unique_key).first()
                if holder is None:
                    continue  # it ended meanwhile
                if not holder.uniqueness_expired(now):
                    holder.duplicate = True
                    return holder
                cls.objects.using(using).filter(pk=holder.pk, unique_key=job.unique_key).update(
                    unique_key=None
                )
        raise IntegrityError(f"Could not enqueue unique job {job.unique_key!r}.")
