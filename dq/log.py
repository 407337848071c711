"""What dq's log records say about the job they are about, as ``extra`` fields a JSON
formatter (python-json-logger, structlog's ``ExtraAdder``) writes out: ``job_id``, ``task``,
``queue``, ``attempt``, and ``duration`` (seconds) once a run has ended.

dq's own lines about a job carry them. ``JobFields``, a filter on a handler, gives them to
every other record logged while a worker runs or ends a job too: Django's "Task ... state="
lines, and whatever the task itself logs.
"""

import contextlib
import logging
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

# The fields of the job the current thread is running or ending, if any.
_job_fields: ContextVar[dict[str, Any] | None] = ContextVar("dq_job_fields", default=None)


@contextlib.contextmanager
def job_context(fields: dict[str, Any]) -> Iterator[None]:
    """Records logged in this thread meanwhile are about the job of ``fields``."""
    token = _job_fields.set(fields)
    try:
        yield
    finally:
        _job_fields.reset(token)


class JobFields(logging.Filter):
    """Adds the fields of the job being run or ended to a record logged meanwhile (those
    it does not have already). For ``LOGGING["handlers"][NAME]["filters"]``."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = _job_fields.get()
        if fields:
            for name, value in fields.items():
                if not hasattr(record, name):
                    setattr(record, name, value)
        return True
