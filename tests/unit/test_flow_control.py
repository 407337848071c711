"""Flow control in one process: concurrency limits, unique jobs, cancellation, pruning, and
the checks of recurring tasks. Races between processes are in test_flow_control_processes."""

import math
import zoneinfo
from dataclasses import replace
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.tasks import TaskResultStatus, default_task_backend, task_backends
from django.tasks.checks import check_tasks
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
from django.tasks.signals import task_enqueued
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from dq import conf
from dq.exceptions import ProcessExitError, TransitionNotAllowed
from dq.models import (
    BlockedExecution,
    ClaimedExecution,
    FailedExecution,
    Job,
    Process,
    ReadyExecution,
    RecurringExecution,
    RecurringTask,
    ScheduledExecution,
    Semaphore,
)
from dq.processes.dispatcher import Dispatcher
from dq.processes.scheduler import Scheduler

from ..flow_tasks import (
    also_per_account,
    keyed_by_bad_callable,
    keyed_by_callable,
    keyed_with_context,
    notify_user,
    per_account,
    per_account_flaky,
    per_account_flaky_backoff,
    per_account_may_fail,
    per_account_or_drop,
    per_bucket,
    report_cancel_requested,
    sync_user,
    unique_boom,
    unique_for_a_minute,
    unique_per_account,
    unique_record,
)
from ..models import Run
from ..tasks import add, always_boom, boom

pytestmark = pytest.mark.django_db


def job_of(result):
    return Job.objects.get(pk=int(result.id))


def status(result):
    return job_of(result).status


def executions(result):
    """The names of the execution tables that hold the job."""
    return [
        name
        for name, model in (
            ("ready", ReadyExecution),
            ("scheduled", ScheduledExecution),
            ("blocked", BlockedExecution),
            ("claimed", ClaimedExecution),
            ("failed", FailedExecution),
        )
        if model.objects.filter(job_id=int(result.id)).exists()
    ]


def free_slots(key):
    return Semaphore.objects.get(key=key).value


def claim_only(worker, result):
    """Claim ``result``'s job, the only ready one: it is running until run_claimed()."""
    jobs = worker.claim()
    assert [job.pk for job in jobs] == [int(result.id)]
    return jobs[0]


def run_claimed(worker, job):
    worker.perform(job)


def make_due(result):
    past = timezone.now() - timedelta(seconds=1)
    ScheduledExecution.objects.filter(job_id=int(result.id)).update(scheduled_at=past)
    ScheduledExecution.dispatch_due(100, using="default")


def interrupt(result):
    return ClaimedExecution.interrupt(
        ClaimedExecution.objects.filter(job_id=int(result.id)),
        ProcessExitError,
        "worker exited",
        using="default",
    )


def labels(jobs):
    return [job.kwargs.get("label", job.args[1] if len(job.args) > 1 else None) for job in jobs]


@pytest.fixture
def enqueued_signals():
    """The ids of the TaskResults task_enqueued was sent for, in order."""
    received = []

    def receiver(sender, task_result, **kwargs):
        received.append(task_result.id)

    task_enqueued.connect(receiver)
    yield received
    task_enqueued.disconnect(receiver)


# --- concurrency keys ------------------------------------------------------------------


def test_a_key_template_renders_from_the_arguments_by_name():
    positional = per_account.enqueue(7, "a")
    by_name = per_account.enqueue(label="b", account_id=8)
    with_context = keyed_with_context.enqueue(5)

    assert job_of(positional).concurrency_key == "account-7"
    assert job_of(by_name).concurrency_key == "account-8"
    assert job_of(with_context).concurrency_key == "user-5"  # the context is not an argument
    assert job_of(positional).concurrency_limit == 1
    assert job_of(positional).concurrency_duration == conf.DEFAULT_CONCURRENCY_DURATION


def test_a_key_callable_is_called_with_the_arguments():
    default_region = keyed_by_callable.enqueue({"customer": 3})
    other_region = keyed_by_callable.enqueue({"customer": 3}, region="us")

    assert job_of(default_region).concurrency_key == "eu-3"
    assert job_of(other_region).concurrency_key == "us-3"
    assert status(default_region) == status(other_region) == Job.Status.READY


def test_a_job_without_a_key_has_no_limit():
    results = [add.enqueue(1, 1) for _ in range(3)]
    assert {status(r) for r in results} == {Job.Status.READY}
    assert job_of(results[0]).concurrency_key == ""
    assert not Semaphore.objects.exists()


def test_a_template_naming_a_missing_argument_is_invalid_at_enqueue():
    typo = per_account.using(concurrency_key="account-{acount_id}")

    with pytest.raises(InvalidTask, match=r"acount_id.*account_id, label"):
        typo.enqueue(1)
    assert not Job.objects.exists()


