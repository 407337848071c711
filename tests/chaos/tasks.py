"""The chaos run's tasks, one per delivery mode. Each records every execution of its job in
a table of its own, then works a few milliseconds, so that kills land mid-run."""

import os
import random
import time

from django.tasks import task

from ..models import AtLeastOnceExecution, AtMostOnceExecution, ExactlyOnceExecution

# Retries absorb a task's own database errors while the database server restarts.
RETRIES = {"takes_context": True, "max_attempts": 3, "backoff": 0.1}


def execute(model, context):
    model.objects.create(
        job_id=int(context.task_result.id), attempt=context.attempt, pid=os.getpid()
    )
    time.sleep(random.uniform(0.0, 0.03))  # the job's work


@task(delivery="at_least_once", **RETRIES)
def at_least_once(context):
    execute(AtLeastOnceExecution, context)


@task(delivery="at_most_once", **RETRIES)
def at_most_once(context):
    execute(AtMostOnceExecution, context)


@task(delivery="exactly_once", **RETRIES)
def exactly_once(context):
    """Its execution row is written inside the job's transaction."""
    execute(ExactlyOnceExecution, context)


@task(max_attempts=3, backoff=0.1)
def batch_ended(batch_id, outcome):
    """A batch's callback: its job is what the run counts (one per batch and outcome)."""
