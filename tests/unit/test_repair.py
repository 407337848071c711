"""The transitions a person triggers: discard, run now, pause and resume."""

from datetime import timedelta

import pytest
from django.utils import timezone

from dq.exceptions import TransitionNotAllowed
from dq.models import Job, Pause, ReadyExecution, ScheduledExecution

from ..tasks import add, always_boom

pytestmark = pytest.mark.django_db


def job_of(result):
    return Job.objects.get(pk=int(result.id))


def test_discard_deletes_a_ready_or_scheduled_job_with_its_execution(db):
    ready = add.enqueue(1, 1)
    scheduled = add.using(run_after=timezone.now() + timedelta(hours=1)).enqueue(2, 2)
    for result in (ready, scheduled):
        Job.discard(int(result.id), using="default")
        assert not Job.objects.filter(pk=int(result.id)).exists()
    assert not ReadyExecution.objects.exists()
    assert not ScheduledExecution.objects.exists()


def test_discard_refuses_a_running_job_and_says_why(worker):
    result = add.enqueue(1, 1)
    worker.claim()
    with pytest.raises(TransitionNotAllowed, match="running"):
        Job.discard(int(result.id), using="default")
    assert job_of(result).status == Job.Status.RUNNING


def test_discard_of_a_failed_job(worker):
    result = always_boom.enqueue()
    worker.work_off()
    assert job_of(result).status == Job.Status.FAILED
    Job.discard(int(result.id), using="default")
    assert not Job.objects.filter(pk=int(result.id)).exists()


def test_discard_refuses_a_finished_job(worker):
    result = add.enqueue(1, 1)
    worker.work_off()
    with pytest.raises(TransitionNotAllowed, match="finished"):
        Job.discard(int(result.id), using="default")


def test_run_now_makes_a_scheduled_job_ready(worker):
    result = add.using(run_after=timezone.now() + timedelta(hours=1)).enqueue(2, 3)
    assert worker.work_off() == []
    assert ScheduledExecution.run_now(int(result.id), using="default") is True
    assert ScheduledExecution.run_now(int(result.id), using="default") is False
    assert len(worker.work_off()) == 1
    result.refresh()
    assert result.return_value == 5


def test_pause_and_resume_a_queue(worker):
    result = add.using(queue_name="reports").enqueue(1, 2)
    Pause.pause("reports", using="default")
    Pause.pause("reports", using="default")
    assert worker.work_off() == []
    Pause.resume("reports", using="default")
    assert [job.pk for job in worker.work_off()] == [int(result.id)]
