"""Chains: tasks run one after another, each given the return value of the one before.

::

    from dq.chains import chain, step

    chain(step(fetch, url), step(parse), step(store, table="pages"))

enqueues ``fetch(url)``; when it succeeds, ``parse(<fetch's return value>)`` is enqueued
in the transaction that records fetch's end (exactly once, however workers die), and so
on. A step that fails for good, or is cancelled, stops the chain: each step after it is
recorded as a cancelled job naming the step that stopped it (``Job.chain["stopped_by"]``).
A retry of the stopped step takes those away, and if it succeeds the chain goes on. A
chain begun inside a batch block is part of the batch, every step of it: the batch ends
with its last step.
"""

import inspect
import uuid
from dataclasses import dataclass, field
from typing import Any

from django.tasks import Task, TaskResult

from .models.enqueueing import given_fields
from .serialization import jsonable, task_reference

__all__ = ["Step", "chain", "step"]


@dataclass(frozen=True)
class Step:
    """A task and the arguments of its call in a chain (after the previous step's return
    value, for every step but the first)."""

    task: "Task[..., Any]"
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


def step(task: "Task[..., Any]", *args: Any, **kwargs: Any) -> Step:
    """A step of a chain: ``task`` called with ``args`` and ``kwargs`` (a later step: with
    the previous step's return value before them)."""
    if not isinstance(task, Task):
        raise TypeError(f"A chain's step is a task (decorated with @task), not {task!r}.")
    return Step(task, args, kwargs)


def chain(*steps: Step) -> "TaskResult[..., Any]":
    """Enqueue the first of ``steps``; each next one follows its predecessor's success.
    Returns the first step's TaskResult."""
    if not steps:
        raise ValueError("A chain needs at least one step.")
    first, *later = steps
    backends = {s.task.backend for s in steps}
    if len(backends) > 1:
        raise ValueError(f"A chain's steps are of one backend, not {sorted(backends)}.")
    following = []
    for number, later_step in enumerate(later, start=2):
        _check_takes_previous(later_step, number)
        where = f"Arguments of step {number} ({later_step.task.module_path})"
        following.append(
            {
                **task_reference(later_step.task, f"Step {number}"),
                "args": jsonable(list(later_step.args), where),
                "kwargs": jsonable(dict(later_step.kwargs), where),
            }
        )
    placed = {"chain": {"id": uuid.uuid4().hex, "step": 1, "steps": len(steps), "next": following}}
    token = given_fields.set({**given_fields.get(), **placed})
    try:
        return first.task.enqueue(*first.args, **first.kwargs)
    finally:
        given_fields.reset(token)


def _check_takes_previous(later: Step, number: int) -> None:
    leading = ("context",) if later.task.takes_context else ()
    try:
        inspect.signature(later.task.func).bind(*leading, None, *later.args, **later.kwargs)
    except TypeError as error:
        raise TypeError(
            f"Step {number} of the chain, {later.task.module_path}, is called with the "
            f"previous step's return value before its own arguments, which it does not "
            f"take: {error}"
        ) from None
