"""Tasks the tests enqueue. Blocking ones wait on a file (an event), never on time."""

import asyncio
import os
import time
from pathlib import Path

from django.tasks import task

from .models import Run


def wait_for(path, timeout=60):
    deadline = time.monotonic() + timeout
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)


@task
def add(a, b):
    return a + b


@task
def record(label):
    """Record one run of ``label`` with the pid that ran it."""
    Run.objects.create(label=label, pid=os.getpid())
    return label


@task(max_attempts=3, backoff=0)
def flaky(label, fail_times):
    runs = Run.objects.filter(label=label).count()
    Run.objects.create(label=label, pid=os.getpid())
    if runs < fail_times:
        raise ValueError(f"failure {runs + 1} of {label}")
    return runs + 1


@task
def boom():
    raise RuntimeError("boom")


@task
def block(label, release_file):
    """Record the start, wait until ``release_file`` exists, record the end."""
    Run.objects.create(label=f"{label}:started", pid=os.getpid())
    wait_for(release_file)
    Run.objects.create(label=f"{label}:finished", pid=os.getpid())
    return label


@task(delivery="at_most_once")
def block_at_most_once(label, release_file):
    return block.call(label, release_file)


@task(takes_context=True, max_attempts=3, backoff=0)
def attempt_with_context(context, label, fail_times):
    """Record ``label:<attempt>``; raise on the first ``fail_times`` attempts, then return
    what the context said about this run."""
    Run.objects.create(label=f"{label}:{context.attempt}", pid=os.getpid())
    if context.attempt <= fail_times:
        raise ValueError(f"attempt {context.attempt} of {label}")
    result = context.task_result
    return {
        "attempt": context.attempt,
        "id": result.id,
        "status": str(result.status),
        "worker_ids": result.worker_ids,
    }


@task
async def async_add(a, b):
    await asyncio.sleep(0)
    return a + b


@task
def return_unserialisable():
    return {1, 2}


def backoff_by_failures(failures):
    """A backoff that tells which failure count it was given: 100 s per failure."""
    return failures * 100


@task(max_attempts=3, backoff=backoff_by_failures)
def always_fails_with_backoff():
    raise ValueError("always")


@task(max_attempts=2)
def always_fails_default_backoff():
    raise ValueError("always")


@task(max_attempts=3, backoff=0)
def always_boom():
    raise RuntimeError("boom")


@task(max_attempts=2, backoff=30)
def fails_with_backoff_30(label):
    Run.objects.create(label=label, pid=os.getpid())
    raise ValueError(label)
