"""Tasks with flow control (concurrency limits, uniqueness, cancellation) that the flow
control tests enqueue. Kept apart from tests/tasks.py, whose tasks have none."""

import os
import random
import time

from django.tasks import task

from .models import Run


def _record(label):
    Run.objects.create(label=label, pid=os.getpid())
    return label


@task(concurrency_key="account-{account_id}")
def per_account(account_id, label="run"):
    """At most one job per account ready or running at once."""
    return _record(label)


@task(concurrency_key="account-{account_id}")
def also_per_account(account_id, label="run"):
    """Another task whose key renders the same: it shares per_account's slots."""
    return _record(label)


@task(concurrency_key="account-{account_id}", max_attempts=2)
def per_account_may_fail(account_id, label, fail=False):
    _record(label)
    if fail:
        raise ValueError(f"{label} failed")
    return label


@task(concurrency_key="account-{account_id}", max_attempts=3, backoff=0)
def per_account_flaky(account_id, label, fail_times):
    """Raise on the first ``fail_times`` runs of ``label``, then succeed; retried at once."""
    runs = Run.objects.filter(label=label).count()
    _record(label)
    if runs < fail_times:
        raise ValueError(f"failure {runs + 1} of {label}")
    return label


@task(concurrency_key="account-{account_id}", max_attempts=3, backoff=30)
def per_account_flaky_backoff(account_id, label, fail_times):
    """per_account_flaky, retried 30 seconds later."""
    return per_account_flaky.call(account_id, label, fail_times)


@task(concurrency_key="bucket-{bucket}", concurrency_limit=2)
def per_bucket(bucket, label="run"):
    """At most two jobs per bucket at once."""
    return _record(label)


@task(concurrency_key="account-{account_id}", on_conflict="discard")
def per_account_or_drop(account_id, label="run"):
    """A conflicting job is cancelled at once instead of waiting."""
    return _record(label)


@task(concurrency_key=lambda order, *, region="eu": f"{region}-{order['customer']}")
def keyed_by_callable(order, *, region="eu"):
    return order["customer"]


@task(takes_context=True, concurrency_key="user-{user_id}")
def keyed_with_context(context, user_id, note="none"):
    return user_id


@task(concurrency_key=lambda n: n)
def keyed_by_bad_callable(n):
    return n


@task(unique=True)
def unique_record(label):
    """One unfinished job per label."""
    return _record(label)


@task(unique=True, concurrency_key="account-{account_id}")
def unique_per_account(account_id, label):
    return _record(label)


@task(unique_key="user-{user_id}")
def sync_user(user_id, reason="any"):
    """One unfinished job per user, whatever the reason."""
    return _record(f"sync {user_id} {reason}")


@task(unique_key="user-{user_id}")
def notify_user(user_id, reason="any"):
    """The same unique key template as sync_user: unique keys are per task."""
    return _record(f"notify {user_id} {reason}")


@task(unique=True, unique_for=60)
def unique_for_a_minute(label):
    """Unique until a minute after it finished."""
    return _record(label)


@task(takes_context=True)
def report_cancel_requested(context):
    """Return whether cancellation was requested when it ran (checks once)."""
    return context.cancel_requested


@task(takes_context=True)
def run_until_cancelled(context, label):
    """Record the start, work in small steps until cancellation is requested, then stop
    early and say so."""
    _record(f"{label}:started")
    deadline = time.monotonic() + 60
    while not context.cancel_requested:
        if time.monotonic() > deadline:
            raise TimeoutError("cancellation was never requested")
        time.sleep(0.02)  # a step of the task's work
    _record(f"{label}:cancelled")
    return "stopped early"


def _span(key):
    """Record the run's start and end times (time.time(): one clock for every process on
    this host) in one Run row labelled ``span <key> <start> <end>``."""
    started = time.time()
    time.sleep(random.uniform(0.005, 0.03))  # the job's work
    Run.objects.create(label=f"span {key} {started:.6f} {time.time():.6f}", pid=os.getpid())


@task(concurrency_key="one-{key}")
def span_limit_one(key):
    _span(f"one-{key}")


@task(concurrency_key="two-{key}", concurrency_limit=2)
def span_limit_two(key):
    _span(f"two-{key}")


@task(unique=True)
def unique_boom(label):
    raise ValueError(f"{label} failed")


@task(concurrency_key="pair-{key}")
def pair_member(key, pause):
    """A short job; a second job of the same key is enqueued while the first may be ending."""
    time.sleep(pause)  # the job's work
    return key
