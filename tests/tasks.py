"""Tasks the tests enqueue. Blocking ones wait on a file (an event), never on time."""

import asyncio
import contextlib
import logging
import os
import signal
import time
from pathlib import Path

from django.db import IntegrityError
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


@task
def record_after_work(label):
    """Record one run of ``label``, after 10 ms of work: jobs that take a little time, as
    most do, so that no single worker can take a whole backlog before others ask."""
    time.sleep(0.01)  # the job's work
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
def chatty(label):
    """Log a line of its own while it runs."""
    logging.getLogger(__name__).info("working on %s", label)
    return label


@task
def traced(label):
    """Trace a step of its own: a span inside its run's."""
    from opentelemetry import trace

    with trace.get_tracer("tests").start_as_current_span(f"step {label}"):
        return label


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


@task
def return_nul():
    return {"text": "before\x00after"}


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


@task
def fails_until_released(label, release_file):
    """Raise until ``release_file`` exists (one attempt: the job fails), then succeed."""
    Run.objects.create(label=label, pid=os.getpid())
    if not Path(release_file).exists():
        raise ValueError(f"{label}: not released yet")
    return label


@task(max_attempts=3, backoff=0)
def fails_with(*args, **kwargs):
    """Fail every attempt with the arguments in the message (the admin shows both)."""
    raise ValueError(f"bad arguments {args} {kwargs}")


@task(max_attempts=3, backoff=0)
def charge_card(order_id, amount):
    """Always fails, as a payment gateway that is down would (the admin screenshots)."""
    raise ConnectionError(f"payment gateway unreachable while charging order {order_id}")


@task
def kill_own_worker(label):
    """Record a run, then SIGKILL the process running it: a job that kills its worker."""
    Run.objects.create(label=label, pid=os.getpid())
    os.kill(os.getpid(), signal.SIGKILL)


@task(delivery="exactly_once", max_attempts=2, backoff=0)
def record_exactly_once(label, fail_once_file=None):
    """Write a Run in the job's own transaction; the first time, raise after writing."""
    Run.objects.create(label=label, pid=os.getpid())
    if fail_once_file and not Path(fail_once_file).exists():
        Path(fail_once_file).touch()
        raise ValueError("fail after writing")
    return label


@task(delivery="exactly_once")
def write_elsewhere(label):
    """An exactly_once task that writes to a database other than dq's."""
    Run.objects.using("other").create(label=label, pid=os.getpid())


@task(delivery="exactly_once")
def block_exactly_once(label, release_file):
    """Write "<label>:started" inside the job's transaction, then wait for ``release_file``."""
    Run.objects.create(label=f"{label}:started", pid=os.getpid())
    wait_for(release_file)
    Run.objects.create(label=f"{label}:finished", pid=os.getpid())
    return label


@task(timeout=1)
def outrun_timeout(label, release_file):
    """Record the start, then wait for ``release_file`` well past the one-second timeout."""
    Run.objects.create(label=f"{label}:started", pid=os.getpid())
    wait_for(release_file)
    Run.objects.create(label=f"{label}:finished", pid=os.getpid())


@task(takes_context=True)
def checkpoint_on_stop(context, label):
    """Run until the worker is stopping, then record a checkpoint and return early."""
    Run.objects.create(label=f"{label}:started", pid=os.getpid())
    deadline = time.monotonic() + 60
    while not context.stopping:
        if time.monotonic() > deadline:
            raise TimeoutError("the worker never said it was stopping")
        time.sleep(0.01)
    Run.objects.create(label=f"{label}:checkpoint", pid=os.getpid())
    return "checkpointed"


def announce(began_file):
    """Append this process's pid to ``began_file``: a mark outside any transaction that a
    run has begun, for tasks whose database writes stay invisible until they commit."""
    with open(began_file, "a") as began:
        began.write(f"{os.getpid()}\n")