def test_a_key_that_is_not_a_string_is_invalid_at_enqueue():
    with pytest.raises(InvalidTask, match="string of 1 to 200 characters"):
        keyed_by_bad_callable.enqueue(5)
    with pytest.raises(InvalidTask, match="string of 1 to 200 characters"):
        per_account.using(concurrency_key="{label}").enqueue(1, "")
    assert not Job.objects.exists()


def test_arguments_that_do_not_fit_the_task_are_refused_at_enqueue():
    with pytest.raises(TypeError, match="do not fit"):
        per_account.enqueue(1, "a", "too many")
    assert not Job.objects.exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"concurrency_key": ""}, "concurrency_key must be"),
        ({"concurrency_limit": 0}, "concurrency_limit must be"),
        ({"concurrency_limit": True}, "concurrency_limit must be"),
        ({"concurrency_duration": 0}, "concurrency_duration must be"),
        ({"concurrency_duration": None}, "concurrency_duration must be a number of seconds"),
        ({"on_conflict": "wait"}, "on_conflict must be"),
        ({"unique_key": ""}, "unique_key must be"),
        ({"unique_for": -1}, "unique_for must be"),
    ],
)
def test_bad_flow_control_options_are_invalid_at_enqueue(options, message):
    with pytest.raises(InvalidTask, match=message):
        per_account.using(**options).enqueue(1)
    assert not Job.objects.exists()


# --- limit 1: blocking and release -----------------------------------------------------


def test_with_limit_one_the_second_job_of_a_key_is_blocked():
    first = per_account.enqueue(1, "first")
    second = per_account.enqueue(1, "second")
    other_key = per_account.enqueue(2, "other")

    assert (status(first), executions(first)) == (Job.Status.READY, ["ready"])
    assert (status(second), executions(second)) == (Job.Status.BLOCKED, ["blocked"])
    assert status(other_key) == Job.Status.READY
    # Blocked is "not started yet" for django.tasks.
    assert second.status == TaskResultStatus.READY
    assert per_account.get_result(second.id).status == TaskResultStatus.READY
    assert free_slots("account-1") == 0
    assert BlockedExecution.objects.get(job_id=int(second.id)).concurrency_key == "account-1"


def test_a_blocked_job_is_not_claimed(worker):
    first = per_account.enqueue(1, "first")
    per_account.enqueue(1, "second")

    assert [job.pk for job in worker.claim()] == [int(first.id)]
    assert worker.claim() == []


def test_the_blocked_job_is_released_when_the_first_finishes(worker):
    first = per_account.enqueue(1, "first")
    second = per_account.enqueue(1, "second")

    assert labels(worker.work_off()) == ["first", "second"]
    assert status(first) == status(second) == Job.Status.SUCCESSFUL
    assert free_slots("account-1") == 1


def test_the_blocked_job_is_released_when_the_first_fails(worker):
    first = per_account_may_fail.using(max_attempts=1).enqueue(1, "first", fail=True)
    second = per_account_may_fail.enqueue(1, "second")
    job = claim_only(worker, first)
    assert status(second) == Job.Status.BLOCKED

    run_claimed(worker, job)

    assert status(first) == Job.Status.FAILED
    assert (status(second), executions(second)) == (Job.Status.READY, ["ready"])
    assert free_slots("account-1") == 0


def test_the_blocked_job_is_released_when_the_first_is_interrupted(worker):
    first = per_account.enqueue(1, "first")
    second = per_account.enqueue(1, "second")
    claim_only(worker, first)

    assert interrupt(first) == 1

    assert (status(second), executions(second)) == (Job.Status.READY, ["ready"])
    # The interrupted job runs again (at_least_once), after the one that took its slot.
    assert (status(first), executions(first)) == (Job.Status.BLOCKED, ["blocked"])
    assert labels(worker.work_off()) == ["second", "first"]
    assert status(first) == Job.Status.SUCCESSFUL
    assert free_slots("account-1") == 1


@pytest.mark.parametrize("how", ["discard", "cancel"])
def test_the_blocked_job_is_released_when_a_ready_one_is_discarded_or_cancelled(how):
    first = per_account.enqueue(1, "first")
    second = per_account.enqueue(1, "second")

    if how == "discard":
        Job.discard(int(first.id), using="default")
        assert not Job.objects.filter(pk=int(first.id)).exists()
    else:
        default_task_backend.cancel(first.id)
        assert status(first) == Job.Status.CANCELLED

    assert (status(second), executions(second)) == (Job.Status.READY, ["ready"])
    assert free_slots("account-1") == 0


