"""The django.tasks backend: validate, store as a Job, and read a Job back as a TaskResult."""

import hashlib
import inspect
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, ParamSpec, Self, TypeVar, cast, overload

from django.db import DEFAULT_DB_ALIAS
from django.tasks import Task, TaskResult
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
from django.tasks.signals import task_enqueued
from django.utils.module_loading import import_string

from . import checks, tracing
from .batches import open_batch
from .conf import (
    DEFAULT_CONCURRENCY_DURATION,
    exponential_backoff,  # noqa: F401 - part of the public surface
)
from .models import Job
from .models.enqueueing import given_fields
from .problems import number_problem
from .results import backoff_of, enqueued_result, result_of
from .serialization import jsonable

if TYPE_CHECKING:
    from django.core.checks import CheckMessage

# How many task objects a backend remembers as validated and as the job their calls copy:
# tasks are mostly module-level, but .using() makes new ones.
TASKS_REMEMBERED = 256

P = ParamSpec("P")
R = TypeVar("R")

# Task is generic in django-stubs only: Django's is not subscriptable at runtime.
if TYPE_CHECKING:
    _AnyTask = Task[..., Any]
else:
    _AnyTask = Task


@dataclass(frozen=True, slots=True, kw_only=True)
class DQTask(_AnyTask):
    """A django.tasks Task with dq's options; ``@task(max_attempts=3, ...)`` builds one."""

    max_attempts: int = 1
    # Seconds, or a callable (failed attempts so far) -> seconds; None: exponential_backoff.
    backoff: float | Callable[[int], float] | None = None
    delivery: str = Job.Delivery.AT_LEAST_ONCE
    # Seconds a run may take before it is interrupted (then handled as its delivery says).
    timeout: float | None = None
    # At most concurrency_limit jobs with the same key ready or running at once; the key is
    # a template over the task's arguments ("account-{account_id}") or a callable taking
    # them. A slot held longer than concurrency_duration seconds is recounted.
    concurrency_key: str | Callable[..., str] | None = None
    concurrency_limit: int = 1
    concurrency_duration: float = DEFAULT_CONCURRENCY_DURATION
    on_conflict: str = Job.OnConflict.BLOCK
    # One unfinished job per task and arguments (unique=True), or per unique_key (a template
    # or callable like concurrency_key); unique_for keeps the key that long after it ended.
    unique: bool = False
    unique_key: str | Callable[..., str] | None = None
    unique_for: float | None = None

    def using(
        self,
        *,
        priority: int | None = None,
        queue_name: str | None = None,
        run_after: datetime | None = None,
        backend: str | None = None,
        **options: Any,  # dq's options (DQ_OPTIONS), of their fields' types
    ) -> Self:
        """A copy with other defaults; takes dq's options as well as Django's."""
        unknown = set(options) - DQ_OPTIONS
        if unknown:
            raise TypeError(f"Unknown task option(s): {', '.join(sorted(unknown))}.")
        # Task.using returns a copy of the same class (dataclasses.replace); the stub says Task.
        changed = cast(
            Self,
            Task.using(
                self, priority=priority, queue_name=queue_name, run_after=run_after, backend=backend
            ),
        )
        return replace(changed, **options) if options else changed

    def enqueue_many(
        self, calls: Iterable[tuple[Sequence[Any], Mapping[str, Any]]]
    ) -> "list[TaskResult[..., Any]]":
        """Enqueue one job per ``(args, kwargs)`` pair in a few statements; returns the results."""
        # A DQTask is DQBackend's task_class; the stub's get_backend says BaseTaskBackend.
        return cast(DQBackend, self.get_backend()).enqueue_many(self, calls)


# The options dq adds to Django's Task.
DQ_OPTIONS = {field.name for field in fields(DQTask)} - {field.name for field in fields(Task)}
# dq's options that are numbers: (name, whole number, may be None, unit).
NUMBER_OPTIONS = (
    ("max_attempts", True, False, ""),
    ("timeout", False, True, " of seconds"),
    ("concurrency_limit", True, False, ""),
    ("concurrency_duration", False, False, " of seconds"),
    ("unique_for", False, True, " of seconds"),
)
DEFAULTS = {field.name: field.default for field in fields(DQTask)}


def render_key(
    template: str | Callable[..., object],
    task: "Task[..., Any]",
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
) -> str:
    """A concurrency or unique key: ``template`` formatted with the task's arguments by
    name, or called with them."""
    if callable(template):
        key = template(*args, **kwargs)
    else:
        leading = ("context",) if task.takes_context else ()
        try:
            bound = inspect.signature(task.func).bind(*leading, *args, **kwargs)
        except TypeError as error:
            raise TypeError(f"Arguments of {task.module_path} do not fit it: {error}") from None
        bound.apply_defaults()
        arguments = {k: v for k, v in bound.arguments.items() if k != "context"}
        try:
            key = template.format(**arguments)
        except (KeyError, IndexError, AttributeError) as error:
            raise InvalidTask(
                f"Key template {template!r} of {task.module_path} names {error}, which is "
                f"not one of its arguments ({', '.join(arguments)})."
            ) from None
    if not isinstance(key, str) or not key or len(key) > 200:
        raise InvalidTask(f"A key of {task.module_path} must be a string of 1 to 200 characters.")
    return key


