"""The django.tasks API through dq, run by an in-process worker."""

import functools
import math
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.db import connection, transaction
from django.tasks import TaskResultStatus, task, task_backends
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist, TaskResultMismatch
from django.tasks.signals import task_enqueued, task_finished, task_started
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from dq.backend import DQBackend, exponential_backoff
from dq.models import (
    ClaimedExecution,
    FailedExecution,
    Job,
    Pause,
    ReadyExecution,
    ScheduledExecution,
)

from ..conftest import InProcessWorker
from ..models import Run
from ..tasks import (
    add,
    always_boom,
    always_fails_default_backoff,
    always_fails_with_backoff,
    async_add,
    attempt_with_context,
    backoff_by_failures,
    boom,
    fails_with_backoff_30,
    flaky,
    record,
    return_unserialisable,
)

pytestmark = pytest.mark.django_db


def plain(x):
    """A module-level function to decorate inside tests (InvalidTask checks)."""
    return x


def labels(jobs):
    return [job.args[0] for job in jobs]


def make_due(*results):
    """Move the scheduled time of these jobs into the past."""
    past = timezone.now() - timedelta(seconds=1)
    ids = [int(result.id) for result in results]
    return ScheduledExecution.objects.filter(job_id__in=ids).update(scheduled_at=past)


def scheduled_delay(result, now):
    """Seconds between ``now`` and the time the job's ScheduledExecution is due."""
    at = ScheduledExecution.objects.get(job_id=int(result.id)).scheduled_at
    return (at - now).total_seconds()


# --- enqueue and get_result ------------------------------------------------------------


def test_enqueue_returns_a_ready_result_stored_as_a_job():
    before = timezone.now()
    result = add.enqueue(2, b=3)

    assert isinstance(result.id, str)
    assert result.status == TaskResultStatus.READY
    assert result.backend == "default"
    assert before <= result.enqueued_at <= timezone.now()
    assert result.started_at is None and result.finished_at is None
    assert result.worker_ids == [] and result.errors == []

    job = Job.objects.get(pk=int(result.id))
    assert job.task_path == "tests.tasks.add"
    assert job.status == Job.Status.READY
    assert ReadyExecution.objects.filter(job=job).exists()

    fetched = add.get_result(result.id)
    assert fetched.id == result.id
    assert fetched.status == TaskResultStatus.READY
    assert fetched.enqueued_at == result.enqueued_at
    assert fetched.task.module_path == "tests.tasks.add"
    assert (fetched.args, fetched.kwargs) == ([2], {"b": 3})
    with pytest.raises(ValueError, match="not finished"):
        fetched.return_value  # noqa: B018


def test_args_and_kwargs_round_trip_through_the_database():
    args = ({"nested": [1, "two", None, True, 2.5, "ü"]}, (3, 4), b"bytes")
    kwargs = {"b": ("t", "u"), "empty": {}}
    result = add.enqueue(*args, **kwargs)

    expected_args = [{"nested": [1, "two", None, True, 2.5, "ü"]}, [3, 4], "bytes"]
    expected_kwargs = {"b": ["t", "u"], "empty": {}}
    assert (result.args, result.kwargs) == (expected_args, expected_kwargs)
    fetched = add.get_result(result.id)
    assert (fetched.args, fetched.kwargs) == (expected_args, expected_kwargs)


def test_work_off_runs_the_job_and_refresh_shows_the_outcome(worker):
    result = add.enqueue(20, 22)
    before = timezone.now()

    done = worker.work_off()

    assert [job.pk for job in done] == [int(result.id)]
    assert result.status == TaskResultStatus.READY  # not refreshed yet
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 42
    assert result.attempts == 1
    assert result.worker_ids == [worker.process.name]
    assert result.errors == []
    assert before <= result.started_at <= result.finished_at <= timezone.now()
    assert result.last_attempted_at == result.started_at
    assert result.enqueued_at <= result.started_at
    assert Job.objects.get(pk=int(result.id)).status == Job.Status.SUCCESSFUL
    assert not ReadyExecution.objects.exists()


def test_each_job_runs_once(worker):
    results = [record.enqueue(f"job-{i}") for i in range(5)]

    assert len(worker.work_off()) == 5
    assert worker.work_off() == []

    assert sorted(Run.objects.values_list("label", flat=True)) == [f"job-{i}" for i in range(5)]
    for result in results:
        result.refresh()
        assert result.status == TaskResultStatus.SUCCESSFUL


