"""Batches, through an in-process worker: what joins a batch, how its counts follow its
jobs' ends, retries and discards, and the callbacks each enqueued once."""

import pytest
from django.db import connection
from django.tasks import TaskResultStatus
from django.test.utils import CaptureQueriesContext

from dq.batches import BatchFinished, add_to_batch, batch, get_batch
from dq.models import Batch, FailedExecution, Job

from ..models import Run
from ..tasks import (
    add,
    batch_failed,
    batch_finished,
    batch_succeeded,
    boom,
    flaky,
    grow_batch,
    record,
)

pytestmark = pytest.mark.django_db

CALLBACKS = {"on_finish": batch_finished, "on_success": batch_succeeded, "on_failure": batch_failed}


def callbacks_of(batch_id):
    """The callback jobs enqueued for ``batch_id``, as (task name, kwargs)."""
    return sorted(
        (job.task_path.rsplit(".", 1)[1], job.kwargs)
        for job in Job.objects.filter(kwargs__batch_id=batch_id)
    )


def test_the_jobs_of_a_block_are_created_as_it_exits_with_their_batch(worker):
    with batch(description="import 7") as b:
        results = [add.enqueue(n, 1) for n in range(3)]
        assert not Job.objects.exists() and not Batch.objects.exists()
        assert isinstance(b.id, str)
    assert [result.id for result in results] == [
        str(pk) for pk in Job.objects.order_by("pk").values_list("pk", flat=True)
    ]
    assert set(Job.objects.values_list("batch_id", flat=True)) == {b.id}
    info = get_batch(b.id)
    assert (info.total, info.pending, info.is_finished, info.description) == (
        3,
        3,
        False,
        "import 7",
    )
    assert [result.status for result in results] == [TaskResultStatus.READY] * 3
    worker.work_off()
    info = get_batch(b.id)
    assert (info.succeeded, info.pending, info.is_finished) == (3, 0, True)
    assert info.finished_at is not None


def test_nothing_is_enqueued_when_the_block_raises():
    with pytest.raises(ValueError), batch(on_finish=batch_finished):
        add.enqueue(1, 1)
        raise ValueError("no")
    assert not Job.objects.exists() and not Batch.objects.exists()


def test_a_block_enqueues_in_as_few_statements_as_a_bulk_enqueue():
    calls = [((n, 1), {}) for n in range(200)]
    with CaptureQueriesContext(connection) as bulk:
        add.enqueue_many(calls)
    with CaptureQueriesContext(connection) as batched, batch(on_finish=batch_finished):
        add.enqueue_many(calls)
    # Its transaction and the batch's row: whatever the number of jobs.
    assert len(batched) <= len(bulk) + 3
    assert Job.objects.filter(batch__isnull=False).count() == 200


def test_all_succeeded_enqueues_on_finish_and_on_success_once_with_the_kwargs(worker):
    with batch(**CALLBACKS, kwargs={"import_id": 7}) as b:
        add.enqueue_many([((n, 1), {}) for n in range(3)])
    worker.work_off()  # the jobs, then the callbacks
    assert callbacks_of(b.id) == [
        ("batch_finished", {"batch_id": b.id, "import_id": 7}),
        ("batch_succeeded", {"batch_id": b.id, "import_id": 7}),
    ]
    success = Job.objects.get(task_path="tests.tasks.batch_succeeded")
    assert (success.queue_name, success.priority, success.batch_id) == ("callbacks", 5, None)
    assert sorted(Run.objects.values_list("label", flat=True)) == [
        f"finish {b.id} [('import_id', 7)]",
        f"success {b.id} [('import_id', 7)]",
    ]
    assert set(get_batch(b.id).callback_jobs) == {"finish", "success"}


def test_a_failure_enqueues_on_failure_and_a_retry_that_will_run_again_is_no_end(worker):
    with batch(**CALLBACKS) as b:
        flaky.using(max_attempts=2).enqueue("batched", 1)  # fails once, then succeeds
        boom.enqueue()
    worker.work_off(limit=1)
    info = get_batch(b.id)
    # flaky's first failure is a retry, not an end.
    assert Job.objects.get(task_path="tests.tasks.flaky").attempt_count == 1
    assert (info.failed, info.succeeded, info.pending) == (0, 0, 2)
    assert callbacks_of(b.id) == []
    worker.work_off()
    info = get_batch(b.id)
    assert (info.failed, info.succeeded, info.is_finished) == (1, 1, True)
    assert [name for name, _ in callbacks_of(b.id)] == ["batch_failed", "batch_finished"]