def unique_key_of(
    task: "Task[..., Any]", args: Sequence[Any], kwargs: Mapping[str, Any]
) -> str | None:
    if (unique_key := getattr(task, "unique_key", None)) is not None:
        return f"{task.module_path}:{render_key(unique_key, task, args, kwargs)}"
    if getattr(task, "unique", False):
        canonical = json.dumps([args, kwargs], sort_keys=True, separators=(",", ":"))
        return f"{task.module_path}:{hashlib.sha256(canonical.encode()).hexdigest()}"
    return None


class DQBackend(BaseTaskBackend):
    task_class = DQTask
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    @property
    def database(self) -> str:
        # OPTIONS are settings, untyped: dq.checks reports a database that is no alias.
        return cast(str, self.options.get("database", DEFAULT_DB_ALIAS))

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        # Per task object, by identity (equal tasks may differ: True == 1), each kept so its
        # id is not reused: validated already, and the job its calls copy.
        self._validated: dict[int, Task[..., Any]] = {}
        self._templates: dict[int, tuple[Task[..., Any], Job]] = {}

    def validate_task(self, task: "Task[..., Any]") -> None:
        if id(task) in self._validated:
            return
        self._check_task(task)
        if len(self._validated) > TASKS_REMEMBERED:
            self._validated.clear()
        self._validated[id(task)] = task

    def _check_task(self, task: "Task[..., Any]") -> None:
        super().validate_task(task)
        queue_name, longest = task.queue_name, Job._meta.get_field("queue_name").max_length
        assert longest is not None  # a CharField always has a max_length
        if not (
            isinstance(queue_name, str)
            and 0 < len(queue_name) <= longest
            and queue_name == queue_name.strip()
            and not {",", "*"} & set(queue_name)
        ):
            raise InvalidTask(
                f"queue_name must be 1 to {longest} characters without ',' or '*' or spaces "
                f"around it (workers select queues by such names), not {queue_name!r}."
            )
        for name, integer, optional, unit in NUMBER_OPTIONS:
            value = getattr(task, name, DEFAULTS[name])
            if (value is not None or not optional) and (
                problem := number_problem(value, name, integer=integer, unit=unit)
            ):
                raise InvalidTask(problem)
        backoff = getattr(task, "backoff", None)
        if callable(backoff):
            if not is_importable(backoff):
                raise InvalidTask(
                    "A backoff callable must be a module-level function (jobs store its path), "
                    f"not {backoff!r}."
                )
        elif backoff is not None and number_problem(backoff, "backoff", zero=True):
            raise InvalidTask(
                "backoff must be a number of seconds >= 0, or a module-level function taking "
                f"the number of failed attempts and returning seconds, not {backoff!r}."
            )
        for name, choices in (("delivery", Job.Delivery), ("on_conflict", Job.OnConflict)):
            value = getattr(task, name, DEFAULTS[name])
            if value not in choices.values:
                allowed = ", ".join(repr(choice) for choice in choices.values)
                raise InvalidTask(f"{name} must be one of {allowed}, not {value!r}.")
        for name in ("concurrency_key", "unique_key"):
            key = getattr(task, name, None)
            if key is not None and not ((isinstance(key, str) and key) or callable(key)):
                raise InvalidTask(f"{name} must be a non-empty template string or a callable.")

    def enqueue(
        self, task: "Task[P, R]", args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> "TaskResult[P, R]":
        [result] = self.enqueue_many(task, [(args, kwargs)])
        return result

    def enqueue_many(
        self, task: "Task[P, R]", calls: Iterable[tuple[Sequence[Any], Mapping[str, Any]]]
    ) -> "list[TaskResult[P, R]]":
        """Enqueue one job per ``(args, kwargs)`` pair, in one transaction."""
        self.validate_task(task)
        jobs = self.new_jobs(task, calls)
        if not jobs:
            return []
        given = given_fields.get()  # a chain's next step: its place, its batch, its trace
        for name, value in given.items():
            for job in jobs:
                setattr(job, name, value)
        follows = given.get("trace_context")
        with tracing.enqueue_span(
            task.module_path, task.queue_name, len(jobs), follows=follows
        ) as context:
            if context is not None:
                for job in jobs:
                    job.trace_context = context  # one object: a bulk insert sends it once
            if (block := open_batch()) is not None:
                return block.take(self, task, jobs)  # created as the block exits
            jobs = Job.enqueue(jobs, using=self.database)
            tracing.enqueued(jobs)
        results = [
            self.to_result(job, task)
            if getattr(job, "duplicate", False)
            else enqueued_result(job, task)
            for job in jobs
        ]
        for job, result in zip(jobs, results, strict=True):
            if not getattr(job, "duplicate", False):
                task_enqueued.send(type(self), task_result=result)
        return results

    def new_jobs(
        self, task: "Task[..., Any]", calls: Iterable[tuple[Sequence[Any], Mapping[str, Any]]]
    ) -> list[Job]:
        """One unsaved job per ``(args, kwargs)`` call. Jobs of a task without concurrency
        or unique keys differ only in their arguments: they are copies, with their own, of
        one job built for the task and kept (building a model instance costs more than the
        rest of an enqueue)."""
        calls = list(calls)
        keyed = any(
            getattr(task, option, None) for option in ("concurrency_key", "unique", "unique_key")
        )
        if keyed:
            return [self.new_job(task, args, kwargs) for args, kwargs in calls]
        template = self.template_of(task)
        jobs = []
        for args, kwargs in calls:
            args, kwargs = self.arguments(task, args, kwargs)
            jobs.append(template.copy_with(args=args, kwargs=kwargs))
        return jobs

    def template_of(self, task: "Task[..., Any]") -> Job:
        """The unsaved job the calls of ``task`` (without keys) copy."""
        if id(task) in self._templates:
            return self._templates[id(task)][1]
        if len(self._templates) > TASKS_REMEMBERED:
            self._templates.clear()
        template = self.new_job(task, (), {})
        self._templates[id(task)] = (task, template)
        return template

    @staticmethod
    def arguments(
        task: "Task[..., Any]", args: Iterable[Any], kwargs: Mapping[str, Any]
    ) -> tuple[list[Any], dict[str, Any]]:
        """A call's ``(args, kwargs)`` as a job stores them; TypeError if they are not JSON."""
        where = f"Arguments of {task.module_path}"
        return jsonable(list(args), where), jsonable(dict(kwargs), where)

    def new_job(
        self, task: "Task[..., Any]", args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> Job:
        args, kwargs = self.arguments(task, args, kwargs)
        concurrency_key = getattr(task, "concurrency_key", None)
        dq_task = cast(DQTask, task)  # only a DQTask has a concurrency_key
        return Job(
            task_path=task.module_path,
            queue_name=task.queue_name,
            priority=task.priority,
            args=args,
            kwargs=kwargs,
            backend=self.alias,
            delivery=getattr(task, "delivery", Job.Delivery.AT_LEAST_ONCE),
            max_attempts=getattr(task, "max_attempts", 1),
            backoff=backoff_of(task),
            timeout=getattr(task, "timeout", None),
            scheduled_at=task.run_after,
            concurrency_key=render_key(concurrency_key, task, args, kwargs)
            if concurrency_key is not None
            else "",
            concurrency_limit=dq_task.concurrency_limit if concurrency_key is not None else None,
            concurrency_duration=dq_task.concurrency_duration
            if concurrency_key is not None
            else None,
            on_conflict=getattr(task, "on_conflict", Job.OnConflict.BLOCK),
            unique_key=unique_key_of(task, args, kwargs),
            unique_for=getattr(task, "unique_for", None),
        )

    def cancel(self, result_id: str) -> "TaskResult[..., Any]":
        """Cancel a job that has not started, or ask a running one to stop; returns its
        TaskResult. TransitionNotAllowed once it has finished."""
        try:
            Job.cancel(int(result_id), using=self.database)
        except (Job.DoesNotExist, TypeError, ValueError):
            raise TaskResultDoesNotExist(result_id) from None
        return self.get_result(result_id)

    def get_result(self, result_id: str) -> "TaskResult[..., Any]":
        try:
            job = Job.objects.using(self.database).get(pk=int(result_id))
        except (Job.DoesNotExist, TypeError, ValueError):
            raise TaskResultDoesNotExist(result_id) from None
        return self.to_result(job)

    @overload
    def to_result(
        self, job: Job, task: None = None, *, running_worker_id: str | None = None
    ) -> "TaskResult[..., Any]": ...
    @overload
    def to_result(
        self, job: Job, task: "Task[P, R]", *, running_worker_id: str | None = None
    ) -> "TaskResult[P, R]": ...
    def to_result(
        self,
        job: Job,
        task: "Task[..., Any] | None" = None,
        *,
        running_worker_id: str | None = None,
    ) -> "TaskResult[..., Any]":
        """The TaskResult of ``job``; ``task`` is imported from the job's path when not given."""
        return result_of(job, task, database=self.database, running_worker_id=running_worker_id)

    def check(self, **kwargs: object) -> "list[CheckMessage]":
        return checks.check_backend(self)


def is_importable(function: Callable[..., object]) -> bool:
    try:
        return import_string(f"{function.__module__}.{function.__qualname__}") is function
    except (ImportError, AttributeError):
        return False