def test_larger_priority_runs_sooner_and_ties_run_in_enqueue_order(worker):
    priorities = [0, 10, -5, 10, 0, 100, -100, 0]
    for index, priority in enumerate(priorities):
        record.using(priority=priority).enqueue(f"p{index}")

    done = worker.work_off()

    expected = sorted(range(len(priorities)), key=lambda i: (-priorities[i], i))
    assert labels(done) == [f"p{i}" for i in expected]
    assert [job.priority for job in done] == sorted(priorities, reverse=True)


def test_priority_and_queue_name_are_kept_in_the_result():
    result = record.using(priority=7, queue_name="mailer").enqueue("x")
    assert (result.task.priority, result.task.queue_name) == (7, "mailer")

    fetched = record.get_result(result.id)
    assert (fetched.task.priority, fetched.task.queue_name) == (7, "mailer")
    job = Job.objects.get(pk=int(result.id))
    assert (job.priority, job.queue_name) == (7, "mailer")


def test_queue_selectors_take_only_their_queues_in_the_order_given(db):
    for queue in ("mailer", "amail", "b", "a", "mail", "a2"):
        # Higher priority on the queue listed last: queue order beats priority.
        record.using(queue_name=queue, priority=50 if queue == "mailer" else 0).enqueue(queue)
    record.using(queue_name="a").enqueue("a-second")

    done = InProcessWorker(queues=("a", "mail*")).work_off()

    assert labels(done) == ["a", "a-second", "mailer", "mail"]
    assert sorted(ReadyExecution.objects.values_list("queue_name", flat=True)) == [
        "a2",
        "amail",
        "b",
    ]


def test_one_claim_over_several_selectors_keeps_their_order(db):
    record.using(queue_name="mail-1", priority=90).enqueue("m")
    record.using(queue_name="a").enqueue("a1")
    record.using(queue_name="a").enqueue("a2")

    jobs = InProcessWorker(queues=("a", "mail*")).claim(limit=10)

    # Each selector's jobs together, "a" before "mail*" although "m" has the higher priority.
    assert sorted(labels(jobs)[:2]) == ["a1", "a2"]
    assert labels(jobs)[2:] == ["m"]


def test_a_prefix_selector_treats_like_wildcards_literally(db):
    for queue in ("a_b", "axb", "a%c", "azc"):
        record.using(queue_name=queue).enqueue(queue)

    done = InProcessWorker(queues=("a_*", "a%*")).work_off()

    assert labels(done) == ["a_b", "a%c"]


def test_a_prefix_selector_is_case_sensitive(db):
    for queue in ("Mail", "MAIL-2", "mail-3"):
        record.using(queue_name=queue).enqueue(queue)

    done = InProcessWorker(queues=("mail*",)).work_off()

    assert labels(done) == ["mail-3"]


def test_a_paused_queue_is_not_claimed_until_resumed(worker):
    paused = record.using(queue_name="paused").enqueue("paused")
    other = record.using(queue_name="other").enqueue("other")
    pause = Pause.objects.create(queue_name="paused")

    assert [job.pk for job in worker.work_off()] == [int(other.id)]
    assert [job.pk for job in InProcessWorker(queues=("paused",)).work_off()] == []
    assert [job.pk for job in InProcessWorker(queues=("pau*",)).work_off()] == []
    paused.refresh()
    assert paused.status == TaskResultStatus.READY

    pause.delete()
    assert [job.pk for job in worker.work_off()] == [int(paused.id)]
    paused.refresh()
    assert paused.status == TaskResultStatus.SUCCESSFUL


# --- run_after and the dispatcher's transition -----------------------------------------


def test_run_after_in_the_future_schedules_the_job_until_it_is_due(worker):
    run_after = timezone.now() + timedelta(hours=1)
    result = record.using(run_after=run_after).enqueue("later")

    assert result.status == TaskResultStatus.READY
    job = Job.objects.get(pk=int(result.id))
    assert job.status == Job.Status.SCHEDULED
    assert ScheduledExecution.objects.get(job=job).scheduled_at == run_after
    assert not ReadyExecution.objects.filter(job=job).exists()
    assert record.get_result(result.id).status == TaskResultStatus.READY

    assert worker.work_off() == []
    assert ScheduledExecution.dispatch_due(500, using="default") == 0

    assert make_due(result) == 1
    assert ScheduledExecution.dispatch_due(500, using="default") == 1
    job.refresh_from_db()
    assert job.status == Job.Status.READY
    assert not ScheduledExecution.objects.filter(job=job).exists()

    assert [j.pk for j in worker.work_off()] == [job.pk]
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == "later"