def test_a_retry_of_a_failed_job_reopens_the_batch_and_success_is_then_announced(worker):
    with batch(**CALLBACKS) as b:
        flaky.using(max_attempts=1).enqueue("reopened", 1)
    worker.work_off()
    assert [name for name, _ in callbacks_of(b.id)] == ["batch_failed", "batch_finished"]
    job = Job.objects.get(batch_id=b.id)
    assert FailedExecution.retry(job.pk, using="default")
    info = get_batch(b.id)
    assert (info.failed, info.pending, info.is_finished) == (0, 1, False)
    worker.work_off()
    info = get_batch(b.id)
    assert (info.succeeded, info.is_finished) == (1, True)
    # on_success is due now; on_finish and on_failure were enqueued already.
    assert [name for name, _ in callbacks_of(b.id)] == [
        "batch_failed",
        "batch_finished",
        "batch_succeeded",
    ]


def test_cancelled_and_discarded_jobs_end_the_batch_without_success(worker):
    with batch(**CALLBACKS) as b:
        first, second, third = (record.enqueue(f"batch-{n}") for n in range(3))
    Job.cancel(int(first.id), using="default")
    Job.discard(int(second.id), using="default")
    info = get_batch(b.id)
    assert (info.total, info.cancelled, info.pending) == (2, 1, 1)
    worker.work_off()
    assert get_batch(b.id).is_finished
    names = [name for name, _ in callbacks_of(b.id)]
    assert names == ["batch_failed", "batch_finished"]
    assert Job.objects.get(pk=third.id).status == Job.Status.SUCCESSFUL


def test_discarding_the_last_pending_job_finishes_the_batch():
    with batch(on_finish=batch_finished) as b:
        [result] = [record.enqueue("only")]
    Job.discard(int(result.id), using="default")
    info = get_batch(b.id)
    assert (info.total, info.is_finished) == (0, True)
    assert [name for name, _ in callbacks_of(b.id)] == ["batch_finished"]


def test_an_empty_batch_finishes_at_once():
    with batch(on_success=batch_succeeded) as b:
        pass
    assert get_batch(b.id).is_finished
    assert [name for name, _ in callbacks_of(b.id)] == ["batch_succeeded"]


def test_a_running_job_grows_its_own_batch_which_ends_with_the_last_of_all(worker):
    with batch(on_finish=batch_finished) as b:
        grow_batch.enqueue(3)
    worker.work_off(limit=1)
    info = get_batch(b.id)
    assert (info.total, info.succeeded, info.pending) == (4, 1, 3)
    assert callbacks_of(b.id) == []
    worker.work_off()
    assert get_batch(b.id).succeeded == 4
    assert [name for name, _ in callbacks_of(b.id)] == ["batch_finished"]


def test_no_job_joins_a_finished_batch():
    with batch() as b:
        pass
    with pytest.raises(BatchFinished, match="has finished"), add_to_batch(b.id):
        add.enqueue(1, 1)
    assert not Job.objects.exists()


def test_a_unique_jobs_duplicate_does_not_join_the_batch():
    unique = add.using(unique=True)
    held = unique.enqueue(1, 1)
    with batch() as b:
        duplicate = unique.enqueue(1, 1)
        record.enqueue("other")
    assert duplicate.id == held.id
    assert Job.objects.get(pk=held.id).batch_id is None
    assert get_batch(b.id).total == 1


def test_pruning_takes_finished_batches_with_their_jobs_and_never_a_batchs_job_alone(worker):
    from datetime import timedelta

    from django.utils import timezone

    with batch() as finished:
        add.enqueue(1, 1)
    with batch() as open_:
        add.enqueue(2, 2)
        boom.enqueue()
    single = add.enqueue(3, 3)
    worker.work_off()
    later = timezone.now() + timedelta(seconds=1)
    Job.objects.filter(task_path="tests.tasks.add", batch_id=open_.id).update(status="ready")
    Batch.objects.filter(pk=open_.id).update(finished_at=None)  # as if still pending
    pruned = Job.prune(
        backend="default",
        finished_before=later,
        statuses=[Job.Status.SUCCESSFUL],
        batch_size=100,
        using="default",
    )
    assert pruned == 1 and not Job.objects.filter(pk=single.id).exists()
    assert Batch.prune(backend="default", finished_before=later, failed=False, using="default") == 1
    assert not Batch.objects.filter(pk=finished.id).exists()
    assert not Job.objects.filter(batch_id=finished.id).exists()
    assert Job.objects.filter(batch_id=open_.id).count() == 2


def test_a_callback_that_does_not_take_the_arguments_is_refused_at_once():
    with pytest.raises(TypeError, match="batch_id= and the batch's kwargs"):
        batch(on_finish=add)
    with pytest.raises(TypeError, match="must be a task"):
        batch(on_success=print)
    with pytest.raises(RuntimeError, match="do not nest"), batch(), batch():
        pass
