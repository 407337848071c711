"""Batches: jobs enqueued together, and callbacks enqueued once when all of them are done.

::

    from dq.batches import batch, get_batch

    with batch(on_success=notify_ok, kwargs={"import_id": 7}, description="import 7") as b:
        for row in rows:
            import_row.enqueue(row.pk)  # every dq job enqueued in the block joins the batch

    get_batch(b.id).pending

The jobs enqueued in the block are created when it exits without an exception, with the
batch, in one transaction (nothing is enqueued if it raises); their TaskResults get their
ids then. Each callback is a task, called with ``batch_id=`` and ``kwargs``, enqueued in
the transaction that ends the batch's last job (``Batch.finish``): exactly once. A job of
the batch can add jobs to it while it runs (``add_to_batch(context.batch_id)``).
"""

import inspect
from collections.abc import Mapping
from contextvars import Token
from types import TracebackType
from typing import TYPE_CHECKING, Any

from django.db import DEFAULT_DB_ALIAS
from django.db.models import F
from django.tasks import Task, TaskResult, task_backends
from django.tasks.signals import task_enqueued
from django.utils import timezone

from .db import database
from .exceptions import TransitionNotAllowed
from .models import Batch, Job
from .models.enqueueing import open_block
from .results import STATUS_OF_JOB, enqueued_result
from .serialization import jsonable, task_reference

if TYPE_CHECKING:
    from django.tasks.backends.base import BaseTaskBackend

__all__ = ["BatchFinished", "OpenBatch", "add_to_batch", "batch", "get_batch"]


class BatchFinished(TransitionNotAllowed):
    """Jobs were added to a batch that has finished (its callbacks are enqueued)."""


def open_batch() -> "OpenBatch | None":
    """The batch block open here, if any: ``DQBackend.enqueue_many`` hands it its jobs."""
    block: OpenBatch | None = open_block.get()
    return block


def batch(
    *,
    on_finish: "Task[..., Any] | None" = None,
    on_success: "Task[..., Any] | None" = None,
    on_failure: "Task[..., Any] | None" = None,
    kwargs: Mapping[str, Any] | None = None,
    description: str = "",
    backend: str | None = None,
) -> "OpenBatch":
    """A block whose dq jobs form a new batch. ``on_finish`` is enqueued once every job of
    it has ended (successful, failed or cancelled), ``on_success`` once all succeeded,
    ``on_failure`` once all ended and one did not succeed; each with ``batch_id=`` and
    ``kwargs``, on its own queue and priority. The batch is kept in the database of
    ``backend`` (default: the callbacks' backend, else ``"default"``), where its jobs
    must be too."""
    callbacks = {
        kind: task
        for kind, task in (
            (Batch.Callback.FINISH, on_finish),
            (Batch.Callback.SUCCESS, on_success),
            (Batch.Callback.FAILURE, on_failure),
        )
        if task is not None
    }
    arguments: dict[str, Any] = jsonable(dict(kwargs or {}), "A batch's kwargs")
    for kind, task in callbacks.items():
        _check_callback(kind, task, arguments)
    aliases = {task.backend for task in callbacks.values()} | ({backend} if backend else set())
    if len(aliases) > 1:
        raise ValueError(
            f"A batch and its callbacks are kept in one backend's database, not {sorted(aliases)}."
        )
    alias = aliases.pop() if aliases else DEFAULT_DB_ALIAS
    new = Batch(
        description=description,
        backend=alias,
        kwargs=arguments,
        callbacks={kind: task_reference(task, f"on_{kind}") for kind, task in callbacks.items()},
    )
    return OpenBatch(new.pk, new=new, database=_database_of(alias))


def add_to_batch(batch_id: str, *, backend: str = DEFAULT_DB_ALIAS) -> "OpenBatch":
    """A block whose dq jobs join batch ``batch_id`` (which must not have finished), as a
    job of the batch grows it while it runs: ``with add_to_batch(context.batch_id):``."""
    return OpenBatch(batch_id, new=None, database=_database_of(backend))


