"""Jobs read as django.tasks TaskResults, for the backend and for the worker that runs them:
one TaskResult per run, brought up to date when the run ends."""

import functools
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from django.conf import settings
from django.tasks import Task, TaskResult, TaskResultStatus
from django.tasks.base import TaskError
from django.utils.module_loading import import_string

from .models import ClaimedExecution, Job
from .serialization import load_task

STATUS_OF_JOB: dict[str, TaskResultStatus] = {
    Job.Status.READY: TaskResultStatus.READY,
    Job.Status.SCHEDULED: TaskResultStatus.READY,
    Job.Status.RUNNING: TaskResultStatus.RUNNING,
    Job.Status.SUCCESSFUL: TaskResultStatus.SUCCESSFUL,
    Job.Status.FAILED: TaskResultStatus.FAILED,
    Job.Status.BLOCKED: TaskResultStatus.READY,
    Job.Status.CANCELLED: TaskResultStatus.FAILED,
}


def result_of(
    job: Job,
    task: "Task[..., Any] | None" = None,
    *,
    database: str,
    running_worker_id: str | None = None,
) -> "TaskResult[..., Any]":
    """The TaskResult of ``job`` (of the dq tables on ``database``); ``task`` is imported
    from the job's path when not given."""
    task = task_as_enqueued(job, task)
    worker_ids = job.worker_ids
    if job.status == Job.Status.RUNNING:
        if running_worker_id is None:
            claim = ClaimedExecution.objects.using(database).filter(job=job).first()
            running_worker_id = claim.worker_id if claim else None
        if running_worker_id is not None:
            worker_ids.append(running_worker_id)
    result: TaskResult[..., Any] = TaskResult(
        task=task,
        id=str(job.pk),
        status=STATUS_OF_JOB[job.status],
        enqueued_at=job.enqueued_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        last_attempted_at=job.last_attempted_at,
        args=job.args,
        kwargs=job.kwargs,
        backend=task.backend,
        errors=errors_of(job),
        worker_ids=worker_ids,
    )
    object.__setattr__(result, "_return_value", job.return_value)
    return result


def enqueued_result[**P, R](job: Job, task: "Task[P, R]") -> "TaskResult[P, R]":
    """The TaskResult of ``job`` just enqueued from ``task``: nothing has run yet."""
    result: TaskResult[P, R] = TaskResult(
        task=task,
        id=str(job.pk),
        status=STATUS_OF_JOB[job.status],
        enqueued_at=job.enqueued_at,
        started_at=None,
        finished_at=job.finished_at,  # set if it was cancelled at once (a full key)
        last_attempted_at=None,
        args=job.args,
        kwargs=job.kwargs,
        backend=task.backend,
        errors=[],
        worker_ids=[],
    )
    object.__setattr__(result, "_return_value", None)
    return result


def record_outcome(result: "TaskResult[..., Any]", job: Job) -> None:
    """Bring ``result`` (of a run of ``job``) up to the job as its end recorded it, in
    place, as Django's own backends do with the TaskResult of a run."""
    for name, value in (
        ("status", STATUS_OF_JOB[job.status]),
        ("started_at", job.started_at),
        ("finished_at", job.finished_at),
        ("last_attempted_at", job.last_attempted_at),
        ("errors", errors_of(job)),
        ("worker_ids", job.worker_ids),
        ("_return_value", job.return_value),
    ):
        object.__setattr__(result, name, value)


def errors_of(job: Job) -> list[TaskError]:
    return [
        TaskError(exception_class_path=error["exception_class_path"], traceback=error["traceback"])
        for error in job.errors
    ]


def task_as_enqueued(job: Job, task: "Task[..., Any] | None" = None) -> "Task[..., Any]":
    """``task`` (imported from the job's path when not given) with what ``job`` was
    enqueued with: its backend alias, queue, priority, time to run and dq's options.
    Options a job stores only rendered (concurrency and unique key templates) stay the
    task's own."""
    if task is None:
        task = load_task(job.task_path)
    enqueued = (
        ("queue_name", job.queue_name),
        ("priority", job.priority),
        ("run_after", job.scheduled_at),
        ("max_attempts", job.max_attempts),
        ("delivery", job.delivery),
        ("timeout", job.timeout),
        ("on_conflict", job.on_conflict),
        ("unique_for", job.unique_for),
        # A job of an alias since removed keeps the task's.
        ("backend", job.backend if job.backend in settings.TASKS else _KEEP),
        ("concurrency_limit", job.concurrency_limit if job.concurrency_key else _KEEP),
        ("concurrency_duration", job.concurrency_duration if job.concurrency_key else _KEEP),
        ("backoff", job.backoff),
    )
    try:
        return _as_enqueued(task, enqueued)
    except TypeError:  # a task with an unhashable option
        return _as_enqueued.__wrapped__(task, enqueued)


_KEEP = object()  # the task's own value stays


@functools.lru_cache(maxsize=1024)
def _as_enqueued(task: "Task[..., Any]", enqueued: tuple[tuple[str, Any], ...]) -> "Task[..., Any]":
    """Jobs of one task mostly share every value here: each combination is built once."""
    changes = {}
    for name, value in enqueued:
        if value is _KEEP or not hasattr(task, name):
            continue
        if name == "backoff":
            if value != backoff_of(task):
                changes[name] = import_string(value) if isinstance(value, str) else value
        elif getattr(task, name) != value:
            changes[name] = value
    return replace(task, **changes) if changes else task


def backoff_of(task: "Task[..., Any]") -> float | str | None:
    """A task's backoff as a job stores it: seconds, a function's dotted path, or None."""
    backoff: float | Callable[[int], float] | None = getattr(task, "backoff", None)
    if callable(backoff):
        return f"{backoff.__module__}.{backoff.__qualname__}"
    return backoff
