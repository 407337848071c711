"""delivery="exactly_once": the task's writes and the job's completion commit together."""

import sqlite3
import threading

import pytest
from django.db import connection

from dq.exceptions import ProcessExitError
from dq.models import ClaimedExecution, Job

from ..conftest import wait_until
from ..models import Run
from ..tasks import meet_a_lock_timeout_once, record_exactly_once, write_elsewhere

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "other"])


def test_the_task_writes_and_the_job_completion_commit_together(worker):
    result = record_exactly_once.enqueue("once")
    worker.work_off()
    result.refresh()
    assert result.status == "SUCCESSFUL"
    assert result.return_value == "once"
    assert Run.objects.filter(label="once").count() == 1


def test_a_failed_run_rolls_back_its_writes_and_the_retry_writes_once(worker, tmp_path):
    result = record_exactly_once.enqueue("retried", fail_once_file=str(tmp_path / "failed"))
    worker.work_off()
    result.refresh()
    assert result.status == "SUCCESSFUL"
    assert result.attempts == 2
    assert [error.exception_class_path for error in result.errors] == ["builtins.ValueError"]
    # The first attempt wrote a Run and raised: that write was rolled back.
    assert Run.objects.filter(label="retried").count() == 1


def test_an_interrupted_run_runs_again_like_at_least_once(worker):
    result = record_exactly_once.enqueue("interrupted")
    [job] = worker.claim()
    ClaimedExecution.interrupt(
        ClaimedExecution.objects.filter(pk=job.claim_id), ProcessExitError, "gone", using="default"
    )
    assert Job.objects.get(pk=job.pk).status == Job.Status.READY
    worker.work_off()
    result.refresh()
    assert result.status == "SUCCESSFUL"
    assert result.errors[0].exception_class_path == "dq.exceptions.ProcessExitError"
    assert Run.objects.filter(label="interrupted").count() == 1


def test_a_write_to_another_database_is_refused_with_a_clear_error(worker):
    result = write_elsewhere.enqueue("elsewhere")
    worker.work_off()
    result.refresh()
    assert result.status == "FAILED"
    assert result.errors[0].exception_class_path == "dq.exceptions.ExactlyOnceViolation"
    assert "wrote to database 'other'" in result.errors[0].traceback
    assert not Run.objects.using("other").filter(label="elsewhere").exists()


def test_a_run_whose_claim_was_taken_over_commits_nothing(worker):
    """The stale-worker guard, exactly_once flavour: no claim, no writes."""
    result = record_exactly_once.enqueue("stale")
    [job] = worker.claim()
    ClaimedExecution.objects.filter(pk=job.claim_id).delete()
    worker.perform(job)
    assert not Run.objects.filter(label="stale").exists()
    assert Job.objects.get(pk=int(result.id)).status == Job.Status.RUNNING


def test_a_lock_timeout_in_the_run_rolls_it_back_and_counts_as_an_interruption(worker, tmp_path):
    """Not the task's failure (its one attempt is not spent): the job runs again."""
    result = meet_a_lock_timeout_once.enqueue("locked", str(tmp_path / "met"))

    worker.work_off()

    result.refresh()
    assert result.status == "SUCCESSFUL"
    assert [error.exception_class_path for error in result.errors] == [
        "dq.exceptions.TransactionRolledBackError"
    ]
    assert "rolled back: django.db.utils.OperationalError" in result.errors[0].traceback
    assert Job.objects.get(pk=int(result.id)).interruption_count == 1
    assert Run.objects.filter(label="locked").count() == 1  # the first run's write is gone


def test_a_lock_wait_before_the_run_begins_is_retried_not_counted(worker, caplog):
    """SQLite: BEGIN IMMEDIATE waits for the write lock; when the wait times out, nothing
    of the task has run, and the worker begins again."""
    if connection.vendor != "sqlite":
        pytest.skip("only SQLite takes a lock at BEGIN")
    result = record_exactly_once.enqueue("waited")
    [job] = worker.claim()
    connection.ensure_connection()
    connection.connection.execute("PRAGMA busy_timeout = 50")
    holder = sqlite3.connect(connection.settings_dict["NAME"], check_same_thread=False)
    holder.isolation_level = None
    holder.execute("BEGIN IMMEDIATE")

    def release_once_retried():
        wait_until(lambda: "cannot begin job" in caplog.text, timeout=20)
        holder.rollback()

    releaser = threading.Thread(target=release_once_retried)
    releaser.start()
    try:
        worker.perform(job)
    finally:
        releaser.join()
        holder.close()

    result.refresh()
    assert result.status == "SUCCESSFUL"
    assert (result.attempts, result.errors) == (1, [])
    assert Job.objects.get(pk=job.pk).interruption_count == 0
    assert Run.objects.filter(label="waited").count() == 1
