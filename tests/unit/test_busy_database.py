"""A busy database: dq's transactions take SQLite's write lock when they begin, and a
process whose heartbeat is late because the database was busy is not taken for dead."""

import subprocess
import sys

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from dq.db import database
from dq.models import Job, Process

from ..tasks import add, always_boom, limited


def begins(queries):
    return [query["sql"] for query in queries if query["sql"].startswith("BEGIN")]


@pytest.mark.django_db(transaction=True)
def test_a_dq_transaction_takes_sqlites_write_lock_when_it_begins_whatever_the_mode():
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's transaction modes")
    connection.ensure_connection()
    connection.transaction_mode = None  # Django's default: BEGIN (DEFERRED)
    try:
        with CaptureQueriesContext(connection) as queries:
            with database("default").atomic():
                Job.objects.count()
                with transaction.atomic():  # what runs inside is the project's own
                    pass
            with transaction.atomic():
                Job.objects.count()
        assert begins(queries) == ["BEGIN IMMEDIATE", "BEGIN"]
        assert connection.transaction_mode is None
    finally:
        connection.close()  # its next connection reads transaction_mode from settings


@pytest.mark.django_db(transaction=True)
def test_enqueue_and_a_jobs_end_begin_immediate_transactions_under_djangos_defaults(worker):
    """Enqueueing a job with a concurrency key, and failing a run, read before they write."""
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's transaction modes")
    connection.ensure_connection()
    connection.transaction_mode = None
    try:
        with CaptureQueriesContext(connection) as queries:
            limited.enqueue("x")
            always_boom.enqueue()
            worker.work_off()
        assert set(begins(queries)) == {"BEGIN IMMEDIATE"}
    finally:
        connection.close()


def stale(process):
    Process.objects.filter(pk=process.pk).update(
        last_heartbeat_at=timezone.now() - timezone.timedelta(hours=1)
    )
    return process


@pytest.mark.django_db
def test_a_process_alive_on_this_host_is_not_pruned_for_a_late_heartbeat():
    alive = stale(Process.register(Process.Kind.WORKER, using="default"))  # this very test
    reused = stale(Process.register(Process.Kind.WORKER, using="default"))
    # The same pid, started at another time: a later process that was given the pid.
    Process.objects.filter(pk=reused.pk).update(pid_start_ticks=reused.pid_start_ticks - 1)
    exited = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead = stale(Process.register(Process.Kind.WORKER, using="default"))
    Process.objects.filter(pk=dead.pk).update(pid=int(exited.stdout))
    elsewhere = stale(Process.register(Process.Kind.WORKER, using="default"))
    Process.objects.filter(pk=elsewhere.pk).update(hostname="another-host")

    pruned = Process.prune(30, using="default")

    assert {process.pk for process in pruned} == {reused.pk, dead.pk, elsewhere.pk}
    assert Process.objects.filter(pk=alive.pk).exists()
    assert alive.pid_start_ticks is not None


@pytest.mark.django_db
def test_a_job_claimed_by_a_live_but_late_process_stays_claimed(worker):
    result = add.enqueue(1, 2)
    assert len(worker.claim()) == 1
    stale(worker.process)

    assert Process.prune(30, using="default") == []

    assert Job.objects.get(pk=int(result.id)).status == Job.Status.RUNNING
