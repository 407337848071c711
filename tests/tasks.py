"""Tasks the tests enqueue. Blocking ones wait on a file (an event), never on time."""

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
