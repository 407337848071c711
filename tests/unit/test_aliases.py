"""Several dq backend aliases in one project: each alias's jobs stay its own, whether the
aliases keep their tables in two databases or share one."""

import logging
from datetime import timedelta

import pytest
from django.tasks import TaskResultStatus
from django.test import override_settings
from django.utils import timezone

from dq.models import Job, RecurringTask

from ..conftest import InProcessWorker
from ..tasks import add, backend_in_context, boom, flaky

DQ = "dq.backend.DQBackend"
# "other" keeps its tables in the database "other".
TWO_DATABASES = {
    "default": {"BACKEND": DQ, "QUEUES": []},
    "other": {"BACKEND": DQ, "QUEUES": [], "OPTIONS": {"database": "other"}},
}
# "a" and "b" share the database "default".
ONE_DATABASE = {
    **TWO_DATABASES,
    "a": {"BACKEND": DQ, "QUEUES": []},
    "b": {"BACKEND": DQ, "QUEUES": []},
}

both_databases = pytest.mark.django_db(databases=["default", "other"])


@both_databases
@override_settings(TASKS=TWO_DATABASES)
@pytest.mark.parametrize("alias", ["default", "other"])
def test_get_result_returns_the_result_enqueue_returned_on_every_alias(alias):
    run_after = timezone.now() + timedelta(hours=1)
    task = add.using(
        backend=alias, queue_name="reports", priority=7, run_after=run_after, max_attempts=4
    )

    result = task.enqueue(1, 2)

    assert result.backend == alias and result.task.backend == alias
    assert result == task.get_result(result.id)
    fetched = task.get_result(result.id)
    assert (fetched.task.run_after, fetched.task.max_attempts) == (run_after, 4)
    # The module-level task (backend "default") reads it back the same, through "other" too.
    assert add.using(backend=alias).get_result(result.id).task == task


@both_databases
@override_settings(TASKS=TWO_DATABASES)
def test_refresh_reads_the_job_from_its_own_alias_not_a_job_with_the_same_id_elsewhere():
    enqueued = add.using(backend="other").enqueue(2, 2)
    there = add.using(backend="other").get_result(enqueued.id)
    now = timezone.now()
    # Each database numbers its own jobs: "default" has a finished job with that id.
    Job.objects.create(
        pk=int(there.id),
        task_path="tests.tasks.add",
        queue_name="default",
        backend="default",
        status=Job.Status.SUCCESSFUL,
        enqueued_at=now,
        finished_at=now,
        return_value=4,
    )

    there.refresh()

    assert there.status == TaskResultStatus.READY


@both_databases
@override_settings(TASKS=TWO_DATABASES)
def test_a_running_job_sees_its_own_alias_in_its_context():
    result = backend_in_context.using(backend="other").enqueue()

    InProcessWorker(backend="other").work_off()

    assert backend_in_context.using(backend="other").get_result(result.id).return_value == {
        "task": "other",
        "result": "other",
    }


@both_databases
@override_settings(TASKS=TWO_DATABASES)
def test_a_recurring_task_enqueues_its_runs_through_its_own_alias():
    recurring = RecurringTask.objects.using("other").create(
        key="tick",
        backend="other",
        task_path="tests.tasks.add",
        schedule="* * * * *",
        timezone="UTC",
        args=[3, 4],
    )

    job_id = recurring.enqueue_run(timezone.now().replace(second=0, microsecond=0), using="other")

    job = Job.objects.using("other").get(pk=job_id)
    assert (job.backend, job.args) == ("other", [3, 4])
    assert not Job.objects.using("default").exists()


@pytest.mark.django_db
@override_settings(TASKS=ONE_DATABASE)
def test_a_worker_claims_only_its_own_aliases_jobs_from_a_shared_database():
    theirs = [add.using(backend="b").enqueue(n, n) for n in range(3)]
    mine = [add.using(backend="a").enqueue(n, n) for n in range(2)]

    # Each run's end claims its thread's next job too: neither claim may cross.
    done = InProcessWorker(backend="a").work_off()

    assert [job.pk for job in done] == [int(result.id) for result in mine]
    assert all(job.backend == "a" for job in done)
    waiting = Job.objects.filter(pk__in=[int(result.id) for result in theirs])
    assert set(waiting.values_list("status", flat=True)) == {Job.Status.READY}
    assert [job.pk for job in InProcessWorker(backend="b").work_off()] == [
        int(result.id) for result in theirs
    ]


@pytest.mark.django_db
@override_settings(TASKS=ONE_DATABASE)
def test_a_retried_job_stays_with_its_alias():
    result = flaky.using(backend="b").enqueue("x", 1)

    assert [job.pk for job in InProcessWorker(backend="b").work_off()] == [int(result.id)] * 2
    assert InProcessWorker(backend="a").claim() == []
    assert flaky.using(backend="b").get_result(result.id).status == TaskResultStatus.SUCCESSFUL


# --- what the worker's log says of a job's end ------------------------------------------


def test_a_final_failure_is_logged_with_its_traceback(worker, caplog):
    result = boom.enqueue()

    with caplog.at_level(logging.INFO):
        worker.work_off()

    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.name == "django.tasks" and result.id in record.getMessage()
    assert record.exc_info and isinstance(record.exc_info[1], RuntimeError)
    assert 'raise RuntimeError("boom")' in caplog.text and "Traceback" in caplog.text


def test_a_retry_is_logged_with_the_exception_and_its_message(worker, caplog):
    flaky.enqueue("once", 1)

    with caplog.at_level(logging.INFO):
        worker.work_off()

    [retry] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "builtins.ValueError: failure 1 of once; retrying" in retry.getMessage()


def test_a_job_whose_task_cannot_be_imported_is_logged_with_the_cause(worker, caplog):
    [job] = Job.enqueue(
        [Job(task_path="tests.nowhere.task", queue_name="default", backend="default")],
        using="default",
    )

    with caplog.at_level(logging.INFO):
        worker.work_off()

    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert f"job {job.pk} (tests.nowhere.task) failed" in record.getMessage()
    assert record.exc_info and isinstance(record.exc_info[1], ImportError)
    assert "Cannot import task 'tests.nowhere.task'" in caplog.text