def get_batch(batch_id: str, *, backend: str = DEFAULT_DB_ALIAS) -> Batch:
    """The batch ``batch_id`` as it is now: ``total``, ``succeeded``, ``failed``,
    ``cancelled``, ``pending``, ``is_finished``, ``finished_at``; Batch.DoesNotExist."""
    return Batch.objects.using(_database_of(backend)).get(pk=batch_id)


class OpenBatch:
    """A batch block: the jobs enqueued in it, created when it exits."""

    def __init__(self, batch_id: str, *, new: Batch | None, database: str) -> None:
        self.id = batch_id
        self.new = new
        self.database = database
        # The jobs enqueued in the block, unsaved, and the backend and result of each.
        self.jobs: list[Job] = []
        self.results: list[tuple[BaseTaskBackend, TaskResult[..., Any]]] = []
        self._token: Token[Any] | None = None

    def __enter__(self) -> "OpenBatch":
        if open_block.get() is not None:
            raise RuntimeError("A batch block is open here already: batches do not nest.")
        self._token = open_block.set(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._token is not None
        open_block.reset(self._token)
        if exc_type is None:
            self._create()
        self.jobs, self.results = [], []

    def take[**P, R](
        self, backend: "BaseTaskBackend", task: "Task[P, R]", jobs: list[Job]
    ) -> "list[TaskResult[P, R]]":
        """Keep ``jobs`` (unsaved, of ``backend``) for the batch; their results, whose ids
        are set when the block exits."""
        if getattr(backend, "database", None) != self.database:
            raise ValueError(
                f"Batch {self.id} is kept in database {self.database!r}: jobs of backend "
                f"{backend.alias!r} cannot join it."
            )
        now = timezone.now()
        for job in jobs:
            job.batch_id = self.id
            job.status, job.enqueued_at = Job.Status.READY, now
        results = [enqueued_result(job, task) for job in jobs]
        self.jobs += jobs
        self.results += [(backend, result) for result in results]
        return results

    def _create(self) -> None:
        """Create the batch (or grow it) and its jobs, in one transaction; then give the
        results their jobs' ids and announce the jobs enqueued."""
        jobs, using = self.jobs, self.database
        with database(using).atomic():
            if self.new is not None:
                self.new.total, self.new.created_at = len(jobs), timezone.now()
                self.new.save(using=using, force_insert=True)
            elif not Batch.grow(self.id, len(jobs), using=using):
                raise BatchFinished(
                    f"Batch {self.id} has finished (or does not exist): no job can join it."
                )
            enqueued = Job.enqueue(jobs, using=using) if jobs else []
            duplicates = sum(1 for job in enqueued if getattr(job, "duplicate", False))
            if duplicates or (self.new is not None and not jobs):
                # A unique job's duplicate is not the batch's; a batch of none has ended.
                Batch.change(self.id, using=using, total=F("total") - duplicates)
        for job, (backend, result) in zip(enqueued, self.results, strict=True):
            for name, value in (
                ("id", str(job.pk)),
                ("status", STATUS_OF_JOB[job.status]),
                ("enqueued_at", job.enqueued_at),
                ("finished_at", job.finished_at),
            ):
                object.__setattr__(result, name, value)
            if not getattr(job, "duplicate", False):
                task_enqueued.send(type(backend), task_result=result)


def _check_callback(kind: str, task: object, kwargs: dict[str, Any]) -> None:
    if not isinstance(task, Task):
        raise TypeError(f"on_{kind} must be a task (decorated with @task), not {task!r}.")
    leading = ("context",) if task.takes_context else ()
    try:
        inspect.signature(task.func).bind(*leading, batch_id="", **kwargs)
    except TypeError as error:
        raise TypeError(
            f"on_{kind} {task.module_path} is called with batch_id= and the batch's kwargs "
            f"({', '.join(kwargs) or 'none'}), which it does not take: {error}"
        ) from None


def _database_of(alias: str) -> str:
    backend = task_backends[alias]
    using = getattr(backend, "database", None)
    if using is None:
        raise ValueError(f"Backend {alias!r} is not a dq backend: batches are dq's.")
    return str(using)