def test_discarding_or_cancelling_a_blocked_job_keeps_the_slot_with_its_holder():
    first = per_account.enqueue(1, "first")
    second = per_account.enqueue(1, "second")
    third = per_account.enqueue(1, "third")

    Job.discard(int(second.id), using="default")
    default_task_backend.cancel(third.id)

    assert status(first) == Job.Status.READY
    assert free_slots("account-1") == 0
    assert not BlockedExecution.objects.exists()


def semaphore_keys_locked(queries):
    """The keys of the semaphore rows ``queries`` changed, in the order they changed them."""
    keys = []
    for query in queries:
        sql = query["sql"]
        if sql.startswith("UPDATE") and "dq_semaphore" in sql.split("SET")[0]:
            keys.extend(key for key in ("account-1", "account-2") if f"'{key}'" in sql)
    return keys


@pytest.mark.parametrize("end", ["finish", "interrupt"])
def test_runs_ending_together_give_back_their_slots_in_key_order(worker, end):
    """Every transaction that gives back (or retakes) the slots of several keys does so in
    key order, as enqueue takes them: two such transactions never wait for each other's
    semaphores (a deadlock PostgreSQL would break by failing one of them)."""
    per_account.enqueue(2, "claimed first")
    per_account.enqueue(1, "claimed second")
    jobs = worker.claim()
    assert [job.concurrency_key for job in jobs] == ["account-2", "account-1"]

    with CaptureQueriesContext(connection) as queries:
        if end == "finish":
            for job in jobs:
                job.return_value = None
            ClaimedExecution.flush(
                starts=[], ends=jobs, claim=None, worker_id=worker.process.name, using="default"
            )
        else:
            ClaimedExecution.interrupt(
                ClaimedExecution.objects.all(), ProcessExitError, "worker exited", using="default"
            )

    keys = semaphore_keys_locked(queries.captured_queries)
    assert keys and keys == sorted(keys), keys


def test_blocked_jobs_are_released_by_priority_then_in_enqueue_order(worker):
    per_account.enqueue(1, "holder")
    for label, priority in [("a", 0), ("b", 10), ("c", 0), ("d", 10), ("e", 5), ("f", -3)]:
        per_account.using(priority=priority).enqueue(1, label)
    assert Job.objects.filter(status=Job.Status.BLOCKED).count() == 6

    assert labels(worker.work_off()) == ["holder", "b", "d", "e", "a", "c", "f"]


def test_tasks_whose_keys_render_the_same_share_the_slots(worker):
    first = per_account.enqueue(1, "first")
    second = also_per_account.enqueue(1, "second")

    assert status(second) == Job.Status.BLOCKED
    assert labels(worker.work_off()) == ["first", "second"]
    assert status(first) == status(second) == Job.Status.SUCCESSFUL


# --- limit N ---------------------------------------------------------------------------


def test_with_limit_n_n_jobs_hold_slots_and_the_rest_are_blocked(worker):
    results = [per_bucket.enqueue("x", f"j{i}") for i in range(5)]

    assert [status(r) for r in results] == [Job.Status.READY] * 2 + [Job.Status.BLOCKED] * 3
    assert free_slots("bucket-x") == 0

    # Both ready ones run at once; ending one lets exactly one more in.
    running = worker.claim()
    assert [job.pk for job in running] == [int(r.id) for r in results[:2]]
    run_claimed(worker, running[0])
    assert [status(r) for r in results[2:]] == [
        Job.Status.READY,
        Job.Status.BLOCKED,
        Job.Status.BLOCKED,
    ]
    assert free_slots("bucket-x") == 0

    run_claimed(worker, running[1])
    worker.work_off()
    assert {status(r) for r in results} == {Job.Status.SUCCESSFUL}
    assert free_slots("bucket-x") == 2


def test_enqueue_many_admits_up_to_the_limit_and_blocks_the_rest():
    results = per_bucket.enqueue_many([(("y", f"j{i}"), {}) for i in range(4)])

    assert [status(r) for r in results] == [Job.Status.READY] * 2 + [Job.Status.BLOCKED] * 2


# --- on_conflict="discard" ---------------------------------------------------------------


def test_on_conflict_discard_cancels_the_conflicting_job(worker, enqueued_signals):
    first = per_account_or_drop.enqueue(1, "first")
    second = per_account_or_drop.enqueue(1, "second")

    assert second.status == TaskResultStatus.FAILED
    job = job_of(second)
    assert job.status == Job.Status.CANCELLED
    assert job.finished_at is not None
    assert executions(second) == []
    assert per_account_or_drop.get_result(second.id).status == TaskResultStatus.FAILED
    assert enqueued_signals == [first.id, second.id]

    assert labels(worker.work_off()) == ["first"]
    assert free_slots("account-1") == 1
    # With the slot free again, the next one is admitted.
    assert per_account_or_drop.enqueue(1, "third").status == TaskResultStatus.READY


# --- retries ---------------------------------------------------------------------------