def test_run_after_in_the_past_is_ready_at_once(worker):
    result = record.using(run_after=timezone.now() - timedelta(minutes=1)).enqueue("now")

    assert Job.objects.get(pk=int(result.id)).status == Job.Status.READY
    assert [job.pk for job in worker.work_off()] == [int(result.id)]


def test_dispatch_due_moves_at_most_batch_size_jobs_earliest_first(db):
    now = timezone.now()
    results = [record.using(run_after=now + timedelta(hours=1)).enqueue(f"s{i}") for i in range(5)]
    for minutes, result in zip([3, 1, 5, 2, 4], results, strict=True):
        ScheduledExecution.objects.filter(job_id=int(result.id)).update(
            scheduled_at=now - timedelta(minutes=minutes)
        )

    assert ScheduledExecution.dispatch_due(2, using="default") == 2
    ready = set(ReadyExecution.objects.values_list("job_id", flat=True))
    assert ready == {int(results[2].id), int(results[4].id)}  # 5 and 4 minutes ago

    assert ScheduledExecution.dispatch_due(500, using="default") == 3
    assert ReadyExecution.objects.count() == 5
    assert ScheduledExecution.dispatch_due(500, using="default") == 0
    assert set(Job.objects.values_list("status", flat=True)) == {Job.Status.READY}


def test_a_dispatched_job_keeps_its_queue_and_priority(worker):
    later = record.using(
        run_after=timezone.now() + timedelta(hours=1), priority=10, queue_name="q2"
    ).enqueue("urgent")
    record.using(queue_name="q2").enqueue("normal")
    make_due(later)
    ScheduledExecution.dispatch_due(500, using="default")

    ready = ReadyExecution.objects.get(job_id=int(later.id))
    assert (ready.queue_name, ready.priority) == ("q2", 10)
    assert labels(InProcessWorker(queues=("q2",)).work_off()) == ["urgent", "normal"]


# --- context, async, signals -----------------------------------------------------------


def test_takes_context_sees_the_attempt_and_the_running_result(worker):
    result = attempt_with_context.enqueue("ctx", 2)

    worker.work_off()

    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == {
        "attempt": 3,
        "id": result.id,
        "status": "RUNNING",
        "worker_ids": [worker.process.name] * 3,
    }
    assert sorted(Run.objects.values_list("label", flat=True)) == ["ctx:1", "ctx:2", "ctx:3"]


def test_an_async_task_runs_and_returns(worker):
    result = async_add.enqueue(1, 2)

    worker.work_off()

    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 3


def test_aenqueue_and_aget_result(worker):
    result = async_to_sync(add.aenqueue)(5, 6)

    assert result.status == TaskResultStatus.READY
    assert Job.objects.filter(pk=int(result.id)).exists()

    worker.work_off()

    fetched = async_to_sync(add.aget_result)(result.id)
    assert fetched.status == TaskResultStatus.SUCCESSFUL
    assert fetched.return_value == 11
    async_to_sync(result.arefresh)()
    assert result.return_value == 11


@pytest.fixture
def signals():
    received = []

    def receiver(signal, sender, task_result, **kwargs):
        received.append((signal, sender, task_result.id, task_result.status))

    pairs = [(task_enqueued, "enqueued"), (task_started, "started"), (task_finished, "finished")]
    for signal, _ in pairs:
        signal.connect(receiver)
    names = dict(pairs)
    yield lambda: [(names[s], sender, id_, status) for s, sender, id_, status in received]
    for signal, _ in pairs:
        signal.disconnect(receiver)


def test_signals_are_sent_with_the_backend_class_and_the_result(worker, signals):
    ok = add.enqueue(1, 1)
    bad = boom.enqueue()
    assert signals() == [
        ("enqueued", DQBackend, ok.id, TaskResultStatus.READY),
        ("enqueued", DQBackend, bad.id, TaskResultStatus.READY),
    ]

    worker.work_off()

    assert signals()[2:] == [
        ("started", DQBackend, ok.id, TaskResultStatus.RUNNING),
        ("finished", DQBackend, ok.id, TaskResultStatus.SUCCESSFUL),
        ("started", DQBackend, bad.id, TaskResultStatus.RUNNING),
        ("finished", DQBackend, bad.id, TaskResultStatus.FAILED),
    ]


