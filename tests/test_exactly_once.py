"""delivery="exactly_once": the task's writes and the job's completion commit together."""

import pytest

from dq.exceptions import ProcessExitError
from dq.models import ClaimedExecution, Job

from .models import Run
from .tasks import record_exactly_once, write_elsewhere

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
