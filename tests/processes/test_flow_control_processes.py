"""Flow control across real processes on the real database: concurrency limits under many
worker threads, unique enqueues racing, recurring runs enqueued once by several
schedulers, cancellation of a running job, pruning and slot reclaiming by the dispatcher.

Each test waits on conditions with deadlines; "nothing else happened" is only asserted
after a positive event that proves it had the chance to.
"""

import itertools
import multiprocessing
import random
import traceback
from collections import defaultdict
from datetime import timedelta

import pytest
from django.db import connections
from django.db.models import Count
from django.tasks import TaskResultStatus, default_task_backend
from django.utils import timezone

from dq.models import (
    BlockedExecution,
    Job,
    Process,
    RecurringExecution,
    RecurringTask,
    Semaphore,
)

from ..conftest import subprocess_env, wait_until
from ..flow_tasks import (
    pair_member,
    per_account,
    run_until_cancelled,
    span_limit_one,
    span_limit_two,
    sync_user,
    unique_per_account,
    unique_record,
)
from ..models import Run
from ..racing import run_in_django
from ..tasks import add, boom

pytestmark = pytest.mark.django_db(transaction=True)

FAST = {
    "heartbeat_interval": 0.2,
    "alive_threshold": 3,
    "maintenance_interval": 0.2,
    "shutdown_timeout": 2,
}


def fast(**overrides):
    return {**FAST, **overrides}


def children_of(work, timeout=30):
    """Wait until ``work``'s supervisor has registered its workers and dispatcher; returns
    (supervisor row, {kind: [child rows]})."""

    def registered():
        if work.proc.poll() is not None:
            pytest.fail(f"dq_work exited with {work.proc.returncode}:\n{work.output()}")
        supervisor = Process.objects.filter(kind=Process.Kind.SUPERVISOR, pid=work.pid).first()
        if supervisor is None:
            return None
        kinds = defaultdict(list)
        for child in Process.objects.filter(supervisor=supervisor).order_by("pk"):
            kinds[child.kind].append(child)
        if kinds[Process.Kind.WORKER] and kinds[Process.Kind.DISPATCHER]:
            return supervisor, kinds
        return None

    return wait_until(registered, timeout=timeout, message="dq_work never registered")


def job_of(result):
    return Job.objects.get(pk=int(result.id))


def wait_for_status(result, status, *, timeout=30):
    wait_until(
        lambda: job_of(result).status == status,
        timeout=timeout,
        message=f"job {result.id} never became {status}",
    )
    return job_of(result)


def wait_logged(works, condition, **kwargs):
    """wait_until, failing with the output of the dq_work processes ``works``."""
    try:
        return wait_until(condition, **kwargs)
    except pytest.fail.Exception as failure:
        logs = "\n".join(f"--- dq_work {work.pid}:\n{work.output()}" for work in works)
        rows = list(Process.objects.values_list("pk", "kind", "pid", "supervisor_id"))
        pytest.fail(f"{failure}\nprocesses: {rows}\n{logs}")


# --- concurrency limits ----------------------------------------------------------------

KEYS = {"one-a": 1, "one-b": 1, "one-c": 1, "two-a": 2, "two-b": 2}


def enqueue_span(key, priority):
    limit_task = span_limit_one if key.startswith("one-") else span_limit_two
    return limit_task.using(priority=priority).enqueue(key.split("-", 1)[1])


def max_overlap(intervals):
    """The most intervals that overlap at any instant (an end before a start at a tie)."""
    events = sorted(
        itertools.chain.from_iterable(((start, 1), (end, -1)) for start, end in intervals),
        key=lambda event: (event[0], event[1]),
    )
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