def test_a_retried_attempt_sends_started_each_time_and_finished_once(worker, signals):
    result = flaky.enqueue("signals", 1)

    worker.work_off()

    assert signals() == [
        ("enqueued", DQBackend, result.id, TaskResultStatus.READY),
        ("started", DQBackend, result.id, TaskResultStatus.RUNNING),
        ("started", DQBackend, result.id, TaskResultStatus.RUNNING),
        ("finished", DQBackend, result.id, TaskResultStatus.SUCCESSFUL),
    ]


# --- failures and retries --------------------------------------------------------------


def test_a_failing_task_is_retried_until_it_succeeds_and_every_error_is_kept(worker):
    result = flaky.enqueue("flaky", 2)

    done = worker.work_off()

    assert [job.pk for job in done] == [int(result.id)] * 3
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 3
    assert result.attempts == 3
    assert result.worker_ids == [worker.process.name] * 3
    assert len(result.errors) == 2
    for number, error in enumerate(result.errors, start=1):
        assert error.exception_class_path == "builtins.ValueError"
        assert error.exception_class is ValueError
        assert f"ValueError: failure {number} of flaky" in error.traceback
        assert "Traceback (most recent call last)" in error.traceback
    assert result.started_at < result.last_attempted_at <= result.finished_at
    assert Run.objects.filter(label="flaky").count() == 3
    assert not FailedExecution.objects.exists()


def test_a_task_that_always_fails_ends_failed_after_max_attempts(worker):
    result = always_boom.enqueue()

    worker.work_off()

    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert result.attempts == 3
    assert [error.exception_class_path for error in result.errors] == ["builtins.RuntimeError"] * 3
    assert all("RuntimeError: boom" in error.traceback for error in result.errors)
    with pytest.raises(ValueError, match="failed"):
        result.return_value  # noqa: B018
    failed = FailedExecution.objects.get(job_id=int(result.id))
    assert failed.exception_class_path == "builtins.RuntimeError"
    assert failed.message == "boom"
    assert "RuntimeError: boom" in failed.traceback
    assert Job.objects.get(pk=int(result.id)).status == Job.Status.FAILED


def test_a_task_with_one_attempt_fails_at_once(worker):
    result = boom.enqueue()

    assert len(worker.work_off()) == 1

    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert len(result.errors) == 1
    assert FailedExecution.objects.filter(job_id=int(result.id)).exists()


def test_a_retry_waiting_for_its_backoff_is_visible_as_ready_with_its_error(worker):
    result = always_fails_with_backoff.enqueue()

    worker.work_off()

    result.refresh()
    assert result.status == TaskResultStatus.READY
    assert result.attempts == 1
    assert [error.exception_class_path for error in result.errors] == ["builtins.ValueError"]
    assert Job.objects.get(pk=int(result.id)).status == Job.Status.SCHEDULED


def test_a_callable_backoff_receives_the_number_of_failures_so_far(worker):
    # always_fails_with_backoff waits backoff_by_failures(n) = n * 100 seconds.
    result = always_fails_with_backoff.enqueue()

    before = timezone.now()
    assert len(worker.work_off()) == 1
    after = timezone.now()
    assert scheduled_delay(result, before) >= 100
    assert scheduled_delay(result, after) <= 100

    make_due(result)
    ScheduledExecution.dispatch_due(500, using="default")
    before = timezone.now()
    assert len(worker.work_off()) == 1
    after = timezone.now()
    assert scheduled_delay(result, before) >= 200
    assert scheduled_delay(result, after) <= 200

    make_due(result)
    ScheduledExecution.dispatch_due(500, using="default")
    assert len(worker.work_off()) == 1
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert result.attempts == 3
    assert not ScheduledExecution.objects.exists()


def test_a_number_backoff_schedules_the_retry_that_many_seconds_later(worker):
    result = fails_with_backoff_30.enqueue("backoff")

    before = timezone.now()
    assert len(worker.work_off()) == 1
    after = timezone.now()

    assert scheduled_delay(result, before) >= 30
    assert scheduled_delay(result, after) <= 30
    assert Job.objects.get(pk=int(result.id)).status == Job.Status.SCHEDULED

    make_due(result)
    assert ScheduledExecution.dispatch_due(500, using="default") == 1
    assert len(worker.work_off()) == 1
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert Run.objects.filter(label="backoff").count() == 2


