"""What a job stores of a call: its task's path, its arguments and return value as JSON, and
the record of each attempt with its error."""

import json
from datetime import datetime
from traceback import format_exception
from typing import Any

from django.tasks import Task
from django.utils.json import normalize_json
from django.utils.module_loading import import_string


def load_task(path: str) -> "Task[..., Any]":
    """The Task object at ``path``; ImportError with a clear message if there is none."""
    try:
        task = import_string(path)
    except ImportError as error:
        raise ImportError(f"Cannot import task {path!r}: {error}") from error
    if not isinstance(task, Task):
        raise ImportError(f"{path!r} is not a task: decorate it with @task.")
    return task


def task_reference(task: "Task[..., Any]", what: str) -> dict[str, Any]:
    """What a job stores to enqueue ``task`` later (a batch's callback, a chain's next
    step): its path, queue and priority. ValueError if it has other options than the task
    at its path (``.using(max_attempts=...)``), which would be lost."""
    reference = {
        "task": task.module_path,
        "queue_name": task.queue_name,
        "priority": task.priority,
    }
    try:
        stored = load_task(task.module_path)
    except ImportError:
        stored = None
    if stored is None or stored.using(
        queue_name=task.queue_name, priority=task.priority
    ) != task.using(queue_name=task.queue_name, priority=task.priority):
        raise ValueError(
            f"{what} {task.module_path} is enqueued later from its path, with its queue and "
            "priority: it must be the module-level task, or a .using() of it with another "
            "queue_name or priority only."
        )
    return reference


# One encoder for every check: json.dumps with an option builds a new one per call.
_STRICT_JSON = json.JSONEncoder(allow_nan=False)


def jsonable(value: Any, what: str) -> Any:
    """``value`` as it will come back from the database's JSON; TypeError if it would not
    come back equal (dict keys must be strings, no NaN or infinity)."""
    try:
        normalized = normalize_json(value)
        _STRICT_JSON.encode(normalized)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{what} must be JSON-serializable: {error}") from None
    _check_storable(normalized, what)
    return normalized


def _check_storable(value: Any, what: str) -> None:
    """TypeError unless every dict key is a string and no string holds a NUL."""
    if isinstance(value, str) and "\x00" in value:
        raise TypeError(
            f"{what} must be JSON-serializable: a string holds a NUL character (\\x00), "
            "which PostgreSQL cannot store in JSON."
        )
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"{what} must be JSON-serializable: dict key {key!r} is not a string "
                    "and would come back as one."
                )
            _check_storable(key, what)
            _check_storable(item, what)
    elif isinstance(value, list):
        for item in value:
            _check_storable(item, what)


def exception_path(exception_class: type[BaseException]) -> str:
    return f"{exception_class.__module__}.{exception_class.__qualname__}"


def describe_error(exception: BaseException) -> dict[str, str]:
    """An attempt's error as stored on the job: class path, message and traceback."""
    return {
        "exception_class_path": exception_path(type(exception)),
        "message": str(exception),
        "traceback": "".join(format_exception(exception)),
    }


def describe_interruption(exception_class: type[BaseException], message: str) -> dict[str, str]:
    """The error of an attempt that was interrupted rather than raised: no traceback but
    the interruption's own line."""
    path = exception_path(exception_class)
    return {"exception_class_path": path, "message": message, "traceback": f"{path}: {message}\n"}


def attempt_record(
    worker_id: str,
    started_at: datetime | None,
    finished_at: datetime,
    error: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One entry of a job's ``attempts``: who ran it, when, and its error (or None)."""
    return {
        "worker_id": worker_id,
        "started_at": started_at.isoformat() if started_at else None,
        "finished_at": finished_at.isoformat(),
        "error": error,
    }
