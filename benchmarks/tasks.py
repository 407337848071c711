"""The tasks the benchmark enqueues."""

import time

from django.db import connection
from django.tasks import task

# Created by benchmarks.run: one row per pickup-latency job, written when it starts.
PICKUP_TABLE = "bench_pickup"


@task
def noop():
    """Does nothing: a drain measures dq, not the work."""


@task
def record_start(number):
    """Records when it started running, for the pickup latency of job ``number``."""
    started = time.time()
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {PICKUP_TABLE} (number, started) VALUES (%s, %s)", [number, started]
        )


@task
def batch_done(batch_id):
    """A batch's on_finish callback: does nothing (its job is what the batch costs)."""