def test_a_backoff_given_with_using_is_the_one_the_retry_uses(worker):
    result = flaky.using(backoff=30).enqueue("using-backoff", 5)

    before = timezone.now()
    assert len(worker.work_off()) == 1
    after = timezone.now()

    assert scheduled_delay(result, before) >= 30
    assert scheduled_delay(result, after) <= 30


def test_the_default_backoff_schedules_the_retry_about_two_seconds_later(worker):
    result = always_fails_default_backoff.enqueue()

    before = timezone.now()
    worker.work_off()
    after = timezone.now()

    assert scheduled_delay(result, before) >= 2 * 0.75
    assert scheduled_delay(result, after) <= 2 * 1.25


def test_exponential_backoff_grows_and_is_jittered_within_a_quarter():
    previous_max = 0
    for failures in range(1, 8):
        base = 2.0 * 2 ** (failures - 1)
        delays = [exponential_backoff(failures) for _ in range(200)]
        assert all(base * 0.75 <= delay <= base * 1.25 for delay in delays)
        assert len(set(delays)) > 1  # jittered, not a constant
        assert min(delays) > previous_max  # grows: the ranges do not overlap
        previous_max = max(delays)
    capped = [exponential_backoff(40) for _ in range(200)]
    assert all(3600 * 0.75 <= delay <= 3600 * 1.25 for delay in capped)


# --- task options ----------------------------------------------------------------------


def test_using_sets_dq_options_that_reach_the_job():
    changed = record.using(max_attempts=4, delivery="at_most_once", backoff=7, priority=3)

    assert (changed.max_attempts, changed.delivery, changed.backoff) == (4, "at_most_once", 7)
    assert changed.priority == 3
    assert (record.max_attempts, record.delivery, record.backoff) == (1, "at_least_once", None)

    job = Job.objects.get(pk=int(changed.enqueue("x").id))
    assert (job.max_attempts, job.delivery, job.priority, job.backoff) == (4, "at_most_once", 3, 7)


def test_using_keeps_options_not_given():
    changed = flaky.using(priority=5)
    assert (changed.max_attempts, changed.backoff, changed.priority) == (3, 0, 5)


def test_using_an_unknown_option_is_a_type_error():
    with pytest.raises(TypeError, match="retries"):
        record.using(retries=3)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"delivery": "sometimes"},
            "delivery must be one of 'at_least_once', 'at_most_once', 'exactly_once'",
        ),
        ({"timeout": 0}, "timeout must be a number of seconds > 0"),
        ({"timeout": "1m"}, "timeout must be a number of seconds > 0"),
        ({"max_attempts": 0}, "max_attempts must be a whole number > 0"),
        ({"max_attempts": 1.5}, "max_attempts must be a whole number > 0"),
        ({"max_attempts": True}, "max_attempts must be a whole number > 0"),
        ({"backoff": -1}, "backoff must be a number of seconds >= 0"),
        ({"backoff": "soon"}, "backoff must be a number of seconds >= 0"),
    ],
)
def test_invalid_task_options_raise_invalid_task(options, message):
    with pytest.raises(InvalidTask, match=message):
        task(**options)(plain)
    with pytest.raises(InvalidTask, match=message):
        record.using(**options)


@pytest.mark.parametrize("queue_name", ["", " ", " mail", "mail ", "a,b", "mail*", "x" * 101])
def test_a_queue_name_no_worker_could_select_is_refused_at_enqueue(queue_name):
    with pytest.raises(InvalidTask, match="queue_name must be 1 to 100 characters"):
        record.using(queue_name=queue_name).enqueue("x")
    assert not Job.objects.exists()


def test_a_queue_name_of_100_characters_is_fine():
    result = record.using(queue_name="q" * 100).enqueue("x")
    assert Job.objects.get(pk=int(result.id)).queue_name == "q" * 100


def test_valid_task_options_make_a_task():
    made = task(max_attempts=2, backoff=1.5, delivery="at_most_once", priority=-3)(plain)
    assert (made.max_attempts, made.backoff, made.delivery, made.priority) == (
        2,
        1.5,
        "at_most_once",
        -3,
    )
    made = task(backoff=backoff_by_failures)(plain)
    assert made.backoff is backoff_by_failures