def test_a_retry_without_backoff_gives_back_and_retakes_the_slot(worker):
    result = per_account_flaky.enqueue(1, "flaky", fail_times=1)
    [job] = worker.claim()

    run_claimed(worker, job)

    assert (status(result), executions(result)) == (Job.Status.READY, ["ready"])
    assert free_slots("account-1") == 0
    worker.work_off()
    assert status(result) == Job.Status.SUCCESSFUL
    assert free_slots("account-1") == 1


def test_a_retry_without_backoff_queues_behind_a_blocked_job(worker):
    flaky = per_account_flaky.enqueue(1, "flaky", fail_times=1)
    waiting = per_account.enqueue(1, "waiting")

    done = worker.work_off()

    # The failed attempt freed the slot for the waiting job; the retry waited its turn.
    assert [job.pk for job in done] == [int(flaky.id), int(waiting.id), int(flaky.id)]
    assert status(flaky) == status(waiting) == Job.Status.SUCCESSFUL
    assert free_slots("account-1") == 1


def test_a_retry_with_backoff_frees_the_slot_until_it_is_due(worker):
    flaky = per_account_flaky_backoff.enqueue(1, "flaky", fail_times=1)
    worker.work_off()
    assert (status(flaky), executions(flaky)) == (Job.Status.SCHEDULED, ["scheduled"])
    assert free_slots("account-1") == 1

    # Meanwhile another job of the key takes the slot; the due retry then waits for it.
    other = per_account.enqueue(1, "other")
    assert status(other) == Job.Status.READY
    make_due(flaky)
    assert (status(flaky), executions(flaky)) == (Job.Status.BLOCKED, ["blocked"])

    assert [job.pk for job in worker.work_off()] == [int(other.id), int(flaky.id)]
    assert status(flaky) == Job.Status.SUCCESSFUL
    assert free_slots("account-1") == 1


def test_a_due_retry_retakes_a_free_slot(worker):
    flaky = per_account_flaky_backoff.enqueue(1, "flaky", fail_times=1)
    worker.work_off()

    make_due(flaky)

    assert (status(flaky), executions(flaky)) == (Job.Status.READY, ["ready"])
    assert free_slots("account-1") == 0


def test_a_deferred_job_takes_its_slot_when_it_becomes_due():
    later = per_account.using(run_after=timezone.now() + timedelta(hours=1)).enqueue(1, "later")
    now = per_account.enqueue(1, "now")
    assert status(later) == Job.Status.SCHEDULED
    assert status(now) == Job.Status.READY  # a scheduled job holds no slot

    make_due(later)

    assert status(later) == Job.Status.BLOCKED


# --- expired semaphores ----------------------------------------------------------------


def expire(key):
    Semaphore.objects.filter(key=key).update(expires_at=timezone.now() - timedelta(seconds=1))


def test_a_slot_whose_holder_vanished_is_reclaimed_once_the_semaphore_expires(worker):
    holder = per_account.enqueue(1, "holder")
    waiting = per_account.enqueue(1, "waiting")
    claim_only(worker, holder)
    # The holder's rows vanish without releasing the slot (as if deleted by hand).
    Job.objects.filter(pk=int(holder.id)).delete()
    assert free_slots("account-1") == 0

    assert BlockedExecution.reclaim_expired_slots(using="default") == 0  # not expired yet
    assert status(waiting) == Job.Status.BLOCKED

    expire("account-1")
    assert BlockedExecution.reclaim_expired_slots(using="default") == 1

    assert (status(waiting), executions(waiting)) == (Job.Status.READY, ["ready"])
    semaphore = Semaphore.objects.get(key="account-1")
    assert semaphore.value == 0  # now held by the released job
    assert semaphore.expires_at > timezone.now()
    assert labels(worker.work_off()) == ["waiting"]
    assert free_slots("account-1") == 1


def test_an_expired_semaphore_keeps_the_slots_of_jobs_still_running(worker):
    holder = per_account.enqueue(1, "holder")
    waiting = per_account.enqueue(1, "waiting")
    job = claim_only(worker, holder)
    expire("account-1")

    assert BlockedExecution.reclaim_expired_slots(using="default") == 0

    assert status(waiting) == Job.Status.BLOCKED
    assert free_slots("account-1") == 0
    run_claimed(worker, job)
    assert status(waiting) == Job.Status.READY


def test_an_expired_semaphore_nobody_uses_is_deleted(worker):
    per_account.enqueue(1, "only")
    worker.work_off()
    expire("account-1")

    BlockedExecution.reclaim_expired_slots(using="default")

    assert not Semaphore.objects.exists()