@pytest.mark.timeout(300)
def test_concurrency_limits_hold_across_many_worker_processes_and_threads(dq_work):
    """300 jobs over 5 keys (limit 1 for three, 2 for two), run by 3 worker processes of 8
    threads under two supervisors; half enqueued before they start, half while they run.
    Each run records its start and end; per key, the runs never overlap more than the
    limit, and every job finishes."""
    rng = random.Random(20261126)
    plan = [(rng.choice(list(KEYS)), rng.choice([0, 0, 5, 10])) for _ in range(300)]
    results = [enqueue_span(key, priority) for key, priority in plan[:150]]
    assert Job.objects.filter(status=Job.Status.BLOCKED).count() >= 100

    # Default heartbeats: under this load a live worker must not be taken for dead (its
    # jobs would then run again, at_least_once, beside the runs still going on).
    options = {"shutdown_timeout": 2}
    works = [
        dq_work("--processes", "2", "--threads", "8", options=options),
        dq_work("--processes", "1", "--threads", "8", options=options),
    ]
    for work in works:
        children_of(work)
    # Enqueue the rest while slots are being taken and given back.
    results += [enqueue_span(key, priority) for key, priority in plan[150:]]

    try:
        wait_until(
            lambda: Job.objects.filter(status=Job.Status.SUCCESSFUL).count() == len(plan),
            timeout=180,
        )
    except pytest.fail.Exception:
        counts = Job.objects.values("status").annotate(jobs=Count("pk"))
        pytest.fail(f"not every job finished: {list(counts)}")

    interrupted = Job.objects.filter(interruption_count__gt=0).values_list("pk", "attempts")
    assert not interrupted, f"jobs were interrupted: {list(interrupted)}"
    spans = defaultdict(list)
    for label in Run.objects.filter(label__startswith="span ").values_list("label", flat=True):
        _, key, started, ended = label.split()
        spans[key].append((float(started), float(ended)))
    assert {key: len(runs) for key, runs in spans.items()} == {
        key: sum(1 for k, _ in plan if k == key) for key in KEYS
    }
    overlaps = {key: max_overlap(runs) for key, runs in spans.items()}
    assert all(overlaps[key] <= limit for key, limit in KEYS.items()), overlaps
    # The measurement sees overlap where it is allowed: the limit-2 keys ran two at once.
    assert max(overlaps["two-a"], overlaps["two-b"]) == 2, overlaps
    # Every slot was given back; nothing is left waiting.
    assert not BlockedExecution.objects.exists()
    assert dict(Semaphore.objects.values_list("key", "value")) == KEYS


@pytest.mark.timeout(180)
def test_a_job_blocked_while_the_last_of_its_key_ends_is_released(dq_work):
    """200 keys with two jobs each: the second is enqueued (and blocked) while the first
    may be ending. The ending must see the blocked job or the blocked job must see the
    slot given back; otherwise it waits for the semaphore to expire (15 minutes)."""
    children_of(dq_work("--threads", "8", options=fast()))
    rng = random.Random(1126)
    for index in range(200):
        pair_member.enqueue(f"k{index}", rng.uniform(0, 0.004))
        pair_member.enqueue(f"k{index}", 0)

    try:
        wait_until(
            lambda: Job.objects.filter(status=Job.Status.SUCCESSFUL).count() == 400, timeout=60
        )
    except pytest.fail.Exception:
        stuck = BlockedExecution.objects.values_list("concurrency_key", flat=True)
        pytest.fail(f"{len(stuck)} job(s) left blocked with their slot free: {list(stuck)[:5]}")
    assert not BlockedExecution.objects.exists()


def test_a_slot_whose_holder_vanished_is_reclaimed_by_the_dispatcher(dq_work):
    short = per_account.using(concurrency_duration=1)
    holder = short.enqueue(1, "holder")
    # The holder's rows vanish without giving its slot back (deleted by hand).
    Job.objects.filter(pk=int(holder.id)).delete()
    waiting = short.enqueue(1, "waiting")
    assert job_of(waiting).status == Job.Status.BLOCKED

    dq_work(options=fast())

    job = wait_for_status(waiting, Job.Status.SUCCESSFUL, timeout=20)
    # Not before the leaked slot's semaphore expired, a concurrency_duration after it was taken.
    assert job.started_at >= holder.enqueued_at + timedelta(seconds=1)
    assert Semaphore.objects.get(key="account-1").value == 1


# --- unique jobs -----------------------------------------------------------------------

RACERS = 8
ROUNDS = 10