def test_a_backoff_function_is_stored_by_path_and_called_with_the_failures(db):
    result = record.using(backoff=backoff_by_failures).enqueue("x")
    job = Job.objects.get(pk=int(result.id))
    assert job.backoff == "tests.tasks.backoff_by_failures"
    job.attempt_count = 2
    assert job.retry_delay() == backoff_by_failures(2)


@pytest.mark.parametrize(
    "backoff", [lambda failures: failures, functools.partial(backoff_by_failures)]
)
def test_a_backoff_that_is_not_a_module_level_function_is_rejected(backoff):
    with pytest.raises(InvalidTask, match="module-level function"):
        record.using(backoff=backoff)


# --- bad input -------------------------------------------------------------------------


class Opaque:
    pass


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((timezone.now(),), {}),
        ((Opaque(),), {}),
        (({1, 2},), {}),
        (({1: "x"},), {}),
        (([{"ok": {2: "nested"}}],), {}),
        ((float("nan"),), {}),
        ((), {"value": math.inf}),
        ((), {"value": Opaque()}),
    ],
    ids=["datetime", "object", "set", "int-key", "nested-int-key", "nan", "inf", "kw-object"],
)
def test_unserialisable_arguments_are_a_type_error_at_enqueue_and_write_nothing(args, kwargs):
    jobs = Job.objects.count()

    with pytest.raises(TypeError, match=r"Arguments of tests\.tasks\.record must be JSON"):
        record.enqueue(*args, **kwargs)

    assert Job.objects.count() == jobs
    assert not ReadyExecution.objects.exists()


def test_one_bad_call_in_enqueue_many_writes_nothing():
    with pytest.raises(TypeError, match="JSON"):
        record.enqueue_many([(("ok",), {}), ((Opaque(),), {}), (("ok too",), {})])

    assert not Job.objects.exists()


def test_a_return_value_that_is_not_json_fails_the_job_with_a_type_error(worker):
    result = return_unserialisable.enqueue()

    worker.work_off()

    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert [error.exception_class_path for error in result.errors] == ["builtins.TypeError"]
    assert "return value of tests.tasks.return_unserialisable" in result.errors[0].traceback
    failed = FailedExecution.objects.get(job_id=int(result.id))
    assert failed.exception_class_path == "builtins.TypeError"


def test_an_unimportable_task_path_fails_the_job_and_the_worker_goes_on(worker):
    [missing] = Job.enqueue(
        [Job(task_path="tests.nowhere.task", queue_name="default", backend="default")],
        using="default",
    )
    renamed = record.enqueue("renamed")
    Job.objects.filter(pk=int(renamed.id)).update(task_path="tests.tasks.no_such_task")
    not_a_task = record.enqueue("not a task")
    Job.objects.filter(pk=int(not_a_task.id)).update(task_path="tests.tasks.wait_for")
    fine = add.enqueue(1, 2)

    done = worker.work_off()

    assert [job.pk for job in done] == [
        missing.pk,
        int(renamed.id),
        int(not_a_task.id),
        int(fine.id),
    ]
    fine.refresh()
    assert fine.return_value == 3
    messages = {
        failed.job_id: (failed.exception_class_path, failed.message)
        for failed in FailedExecution.objects.all()
    }
    assert messages[missing.pk][0] == "builtins.ImportError"
    assert "Cannot import task 'tests.nowhere.task'" in messages[missing.pk][1]
    assert messages[int(renamed.id)][0] == "builtins.ImportError"
    assert "'tests.tasks.no_such_task'" in messages[int(renamed.id)][1]
    assert messages[int(not_a_task.id)][0] == "builtins.ImportError"
    assert "'tests.tasks.wait_for' is not a task" in messages[int(not_a_task.id)][1]
    for pk in (missing.pk, int(renamed.id), int(not_a_task.id)):
        job = Job.objects.get(pk=pk)
        assert job.status == Job.Status.FAILED
        assert job.worker_ids == [worker.process.name]
    assert not Run.objects.exists()


def test_a_job_of_a_backend_alias_no_longer_in_tasks_fails_and_the_worker_goes_on(worker):
    gone = record.enqueue("gone")
    Job.objects.filter(pk=int(gone.id)).update(backend="removed")
    fine = add.enqueue(1, 1)

    assert [job.pk for job in worker.work_off()] == [int(gone.id), int(fine.id)]

    failed = FailedExecution.objects.get(job_id=int(gone.id))
    assert failed.exception_class_path == "django.tasks.exceptions.InvalidTaskBackend"
    assert "removed" in failed.message
    assert add.get_result(fine.id).return_value == 2
    assert not Run.objects.exists()