def test_the_dispatchers_maintenance_reclaims_expired_slots():
    holder = per_account.enqueue(1, "holder")
    waiting = per_account.enqueue(1, "waiting")
    Job.objects.filter(pk=int(holder.id)).delete()
    expire("account-1")

    dispatcher(conf.load("default")).maintain()

    assert status(waiting) == Job.Status.READY


# --- unique jobs -----------------------------------------------------------------------


def holding_the_slot():
    """Take account 1's only slot, so that the next job of that key is blocked."""
    return unique_per_account.enqueue(1, "holder")


@pytest.mark.parametrize("state", ["ready", "scheduled", "blocked", "running"])
def test_a_unique_job_is_returned_again_while_it_has_not_finished(state, worker, enqueued_signals):
    if state == "scheduled":
        in_an_hour = timezone.now() + timedelta(hours=1)
        first = unique_per_account.using(run_after=in_an_hour).enqueue(2, "a")
    elif state == "blocked":
        holding_the_slot()
        first = unique_per_account.enqueue(1, "a")
    else:
        first = unique_per_account.enqueue(2, "a")
    if state == "running":
        claim_only(worker, first)
    assert status(first) == state
    jobs_before = Job.objects.count()
    enqueued_signals.clear()

    again = unique_per_account.enqueue(*job_of(first).args)

    assert again.id == first.id
    assert again.status == unique_per_account.get_result(first.id).status
    assert Job.objects.count() == jobs_before
    assert enqueued_signals == []
    # Other arguments are another job.
    other = unique_per_account.enqueue(3, "b")
    assert other.id != first.id
    assert enqueued_signals == [other.id]


@pytest.mark.parametrize("ending", ["success", "failure", "cancel"])
def test_a_unique_job_can_be_enqueued_again_once_the_first_has_ended(ending, worker):
    task = unique_boom if ending == "failure" else unique_record
    first = task.enqueue("a")
    if ending == "cancel":
        default_task_backend.cancel(first.id)
    else:
        worker.work_off()
    assert job_of(first).status == {"success": "successful", "failure": "failed"}.get(
        ending, "cancelled"
    )
    assert job_of(first).unique_key is None

    second = task.enqueue("a")

    assert second.id != first.id
    assert status(second) == Job.Status.READY


def test_unique_arguments_are_compared_as_stored():
    first = unique_record.enqueue(label="a")
    assert unique_record.enqueue(label="a").id == first.id
    # The same value passed by position is another call as stored (args vs kwargs).
    assert unique_record.enqueue("a").id != first.id


def test_unique_key_template_is_rendered_from_the_arguments():
    first = sync_user.enqueue(1, "signup")
    same_user = sync_user.enqueue(1, reason="profile change")
    other_user = sync_user.enqueue(2, "signup")

    assert same_user.id == first.id
    assert other_user.id != first.id
    assert job_of(first).unique_key == "tests.flow_tasks.sync_user:user-1"
    assert Job.objects.count() == 2


def test_unique_keys_are_per_task():
    synced = sync_user.enqueue(1)
    notified = notify_user.enqueue(1)

    assert synced.id != notified.id
    assert job_of(notified).unique_key == "tests.flow_tasks.notify_user:user-1"


def test_enqueue_many_with_duplicates_inserts_each_key_once(enqueued_signals):
    results = unique_record.enqueue_many([(("a",), {}), (("a",), {}), (("b",), {})])

    assert results[0].id == results[1].id != results[2].id
    assert Job.objects.count() == 2
    assert enqueued_signals == [results[0].id, results[2].id]


def test_unique_for_keeps_the_key_for_that_long_after_finishing(worker):
    first = unique_for_a_minute.enqueue("a")
    worker.work_off()
    assert status(first) == Job.Status.SUCCESSFUL

    within = unique_for_a_minute.enqueue("a")
    assert within.id == first.id
    assert within.status == TaskResultStatus.SUCCESSFUL
    assert Job.objects.count() == 1

    Job.objects.filter(pk=int(first.id)).update(finished_at=timezone.now() - timedelta(seconds=61))
    after = unique_for_a_minute.enqueue("a")

    assert after.id != first.id
    assert status(after) == Job.Status.READY
    assert job_of(first).unique_key is None
    assert job_of(after).unique_key is not None


def test_a_cancelled_running_unique_job_still_holds_its_key(worker):
    first = unique_record.enqueue("a")
    claim_only(worker, first)

    default_task_backend.cancel(first.id)  # only a request: the run goes on

    assert unique_record.enqueue("a").id == first.id


# --- cancellation ----------------------------------------------------------------------