@task(delivery="exactly_once")
def block_exactly_once_announced(label, release_file, began_file):
    """block_exactly_once that also says, outside its transaction, that it has begun."""
    Run.objects.create(label=f"{label}:started", pid=os.getpid())
    announce(began_file)
    wait_for(release_file)
    Run.objects.create(label=f"{label}:finished", pid=os.getpid())
    return label


@task
def block_then_return(label, release_file):
    """Record the start, wait for ``release_file``, return: after the wait, the database
    is only needed to record how the job ended."""
    Run.objects.create(label=f"{label}:started", pid=os.getpid())
    wait_for(release_file)
    return label


@task(concurrency_key="limited", concurrency_limit=1)
def limited(label):
    """One at a time: the second of two is blocked (the admin shows what it waits for)."""
    Run.objects.create(label=label, pid=os.getpid())
    return label


@task(delivery="exactly_once")
def swallow_a_failed_write(label):
    """An exactly_once task that catches a failed write without a savepoint, which breaks
    its transaction on PostgreSQL, and returns as if all were well."""
    first = Run.objects.create(label=label, pid=os.getpid())
    with contextlib.suppress(IntegrityError):
        Run.objects.create(pk=first.pk, label=label, pid=os.getpid())
    return label


@task(takes_context=True)
def backend_in_context(context):
    """What the running job's TaskResult says about its backend alias."""
    return {"task": context.task_result.task.backend, "result": context.task_result.backend}


def wait_in_vain_for_a_lock(job_id):
    """From a connection of its own with a short lock timeout, wait for a lock the running
    exactly_once job's transaction holds: the wait times out with the database's error."""
    from django.db import DEFAULT_DB_ALIAS, connections

    wrapper = connections[DEFAULT_DB_ALIAS]
    settings = wrapper.settings_dict
    options = {**settings["OPTIONS"]}
    if wrapper.vendor == "sqlite":
        options["timeout"] = 0.05
    probe = type(wrapper)({**settings, "OPTIONS": options}, alias=wrapper.alias)
    try:
        with probe.cursor() as cursor:
            if probe.vendor == "sqlite":
                cursor.execute("BEGIN IMMEDIATE")  # the run holds the write lock
            elif probe.vendor == "mysql":
                cursor.execute("SET SESSION innodb_lock_wait_timeout = 1")  # its least
            else:
                cursor.execute("SET lock_timeout = '50ms'")
            if probe.vendor != "sqlite":
                cursor.execute(
                    "SELECT 1 FROM dq_claimed_execution WHERE job_id = %s FOR UPDATE", [job_id]
                )
    finally:
        probe.close()


@task(delivery="exactly_once", takes_context=True)
def meet_a_lock_timeout_once(context, label, met_file):
    """An exactly_once task whose first run meets a lock wait that times out."""
    Run.objects.create(label=label, pid=os.getpid())
    if not Path(met_file).exists():
        Path(met_file).touch()
        wait_in_vain_for_a_lock(int(context.task_result.id))
    return label


# -- batches (tests/unit/test_batches.py, tests/processes/test_batch_processes.py) ----------


@task
def batch_finished(batch_id, **kwargs):
    """A batch's callback: records ``finish BATCH kwargs``."""
    Run.objects.create(label=f"finish {batch_id} {sorted(kwargs.items())}", pid=os.getpid())


@task(queue_name="callbacks", priority=5)
def batch_succeeded(batch_id, **kwargs):
    Run.objects.create(label=f"success {batch_id} {sorted(kwargs.items())}", pid=os.getpid())


@task
def batch_failed(batch_id, **kwargs):
    Run.objects.create(label=f"failure {batch_id} {sorted(kwargs.items())}", pid=os.getpid())


@task(takes_context=True)
def grow_batch(context, count):
    """Add ``count`` jobs to its own batch while it runs."""
    from dq.batches import add_to_batch

    with add_to_batch(context.batch_id):
        add.enqueue_many([((n, 1), {}) for n in range(count)])