def test_a_task_started_receiver_that_raises_fails_the_job_not_the_worker(worker):
    def broken(sender, task_result, **kwargs):
        raise LookupError("receiver broke")

    result = record.enqueue("never runs")
    fine = add.enqueue(2, 3)
    task_started.connect(broken)
    try:
        done = worker.work_off(limit=1)
    finally:
        task_started.disconnect(broken)
    worker.work_off()

    assert [job.pk for job in done] == [int(result.id)]
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert [error.exception_class_path for error in result.errors] == ["builtins.LookupError"]
    assert not ClaimedExecution.objects.exists()
    assert not Run.objects.exists()
    assert add.get_result(fine.id).return_value == 5


# --- transactions ----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_enqueue_in_a_rolled_back_transaction_leaves_nothing():
    with pytest.raises(RuntimeError, match="rollback"), transaction.atomic():
        result = record.enqueue("rolled back")
        assert Job.objects.filter(pk=int(result.id)).exists()
        raise RuntimeError("rollback")

    assert not Job.objects.exists()
    assert not ReadyExecution.objects.exists()
    with pytest.raises(TaskResultDoesNotExist):
        record.get_result(result.id)


@pytest.mark.django_db(transaction=True)
def test_enqueue_in_a_committed_transaction_is_there_and_runs(worker):
    with transaction.atomic():
        result = record.enqueue("committed")

    assert ReadyExecution.objects.filter(job_id=int(result.id)).exists()
    assert [job.pk for job in worker.work_off()] == [int(result.id)]
    result.refresh()
    assert result.return_value == "committed"


@pytest.mark.django_db(transaction=True)
def test_enqueue_many_in_a_rolled_back_transaction_leaves_nothing():
    with pytest.raises(RuntimeError), transaction.atomic():
        record.enqueue_many([((f"r{i}",), {}) for i in range(20)])
        raise RuntimeError

    assert not Job.objects.exists()
    assert not ReadyExecution.objects.exists()


# --- enqueue_many ----------------------------------------------------------------------


def test_enqueue_many_returns_one_result_per_call_in_order(worker):
    results = add.enqueue_many([((i,), {"b": i}) for i in range(5)])

    assert [result.args for result in results] == [[i] for i in range(5)]
    assert len({result.id for result in results}) == 5
    assert all(result.status == TaskResultStatus.READY for result in results)
    assert Job.objects.count() == 5

    worker.work_off()

    assert [add.get_result(result.id).return_value for result in results] == [
        2 * i for i in range(5)
    ]


def test_enqueue_many_of_nothing_returns_nothing():
    assert add.enqueue_many([]) == []
    assert not Job.objects.exists()


def test_enqueue_many_uses_the_same_number_of_queries_for_10_and_200_jobs():
    counts = {}
    for n in (10, 200):
        with CaptureQueriesContext(connection) as queries:
            results = record.enqueue_many([((f"{n}-{i}",), {}) for i in range(n)])
        assert len(results) == n
        counts[n] = len(queries)

    assert counts[10] == counts[200]
    assert counts[200] <= 6
    assert Job.objects.count() == 210
    assert ReadyExecution.objects.count() == 210


def test_enqueue_many_with_run_after_schedules_every_job():
    run_after = timezone.now() + timedelta(minutes=5)
    results = record.using(run_after=run_after).enqueue_many([(("a",), {}), (("b",), {})])

    assert ScheduledExecution.objects.count() == 2
    assert set(Job.objects.values_list("status", flat=True)) == {Job.Status.SCHEDULED}
    assert {r.id for r in results} == {str(pk) for pk in Job.objects.values_list("pk", flat=True)}


# --- get_result errors -----------------------------------------------------------------


@pytest.mark.parametrize("result_id", ["999999999", "abc", "1.5", "", None])
def test_get_result_of_an_unknown_id_raises_does_not_exist(result_id):
    add.enqueue(1, 1)
    with pytest.raises(TaskResultDoesNotExist):
        add.get_result(result_id)
    with pytest.raises(TaskResultDoesNotExist):
        task_backends["default"].get_result(result_id)


def test_get_result_of_another_tasks_id_raises_mismatch():
    result = record.enqueue("mine")

    with pytest.raises(TaskResultMismatch):
        add.get_result(result.id)
    assert record.get_result(result.id).id == result.id