def enqueue_racing(barrier, results, index):
    """In a process of its own: for each round, wait for every racer, then enqueue the same
    unique jobs as all the others at once. Reports (round, kind, id) or an error."""
    try:
        for round_ in range(ROUNDS):
            barrier.wait(timeout=30)
            by_args = unique_record.enqueue(f"race-{round_}")
            by_key = sync_user.enqueue(round_, reason=f"racer {index}")
            limited = unique_per_account.enqueue(round_, "race")
            for kind, result in (("args", by_args), ("key", by_key), ("limited", limited)):
                results.put((round_, kind, result.id))
    except BaseException:
        results.put(("error", index, traceback.format_exc()))
    finally:
        connections.close_all()


@pytest.mark.timeout(180)
def test_concurrent_enqueues_of_a_unique_job_make_one_job():
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(RACERS)
    results = context.Queue()
    racers = [
        context.Process(
            target=run_in_django,
            args=(subprocess_env(), f"{__name__}.enqueue_racing", barrier, results, index),
        )
        for index in range(RACERS)
    ]
    for racer in racers:
        racer.start()
    try:
        reported = [results.get(timeout=60) for _ in range(RACERS * ROUNDS * 3)]
    finally:
        for racer in racers:
            racer.join(timeout=30)
            if racer.is_alive():
                racer.kill()
    assert [racer.exitcode for racer in racers] == [0] * RACERS
    errors = [item for item in reported if item[0] == "error"]
    assert not errors, errors[0][2]

    ids = defaultdict(set)
    for round_, kind, job_id in reported:
        ids[round_, kind].add(job_id)
    # Every racer of a round got the same job, and no other job was made.
    assert all(len(same) == 1 for same in ids.values()), ids
    assert Job.objects.count() == ROUNDS * 3
    assert {str(pk) for pk in Job.objects.values_list("pk", flat=True)} == set().union(
        *ids.values()
    )


# --- recurring tasks -------------------------------------------------------------------

EVERY_MINUTE = {
    "every-minute": {
        "task": "tests.tasks.record",
        "schedule": "* * * * *",
        "args": ["tick"],
        "description": "A tick a minute",
    }
}


@pytest.mark.timeout(200)
def test_two_supervisors_enqueue_a_recurring_run_once(dq_work):
    """Cron has minute resolution: both supervisors' schedulers see the next minute come
    due at the same instant, and exactly one of them enqueues its run."""
    works = [dq_work("--threads", "2", options=fast(recurring=EVERY_MINUTE)) for _ in range(2)]
    for work in works:
        supervisor, _ = children_of(work)

        def schedulers_of(supervisor=supervisor):
            return list(Process.objects.filter(supervisor=supervisor, kind=Process.Kind.SCHEDULER))

        [scheduler] = wait_logged(works, schedulers_of, message="no scheduler started")
        assert scheduler.metadata == {"recurring": ["every-minute"]}
        assert any("scheduler" in child for child in supervisor.metadata["children"])
    task = wait_until(lambda: RecurringTask.objects.filter(key="every-minute").first())
    assert (task.task_path, task.schedule, task.args) == (
        "tests.tasks.record",
        "* * * * *",
        ["tick"],
    )
    assert task.description == "A tick a minute"
    # The first minute both schedulers were up for (each counts runs due after it started).
    now = timezone.now()
    run_at = (now + timedelta(seconds=2)).replace(second=0, microsecond=0) + timedelta(minutes=1)

    execution = wait_logged(
        works,
        lambda: RecurringExecution.objects.filter(
            task_key="every-minute", run_at=run_at, job__isnull=False
        ).first(),
        timeout=(run_at - now).total_seconds() + 45,
        message=f"the run at {run_at} was never enqueued",
    )
    wait_until(lambda: Run.objects.filter(label="tick").exists(), message="the run never ran")
    # Both schedulers woke at run_at; give the later one time to try, by the clock it uses.
    wait_until(lambda: timezone.now() >= run_at + timedelta(seconds=3), timeout=10)

    # One execution and one job per run (a run a minute earlier may have come due too,
    # when the test started in a minute's last seconds), each job run once.
    executions = RecurringExecution.objects.count()
    assert executions in (1, 2)
    assert RecurringExecution.objects.filter(run_at=run_at).count() == 1
    assert Job.objects.filter(task_path="tests.tasks.record").count() == executions
    wait_until(
        lambda: Run.objects.filter(label="tick").count() == executions,
        message="a recurring run's job never ran",
    )
    assert Job.objects.get(pk=execution.job_id).status == Job.Status.SUCCESSFUL
    assert RecurringTask.objects.get(key="every-minute").last_run_at == run_at
    assert all(work.proc.poll() is None for work in works)