@pytest.mark.parametrize("state", ["ready", "scheduled", "blocked"])
def test_a_job_that_has_not_started_is_cancelled(state, worker):
    holder = per_account.enqueue(1, "holder")
    if state == "scheduled":
        task = per_account.using(run_after=timezone.now() + timedelta(hours=1))
        result = task.enqueue(2, "target")
    elif state == "blocked":
        result = per_account.enqueue(1, "target")
    else:
        result = per_account.enqueue(2, "target")
    assert status(result) == state

    cancelled = default_task_backend.cancel(result.id)

    assert cancelled.id == result.id
    assert cancelled.status == TaskResultStatus.FAILED
    assert cancelled.finished_at is not None
    assert per_account.get_result(result.id).status == TaskResultStatus.FAILED
    job = job_of(result)
    assert job.status == Job.Status.CANCELLED
    assert executions(result) == []
    # It never runs; the slot of its key is free again (ready) or was never taken.
    assert [job.pk for job in worker.work_off()] == [int(holder.id)]
    assert not Run.objects.filter(label="target").exists()
    assert free_slots("account-1") == 1
    if state == "ready":
        assert free_slots("account-2") == 1


def test_cancel_through_task_backends_is_the_same_api():
    result = per_account.enqueue(1, "a")

    assert task_backends["default"].cancel(result.id).status == TaskResultStatus.FAILED
    assert status(result) == Job.Status.CANCELLED


def test_cancelling_a_ready_job_releases_its_slot_to_the_next_blocked_one():
    first = per_account.enqueue(1, "first")
    second = per_account.enqueue(1, "second")

    default_task_backend.cancel(first.id)

    assert status(second) == Job.Status.READY
    assert free_slots("account-1") == 0


def test_cancelling_a_running_job_requests_it_and_the_task_sees_it(worker):
    asked = report_cancel_requested.enqueue()
    not_asked = report_cancel_requested.enqueue()
    jobs = worker.claim()
    assert len(jobs) == 2

    result = default_task_backend.cancel(asked.id)

    assert result.status == TaskResultStatus.RUNNING
    assert job_of(asked).status == Job.Status.RUNNING
    assert job_of(asked).cancel_requested_at is not None
    assert job_of(not_asked).cancel_requested_at is None
    for job in jobs:
        run_claimed(worker, job)
    asked.refresh()
    not_asked.refresh()
    # The task decides what a request means; this one only reports it and succeeds.
    assert (asked.status, asked.return_value) == (TaskResultStatus.SUCCESSFUL, True)
    assert (not_asked.status, not_asked.return_value) == (TaskResultStatus.SUCCESSFUL, False)


@pytest.mark.parametrize("ending", ["successful", "failed", "cancelled"])
def test_a_finished_job_cannot_be_cancelled(ending, worker):
    result = boom.enqueue() if ending == "failed" else add.enqueue(1, 2)
    if ending == "cancelled":
        default_task_backend.cancel(result.id)
    else:
        worker.work_off()
    assert status(result) == ending

    with pytest.raises(TransitionNotAllowed, match="has finished"):
        default_task_backend.cancel(result.id)
    assert status(result) == ending


def test_cancelling_an_unknown_job_raises_result_does_not_exist():
    with pytest.raises(TaskResultDoesNotExist):
        default_task_backend.cancel("123456")
    with pytest.raises(TaskResultDoesNotExist):
        default_task_backend.cancel("not a number")


# --- pruning ---------------------------------------------------------------------------


def finished(task, *args, status, ago):
    """A job of ``task`` that ended ``ago`` (a timedelta) in ``status``."""
    result = task.enqueue(*args)
    job = job_of(result)
    execution = Job.execution_model(job.status)
    execution.objects.filter(job=job).delete()
    job.status, job.finished_at = status, timezone.now() - ago
    job.save()
    if status == Job.Status.FAILED:
        FailedExecution.objects.create(
            job=job, exception_class_path="x.Error", failed_at=job.finished_at
        )
    return job.pk


def remaining(ids):
    return set(Job.objects.filter(pk__in=ids).values_list("pk", flat=True))


def dispatcher(config):
    return Dispatcher(config, supervisor_pid=0, supervisor_id=None)


def test_prune_deletes_old_successful_and_cancelled_jobs_in_batches():
    day = timedelta(days=1)
    old = [finished(add, 1, i, status=Job.Status.SUCCESSFUL, ago=2 * day) for i in range(3)] + [
        finished(add, 2, i, status=Job.Status.CANCELLED, ago=2 * day) for i in range(2)
    ]
    young = finished(add, 3, 0, status=Job.Status.SUCCESSFUL, ago=timedelta(hours=1))
    failed = finished(add, 4, 0, status=Job.Status.FAILED, ago=2 * day)
    ready = int(add.enqueue(5, 0).id)

    with CaptureQueriesContext(connection) as queries:
        pruned = Job.prune(
            backend="default",
            finished_before=timezone.now() - day,
            statuses=[Job.Status.SUCCESSFUL, Job.Status.CANCELLED],
            batch_size=2,
            using="default",
        )

    assert pruned == 5
    assert remaining([*old, young, failed, ready]) == {young, failed, ready}
    delete_jobs = f"DELETE FROM {connection.ops.quote_name('dq_job')}"
    job_deletes = [q for q in queries if q["sql"].startswith(delete_jobs)]
    assert len(job_deletes) == math.ceil(5 / 2)  # one statement (and transaction) per batch


