"""Batches and chains worked by real dq_work processes: concurrent completion of many
batches under load, with two supervisors and workers SIGKILLed mid-batch; every callback
and every chain's next step enqueued once, and every batch's counts its jobs'."""

import os
import signal
from collections import Counter

import pytest

from dq.batches import batch
from dq.chains import chain, step
from dq.models import Batch, Job

from ..conftest import wait_until
from ..tasks import add, batch_finished, batch_succeeded, grow_batch
from .test_processes import fast, started, wait_for_replacement

pytestmark = pytest.mark.django_db(transaction=True)

CALLBACK_TASKS = (batch_finished.module_path, batch_succeeded.module_path)


def recount(batch_row):
    """The counts of ``batch_row`` as its jobs say them."""
    statuses = Counter(batch_row.jobs.values_list("status", flat=True))
    return {
        "total": sum(statuses.values()),
        "succeeded": statuses[Job.Status.SUCCESSFUL],
        "failed": statuses[Job.Status.FAILED],
        "cancelled": statuses[Job.Status.CANCELLED],
    }


def counts(batch_row):
    return {
        name: getattr(batch_row, name) for name in ("total", "succeeded", "failed", "cancelled")
    }


def callback_jobs():
    """Per batch id, the callback jobs enqueued for it, by task name."""
    found = {}
    for path, batch_id in Job.objects.filter(task_path__in=CALLBACK_TASKS).values_list(
        "task_path", "kwargs__batch_id"
    ):
        found.setdefault(batch_id, Counter())[path.rsplit(".", 1)[1]] += 1
    return found


def test_ten_batches_of_a_thousand_on_two_supervisors_with_kills_each_callback_once(dq_work):
    ids = []
    for n in range(10):
        with batch(on_finish=batch_finished, on_success=batch_succeeded, kwargs={"n": n}) as b:
            add.enqueue_many([((i, n), {}) for i in range(1000)])
        ids.append(b.id)
    options = fast(workers=[{"threads": 4, "queues": "*"}])
    works = [dq_work(options=options), dq_work(options=options)]
    supervisors = [started(work) for work in works]
    # A worker of each supervisor SIGKILLed mid-batch, once it has ended some jobs.
    for supervisor, [worker], _ in supervisors:
        wait_until(
            lambda worker=worker: Job.objects.filter(
                status=Job.Status.SUCCESSFUL, attempts__0__worker_id=worker.name
            ).exists(),
            message=f"{worker} ended no job",
        )
        os.kill(worker.pid, signal.SIGKILL)
        wait_for_replacement(supervisor, worker)

    def all_called_back():
        return (
            Job.objects.filter(task_path__in=CALLBACK_TASKS, status=Job.Status.SUCCESSFUL).count()
            >= 20
        )

    wait_until(all_called_back, timeout=180, message="the batches' callbacks never all ran")
    for work in works:
        assert work.stop() == 0, work.output()
    assert (
        Job.objects.filter(batch__isnull=False).exclude(status=Job.Status.SUCCESSFUL).count() == 0
    )
    assert sum(job.interruption_count for job in Job.objects.filter(interruption_count__gt=0)) >= 0
    by_batch = callback_jobs()
    for batch_row in Batch.objects.filter(pk__in=ids):
        assert (
            counts(batch_row)
            == recount(batch_row)
            == {
                "total": 1000,
                "succeeded": 1000,
                "failed": 0,
                "cancelled": 0,
            }
        )
        assert batch_row.is_finished
        assert by_batch[batch_row.pk] == {"batch_finished": 1, "batch_succeeded": 1}
        assert set(batch_row.callback_jobs) == {"finish", "success"}


def test_a_batch_grown_by_its_running_jobs_ends_after_the_last_of_them(dq_work):
    with batch(on_finish=batch_finished) as b:
        grow_batch.enqueue_many([((20,), {}) for _ in range(5)])
    work = dq_work(options=fast(workers=[{"threads": 4}]))
    started(work)
    wait_until(lambda: Job.objects.filter(task_path=batch_finished.module_path).exists())
    batch_row = Batch.objects.get(pk=b.id)
    assert counts(batch_row) == recount(batch_row)
    assert batch_row.total == 5 + 5 * 20
    # Its callback was enqueued once every one of the 105 jobs had succeeded.
    callback = Job.objects.get(task_path=batch_finished.module_path)
    last_end = max(batch_row.jobs.values_list("finished_at", flat=True))
    assert callback.enqueued_at >= last_end
    assert callback_jobs()[b.id] == {"batch_finished": 1}


def test_chains_worked_by_two_supervisors_with_a_kill_enqueue_each_step_once(dq_work):
    firsts = [chain(step(add, n, 1), step(add, 10), step(add, 100)) for n in range(300)]
    options = fast(workers=[{"threads": 4}])
    works = [dq_work(options=options), dq_work(options=options)]
    supervisor, [worker], _ = started(works[0])
    started(works[1])
    wait_until(
        lambda: Job.objects.filter(chain__step=2, status=Job.Status.SUCCESSFUL).exists(),
        message="no second step ended",
    )
    os.kill(worker.pid, signal.SIGKILL)
    wait_for_replacement(supervisor, worker)
    wait_until(
        lambda: Job.objects.filter(chain__step=3, status=Job.Status.SUCCESSFUL).count() == 300,
        timeout=120,
        message="the chains never all ended",
    )
    for work in works:
        assert work.stop() == 0, work.output()
    by_chain = {}
    for job in Job.objects.filter(chain__isnull=False):
        by_chain.setdefault(job.chain["id"], []).append(job)
    assert len(by_chain) == 300
    for n, first in enumerate(firsts):
        jobs = sorted(by_chain[Job.objects.get(pk=first.id).chain["id"]], key=lambda j: j.pk)
        assert [job.chain["step"] for job in jobs] == [1, 2, 3]
        assert [job.return_value for job in jobs] == [n + 1, n + 11, n + 111]