def test_scheduler_false_starts_no_scheduler(dq_work):
    work = dq_work(options=fast(recurring=EVERY_MINUTE, scheduler=False))

    supervisor, kinds = children_of(work)

    assert not any("scheduler" in child for child in supervisor.metadata["children"])
    assert "dispatcher" in supervisor.metadata["children"]
    assert kinds[Process.Kind.SCHEDULER] == []
    assert not Process.objects.filter(kind=Process.Kind.SCHEDULER).exists()
    assert not RecurringTask.objects.exists()


def test_without_recurring_tasks_no_scheduler_is_started(dq_work):
    supervisor, kinds = children_of(dq_work(options=fast()))

    assert not any("scheduler" in child for child in supervisor.metadata["children"])
    assert kinds[Process.Kind.SCHEDULER] == []


# --- cancellation ----------------------------------------------------------------------


def test_a_running_job_sees_the_cancel_request_and_stops_early(dq_work):
    dq_work(options=fast())
    result = run_until_cancelled.enqueue("long")
    wait_until(lambda: Run.objects.filter(label="long:started").exists())
    # Its start is written once it has run a moment (batching.START_AFTER).
    wait_until(lambda: job_of(result).status == Job.Status.RUNNING)

    assert default_task_backend.cancel(result.id).status == TaskResultStatus.RUNNING

    job = wait_for_status(result, Job.Status.SUCCESSFUL)
    assert job.return_value == "stopped early"
    assert Run.objects.filter(label="long:cancelled").count() == 1


def test_jobs_cancelled_before_they_start_never_run(dq_work):
    ready = per_account.enqueue(1, "cancelled-ready")
    blocked = per_account.enqueue(1, "cancelled-blocked")
    later = per_account.using(run_after=timezone.now() + timedelta(seconds=2)).enqueue(
        2, "cancelled-scheduled"
    )
    for result in (ready, blocked, later):
        default_task_backend.cancel(result.id)
    marker = per_account.enqueue(1, "after")  # takes the slot the cancelled ones gave back

    dq_work(options=fast())

    wait_for_status(marker, Job.Status.SUCCESSFUL)
    # Well past the time the scheduled one would have been due.
    wait_until(lambda: timezone.now() > later.task.run_after + timedelta(seconds=2), timeout=10)
    assert list(Run.objects.values_list("label", flat=True)) == ["after"]
    assert {job_of(r).status for r in (ready, blocked, later)} == {Job.Status.CANCELLED}


# --- pruning ---------------------------------------------------------------------------


def test_the_dispatcher_prunes_finished_jobs_and_keeps_failed_ones(dq_work):
    done = [add.enqueue(i, i) for i in range(5)]
    cancelled = add.using(run_after=timezone.now() + timedelta(hours=1)).enqueue(0, 0)
    default_task_backend.cancel(cancelled.id)
    failed = boom.enqueue()

    dq_work(options=fast(keep_finished=0.5))

    pruned = [int(r.id) for r in [*done, cancelled]]
    wait_until(
        lambda: not Job.objects.filter(pk__in=pruned).exists(),
        message="finished jobs were not pruned",
    )
    # A job that finishes after the failure is pruned too: the failure had its chance.
    last = add.enqueue(9, 9)
    wait_for_status(last, Job.Status.SUCCESSFUL)
    wait_until(lambda: not Job.objects.filter(pk=int(last.id)).exists())
    assert job_of(failed).status == Job.Status.FAILED
    assert job_of(failed).finished_at < timezone.now() - timedelta(seconds=0.5)