def test_the_dispatcher_prunes_finished_jobs_after_keep_finished_and_keeps_failed_ones():
    config = replace(conf.load("default"), keep_finished=3600, keep_failed=None)
    old_success = finished(add, 1, 0, status=Job.Status.SUCCESSFUL, ago=timedelta(hours=2))
    old_cancel = finished(add, 1, 1, status=Job.Status.CANCELLED, ago=timedelta(hours=2))
    young = finished(add, 1, 2, status=Job.Status.SUCCESSFUL, ago=timedelta(minutes=50))
    old_failure = finished(add, 1, 3, status=Job.Status.FAILED, ago=timedelta(days=30))

    dispatcher(config).maintain()

    assert remaining([old_success, old_cancel, young, old_failure]) == {young, old_failure}
    assert FailedExecution.objects.filter(job_id=old_failure).exists()


def test_the_dispatcher_prunes_failed_jobs_after_keep_failed():
    config = replace(conf.load("default"), keep_finished=None, keep_failed=3600)
    old_failure = finished(add, 1, 0, status=Job.Status.FAILED, ago=timedelta(hours=2))
    young_failure = finished(add, 1, 1, status=Job.Status.FAILED, ago=timedelta(minutes=5))
    old_success = finished(add, 1, 2, status=Job.Status.SUCCESSFUL, ago=timedelta(days=30))

    dispatcher(config).maintain()

    assert remaining([old_failure, young_failure, old_success]) == {young_failure, old_success}
    assert not FailedExecution.objects.filter(job_id=old_failure).exists()


def test_by_default_finished_jobs_are_kept_a_day_and_failed_ones_forever():
    config = conf.load("default")
    assert (config.keep_finished, config.keep_failed) == (24 * 3600, None)
    older = finished(add, 1, 0, status=Job.Status.SUCCESSFUL, ago=timedelta(hours=25))
    younger = finished(add, 1, 1, status=Job.Status.SUCCESSFUL, ago=timedelta(hours=23))
    failure = finished(add, 1, 2, status=Job.Status.FAILED, ago=timedelta(days=365))

    dispatcher(config).maintain()

    assert remaining([older, younger, failure]) == {younger, failure}


def test_pruning_a_unique_for_job_frees_its_key(worker):
    first = unique_for_a_minute.enqueue("a")
    worker.work_off()
    Job.objects.filter(pk=int(first.id)).update(finished_at=timezone.now() - timedelta(days=2))

    dispatcher(conf.load("default")).maintain()

    assert not Job.objects.filter(pk=int(first.id)).exists()
    assert unique_for_a_minute.enqueue("a").id != first.id


# --- the scheduler, in process ----------------------------------------------------------


def scheduler(recurring, backend="default"):
    """A registered Scheduler for these recurring entries, as dq_work would fork it."""
    config, problems = conf.parse(backend, {"recurring": recurring})
    assert problems == []
    role = Scheduler(config, supervisor_pid=0, supervisor_id=None)
    role.process = Process.register(Process.Kind.SCHEDULER, using="default")
    return role


BERLIN_MORNING = {
    "task": "tests.tasks.record",
    "schedule": "0 9 * * *",
    "timezone": "Europe/Berlin",
    "args": ["morning"],
    "queue_name": "cron",
    "priority": 7,
    "description": "Nine o'clock in Berlin",
}


def test_the_scheduler_records_the_configured_tasks_and_forgets_removed_ones():
    RecurringTask.objects.create(
        key="gone", backend="default", task_path="x.y", schedule="* * * * *"
    )
    RecurringTask.objects.create(
        key="other", backend="other", task_path="x.y", schedule="* * * * *"
    )
    every_minute = {"task": "tests.tasks.add", "schedule": "* * * * *", "args": [1, 2]}

    scheduler({"morning": BERLIN_MORNING, "minute": every_minute}).start()

    tasks = {task.key: task for task in RecurringTask.objects.all()}
    assert set(tasks) == {"morning", "minute", "other"}
    morning = tasks["morning"]
    assert (morning.task_path, morning.schedule, morning.timezone) == (
        "tests.tasks.record",
        "0 9 * * *",
        "Europe/Berlin",
    )
    assert (morning.args, morning.queue_name, morning.priority) == (["morning"], "cron", 7)
    assert morning.description == "Nine o'clock in Berlin"
    assert tasks["minute"].timezone == settings.TIME_ZONE  # the default
    assert morning.last_run_at is None


