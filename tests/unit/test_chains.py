"""Chains, through an in-process worker: each step enqueued by its predecessor's
successful end with its return value, a failure stopping the chain, a retry taking it on,
and a chain inside a batch."""

import pytest

from dq.batches import batch, get_batch
from dq.chains import chain, step
from dq.models import FailedExecution, Job

from ..tasks import add, batch_finished, fails_with, flaky

pytestmark = pytest.mark.django_db


def steps_of(first):
    """The jobs of the chain ``first`` (a TaskResult) began, in step order."""
    chain_id = Job.objects.get(pk=first.id).chain["id"]
    return sorted(Job.objects.filter(chain__id=chain_id), key=lambda job: job.chain["step"])


def test_each_step_is_enqueued_once_with_the_previous_return_value_first(worker):
    first = chain(step(add, 1, 1), step(add, 10), step(add, 100))
    assert Job.objects.count() == 1  # the later steps wait for their predecessors
    worker.work_off()
    jobs = steps_of(first)
    assert [(job.args, job.return_value) for job in jobs] == [
        ([1, 1], 2),
        ([2, 10], 12),
        ([12, 100], 112),
    ]
    assert [(job.chain["step"], job.chain["steps"]) for job in jobs] == [(1, 3), (2, 3), (3, 3)]
    assert [len(job.chain["next"]) for job in jobs] == [2, 1, 0]
    assert Job.objects.count() == 3


def test_a_failure_stops_the_chain_and_every_later_step_says_so(worker):
    first = chain(step(add, 1, 1), step(fails_with), step(add, 100), step(add, 1000))
    worker.work_off()
    jobs = steps_of(first)
    assert [job.status for job in jobs] == [
        Job.Status.SUCCESSFUL,
        Job.Status.FAILED,
        Job.Status.CANCELLED,
        Job.Status.CANCELLED,
    ]
    failed, later = jobs[1], jobs[2:]
    assert failed.chain["not_run"] == [job.pk for job in later]
    assert [(job.chain["stopped_by"], job.args, job.started_at) for job in later] == [
        (failed.pk, [100], None),
        (failed.pk, [1000], None),
    ]


def test_a_cancelled_step_stops_the_chain_too(worker):
    first = chain(step(add, 1, 1), step(add, 10))
    Job.cancel(int(first.id), using="default")
    jobs = steps_of(first)
    assert [job.status for job in jobs] == [Job.Status.CANCELLED, Job.Status.CANCELLED]
    assert jobs[1].chain["stopped_by"] == jobs[0].pk


def test_a_retried_step_that_succeeds_takes_the_chain_on(worker):
    # flaky fails its three attempts; retried, its fourth succeeds and returns 4.
    first = chain(step(flaky, "retried", 3), step(add, 5))
    worker.work_off()
    stopped, not_run = steps_of(first)
    assert (stopped.status, not_run.status) == (Job.Status.FAILED, Job.Status.CANCELLED)
    assert FailedExecution.retry(stopped.pk, using="default")
    assert not Job.objects.filter(pk=not_run.pk).exists()  # pending again
    worker.work_off()
    jobs = steps_of(first)
    assert [job.status for job in jobs] == [Job.Status.SUCCESSFUL, Job.Status.SUCCESSFUL]
    assert jobs[1].args == [4, 5] and jobs[1].return_value == 9
    assert "not_run" not in jobs[0].chain


def test_a_chain_in_a_batch_is_part_of_it_to_its_last_step(worker):
    with batch(on_finish=batch_finished) as b:
        first = chain(step(add, 1, 1), step(add, 10), step(add, 100))
    info = get_batch(b.id)
    assert (info.total, info.pending) == (1, 1)
    worker.work_off(limit=2)
    info = get_batch(b.id)
    assert (info.total, info.succeeded, info.pending) == (3, 2, 1)
    assert not Job.objects.filter(task_path="tests.tasks.batch_finished").exists()
    worker.work_off()
    assert get_batch(b.id).succeeded == 3
    assert {job.batch_id for job in steps_of(first)} == {b.id}
    assert Job.objects.filter(task_path="tests.tasks.batch_finished").count() == 1


def test_a_step_that_cannot_take_the_previous_return_value_is_refused_at_once():
    with pytest.raises(TypeError, match=r"Step 2 of the chain, tests\.tasks\.add"):
        chain(step(add, 1, 1), step(add, 1, 2))
    with pytest.raises(ValueError, match=r"module-level task, or a \.using"):
        chain(step(add, 1, 1), step(add.using(max_attempts=3), 1))
    with pytest.raises(TypeError, match="is a task"):
        step(print)
    assert not Job.objects.exists()