def test_the_scheduler_reads_the_schedule_in_its_time_zone_and_enqueues_each_run_once():
    first, second = scheduler({"morning": BERLIN_MORNING}), scheduler({"morning": BERLIN_MORNING})
    for role in (first, second):
        role.start()
        role.started_at = timezone.now() - timedelta(days=2)  # up since before the last run

    assert 0 < first.poll() <= 60
    second.poll()
    first.poll()

    [execution] = RecurringExecution.objects.all()
    local = execution.run_at.astimezone(zoneinfo.ZoneInfo("Europe/Berlin"))
    assert (local.hour, local.minute) == (9, 0)  # 7:00 or 8:00 UTC, as the season says
    assert execution.run_at <= timezone.now() < execution.run_at + timedelta(days=1)
    job = Job.objects.get()
    assert execution.job_id == job.pk
    assert (job.task_path, job.args, job.queue_name, job.priority) == (
        "tests.tasks.record",
        ["morning"],
        "cron",
        7,
    )
    assert RecurringTask.objects.get(key="morning").last_run_at == execution.run_at


def test_a_run_that_came_due_before_the_scheduler_started_is_not_made_up():
    role = scheduler({"morning": BERLIN_MORNING})
    role.start()

    role.poll()

    assert not RecurringExecution.objects.exists()
    assert not Job.objects.exists()


# --- checks of recurring tasks ---------------------------------------------------------


DQ = "dq.backend.DQBackend"


def recurring_messages(entry):
    """The dq check messages for one recurring task, as (id, message); check_tasks() is
    what ``manage.py check`` runs for task backends."""
    options = {"recurring": {"nightly": entry}}
    with override_settings(TASKS={"default": {"BACKEND": DQ, "QUEUES": [], "OPTIONS": options}}):
        return [(m.id, m.msg) for m in check_tasks() if m.id.startswith("dq.")]


def test_a_valid_recurring_task_passes_the_checks():
    entry = {
        "task": "tests.tasks.record",
        "schedule": "30 3 * * 1-5",
        "args": ["nightly"],
        "kwargs": {},
        "queue_name": "maintenance",
        "priority": 5,
        "description": "Nightly clean-up",
        "timezone": "Europe/Berlin",
    }
    assert recurring_messages(entry) == []
    assert recurring_messages({"task": "tests.tasks.add", "schedule": "@hourly"}) == []


@pytest.mark.parametrize(
    "schedule", ["61 * * * *", "every minute", "* * *", "", "*/5 * * * * *", "0 0 1 1 * 2030"]
)
def test_a_bad_schedule_is_e006(schedule):
    messages = recurring_messages({"task": "tests.tasks.record", "schedule": schedule})
    assert [message_id for message_id, _ in messages] == ["dq.E006"]
    assert "not a valid cron expression" in messages[0][1]


def test_an_unknown_timezone_is_e006():
    entry = {"task": "tests.tasks.record", "schedule": "* * * * *", "timezone": "Mars/Olympus"}
    messages = recurring_messages(entry)
    assert [message_id for message_id, _ in messages] == ["dq.E006"]
    assert "Mars/Olympus" in messages[0][1]


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("tests.tasks.no_such_task", "Cannot import task"),
        ("no_such_module.task", "Cannot import task"),
        ("tests.tasks.wait_for", "is not a task"),
    ],
)
def test_an_unimportable_recurring_task_is_e007(path, needle):
    messages = recurring_messages({"task": path, "schedule": "* * * * *"})
    assert [message_id for message_id, _ in messages] == ["dq.E007"]
    assert needle in messages[0][1] and "nightly" in messages[0][1]


def test_a_recurring_entry_without_a_schedule_is_e006():
    messages = recurring_messages({"task": "tests.tasks.record"})
    assert [message_id for message_id, _ in messages] == ["dq.E006"]


def test_a_cancelled_running_job_that_raises_is_not_retried(worker):
    result = always_boom.enqueue()
    [job] = worker.claim()
    default_task_backend.cancel(result.id)
    worker.perform(job)
    assert job_of(result).status == Job.Status.FAILED
    assert job_of(result).attempt_count == 1  # always_boom allows 3


def test_the_dispatcher_prunes_recurring_runs_with_finished_jobs():
    config = replace(conf.load("default"), keep_finished=3600)
    now = timezone.now()
    old = RecurringExecution.objects.create(task_key="k", run_at=now - timedelta(hours=2))
    young = RecurringExecution.objects.create(task_key="k", run_at=now - timedelta(minutes=5))
    dispatcher(config).maintain()
    assert list(RecurringExecution.objects.values_list("pk", flat=True)) == [young.pk]
    assert old.pk != young.pk
