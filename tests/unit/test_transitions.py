"""The state transitions on dq's models, called directly."""

import contextlib
import threading
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection, transaction
from django.tasks import TaskResultStatus
from django.test import override_settings
from django.utils import timezone

from dq import conf
from dq.exceptions import (
    ProcessExitError,
    ProcessMissingError,
    ProcessPrunedError,
    TransactionRolledBackError,
)
from dq.models import ClaimedExecution, FailedExecution, Job, Process, ReadyExecution
from dq.processes.metrics import due_at
from dq.processes.supervisor import Supervisor

from ..conftest import InProcessWorker
from ..models import Run
from ..tasks import add, block_at_most_once, boom, flaky, record, record_exactly_once

pytestmark = pytest.mark.django_db

EXIT = "dq.exceptions.ProcessExitError"


def interrupt(job, exception_class=ProcessExitError, message="worker exited"):
    """Interrupt the claim on ``job``, as a supervisor does when its worker dies."""
    return ClaimedExecution.interrupt(
        ClaimedExecution.objects.filter(job_id=job.pk), exception_class, message, using="default"
    )


def claimed_by(job):
    claim = ClaimedExecution.objects.filter(job_id=job.pk).first()
    return claim.process_id if claim else None


def state(job):
    """The job's status and which execution tables hold it."""
    job = Job.objects.get(pk=job.pk)
    tables = [
        name
        for name, model in (
            ("ready", ReadyExecution),
            ("claimed", ClaimedExecution),
            ("failed", FailedExecution),
        )
        if model.objects.filter(job_id=job.pk).exists()
    ]
    return job.status, tables


# --- claim -----------------------------------------------------------------------------


def test_two_claimers_never_get_the_same_job(db):
    ids = {int(record.enqueue(f"j{i}").id) for i in range(7)}
    first, second = InProcessWorker(), InProcessWorker()

    mine = {job.pk for job in first.claim(limit=3)}
    theirs = {job.pk for job in second.claim(limit=100)}

    assert len(mine) == 3 and len(theirs) == 4
    assert mine.isdisjoint(theirs)
    assert mine | theirs == ids
    assert first.claim(limit=100) == [] and second.claim(limit=100) == []
    claims = dict(ClaimedExecution.objects.values_list("job_id", "process_id"))
    assert {pk for pk, process in claims.items() if process == first.process.pk} == mine
    assert {pk for pk, process in claims.items() if process == second.process.pk} == theirs


def test_claim_takes_at_most_limit_jobs_highest_priority_first(worker):
    for priority in (1, 5, 3, 4, 2):
        record.using(priority=priority).enqueue(f"p{priority}")

    jobs = worker.claim(limit=2)

    assert sorted(job.args[0] for job in jobs) == ["p4", "p5"]
    assert ReadyExecution.objects.count() == 3
    assert ClaimedExecution.objects.count() == 2


def test_a_claimed_job_is_held_for_its_worker_and_has_not_started(worker):
    result = add.enqueue(1, 2)

    [job] = worker.claim(started=False)

    assert job.pk == int(result.id)
    claim = ClaimedExecution.objects.get(job_id=job.pk)
    assert (job.claim_id, claim.started_at) == (claim.pk, None)
    assert (job.status, job.attempt_count, job.started_at) == (Job.Status.READY, 0, None)
    assert state(job) == (Job.Status.READY, ["claimed"])
    result.refresh()
    assert (result.status, result.worker_ids) == (TaskResultStatus.READY, [])


def test_a_recorded_start_makes_the_claimed_job_running_with_its_attempt(worker):
    result = add.enqueue(1, 2)
    before = timezone.now()

    [job] = worker.claim(started=True)

    recorded = Job.objects.get(pk=job.pk)
    assert recorded.attempt_count == 1
    assert before <= recorded.started_at == recorded.last_attempted_at <= timezone.now()
    assert ClaimedExecution.objects.get(pk=job.claim_id).started_at == recorded.started_at
    assert state(job) == (Job.Status.RUNNING, ["claimed"])
    result.refresh()
    assert result.status == TaskResultStatus.RUNNING
    assert result.worker_ids == [worker.process.name]


# --- finish / fail and the stale-worker guard ------------------------------------------


def test_finish_and_fail_of_a_claim_taken_over_do_nothing(db):
    result = record.enqueue("taken over")
    first, second = InProcessWorker(), InProcessWorker()
    [stale] = first.claim()
    assert interrupt(stale) == 1
    [current] = second.claim()
    assert current.pk == stale.pk and current.claim_id != stale.claim_id

    stale.return_value = "stale"
    assert not ClaimedExecution.finish(stale, worker_id=first.process.name, using="default")
    assert (
        ClaimedExecution.fail(
            stale,
            {"exception_class_path": "builtins.ValueError", "message": "x", "traceback": "x"},
            worker_id=first.process.name,
            using="default",
        )
        is None
    )

    assert claimed_by(current) == second.process.pk
    assert state(current) == (Job.Status.RUNNING, ["claimed"])
    job = Job.objects.get(pk=current.pk)
    assert job.return_value is None
    assert len(job.attempts) == 1  # the interruption only

    second.perform(current)
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == "taken over"
    assert result.worker_ids == [first.process.name, second.process.name]
    assert [error.exception_class_path for error in result.errors] == [EXIT]


def test_a_stale_worker_that_runs_the_job_anyway_drops_its_outcome(db):
    result = flaky.enqueue("stale", 0)
    first, second = InProcessWorker(), InProcessWorker()
    [stale] = first.claim()
    interrupt(stale)
    [current] = second.claim()

    first.perform(stale)  # the task body runs, its outcome is dropped

    assert claimed_by(current) == second.process.pk
    assert Job.objects.get(pk=current.pk).status == Job.Status.RUNNING
    second.perform(current)
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.worker_ids == [first.process.name, second.process.name]
    assert Run.objects.filter(label="stale").count() == 2


def test_finish_of_a_finished_claim_records_nothing(worker):
    record.enqueue("twice")
    [job] = worker.claim()
    job.return_value = "one"
    assert ClaimedExecution.finish(job, worker_id="w", using="default")

    assert job.status == Job.Status.SUCCESSFUL
    job.return_value = "two"
    assert not ClaimedExecution.finish(job, worker_id="w", using="default")
    job.refresh_from_db()
    assert job.return_value == "one"
    assert len(job.attempts) == 1


# --- interruptions ---------------------------------------------------------------------


def test_an_interrupted_at_least_once_job_is_ready_again_with_the_interruption_recorded(worker):
    result = record.enqueue("again")
    [job] = worker.claim()

    assert interrupt(job, message="worker 7 exited") == 1

    assert state(job) == (Job.Status.READY, ["ready"])
    job = Job.objects.get(pk=job.pk)
    assert job.interruption_count == 1
    assert job.attempt_count == 1
    [attempt] = job.attempts
    assert attempt["worker_id"] == worker.process.name
    assert attempt["error"]["exception_class_path"] == EXIT
    assert attempt["error"]["message"] == "worker 7 exited"
    result.refresh()
    assert result.status == TaskResultStatus.READY
    assert [error.exception_class_path for error in result.errors] == [EXIT]
    assert result.errors[0].exception_class is ProcessExitError


def test_interrupt_does_not_count_against_max_attempts(worker):
    result = record.enqueue("one attempt")  # max_attempts=1
    [job] = worker.claim()
    interrupt(job)

    worker.work_off()

    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.attempts == 2


def interrupt_until_failed(worker, job, limit=10):
    """Claim and interrupt ``job`` until it fails; returns how many interruptions that took."""
    for count in range(1, limit + 1):
        [claimed] = worker.claim()
        assert claimed.pk == job.pk
        interrupt(claimed)
        if Job.objects.get(pk=job.pk).status == Job.Status.FAILED:
            return count
        assert state(job) == (Job.Status.READY, ["ready"])
    pytest.fail(f"job {job.pk} still not failed after {limit} interruptions")


def test_after_max_interruptions_an_at_least_once_job_fails(worker):
    result = record.enqueue("loops")
    job = Job.objects.get(pk=int(result.id))

    # Re-run after each of 3 interruptions (the default max_interruptions); the 4th fails it.
    assert interrupt_until_failed(worker, job) == 4

    assert state(job) == (Job.Status.FAILED, ["failed"])
    failed = FailedExecution.objects.get(job_id=job.pk)
    assert failed.exception_class_path == EXIT
    assert failed.message == "worker exited"
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert result.attempts == 4
    assert [error.exception_class_path for error in result.errors] == [EXIT] * 4


@pytest.mark.parametrize(("max_interruptions", "interruptions"), [(1, 2), (0, 1), (5, 6)])
def test_max_interruptions_comes_from_the_backend_options(worker, max_interruptions, interruptions):
    tasks = {
        "default": {
            **settings.TASKS["default"],
            "OPTIONS": {"max_interruptions": max_interruptions},
        }
    }
    with override_settings(TASKS=tasks):
        result = record.enqueue("configured")
        job = Job.objects.get(pk=int(result.id))
        assert interrupt_until_failed(worker, job) == interruptions


def test_an_interrupted_at_most_once_job_fails_at_once(worker, release):
    result = block_at_most_once.enqueue("at most once", release.path)
    [job] = worker.claim()

    interrupt(job, message="worker 8 exited")

    assert state(job) == (Job.Status.FAILED, ["failed"])
    failed = FailedExecution.objects.get(job_id=job.pk)
    assert failed.exception_class_path == EXIT
    assert failed.message == "worker 8 exited"
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert [error.exception_class_path for error in result.errors] == [EXIT]
    assert worker.claim() == []


def test_interrupt_of_several_claims_returns_the_count(worker):
    for i in range(3):
        record.enqueue(f"i{i}")
    worker.claim(limit=10)

    count = ClaimedExecution.interrupt(
        ClaimedExecution.objects.filter(process_id=worker.process.pk),
        ProcessExitError,
        "all of them",
        using="default",
    )

    assert count == 3
    assert ReadyExecution.objects.count() == 3
    assert not ClaimedExecution.objects.exists()


def test_an_interrupted_then_successful_job_has_one_error_the_interruption(worker):
    result = add.enqueue(2, 2)
    [job] = worker.claim()
    interrupt(job)

    worker.work_off()

    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 4
    assert [error.exception_class_path for error in result.errors] == [EXIT]
    assert "ProcessExitError: worker exited" in result.errors[0].traceback
    assert result.worker_ids == [worker.process.name] * 2


# --- processes -------------------------------------------------------------------------


def test_register_and_heartbeat(db):
    process = Process.register(Process.Kind.WORKER, metadata={"threads": 2}, using="default")
    stored = Process.objects.get(pk=process.pk)
    assert stored.kind == "worker" and stored.metadata == {"threads": 2}
    assert stored.name.startswith("worker-")
    long_ago = timezone.now() - timedelta(hours=1)
    Process.objects.filter(pk=process.pk).update(last_heartbeat_at=long_ago)

    assert process.heartbeat(using="default") is True
    assert Process.objects.get(pk=process.pk).last_heartbeat_at > long_ago

    Process.objects.filter(pk=process.pk).delete()
    assert process.heartbeat(using="default") is False


def test_process_names_are_unique(db):
    names = {Process.register(Process.Kind.WORKER, using="default").name for _ in range(20)}
    assert len(names) == 20


def test_prune_deregisters_stale_processes_and_interrupts_their_claims(db):
    stale, fresh = InProcessWorker(), InProcessWorker()
    old = record.enqueue("held by stale")
    [stale_job] = stale.claim()
    record.enqueue("held by fresh")
    [fresh_job] = fresh.claim()
    # Silent for two minutes, on another host (a process alive on this one is not pruned).
    Process.objects.filter(pk=stale.process.pk).update(
        last_heartbeat_at=timezone.now() - timedelta(seconds=120), hostname="another-host"
    )

    pruned = Process.prune(60, using="default")

    assert [process.pk for process in pruned] == [stale.process.pk]
    assert set(Process.objects.values_list("pk", flat=True)) == {fresh.process.pk}
    assert state(stale_job) == (Job.Status.READY, ["ready"])
    assert claimed_by(fresh_job) == fresh.process.pk
    old.refresh()
    assert [error.exception_class_path for error in old.errors] == [
        "dq.exceptions.ProcessPrunedError"
    ]
    assert old.errors[0].exception_class is ProcessPrunedError
    assert stale.process.name in old.errors[0].traceback


def test_prune_leaves_recent_processes_and_the_pruning_supervisor_and_its_children(db):
    recent, child = InProcessWorker(), InProcessWorker()
    supervisor = Process.register(Process.Kind.SUPERVISOR, using="default")
    Process.objects.filter(pk=child.process.pk).update(supervisor=supervisor)
    # All of another host: a process alive on this one is never pruned.
    Process.objects.update(hostname="another-host")
    Process.objects.filter(pk=recent.process.pk).update(
        last_heartbeat_at=timezone.now() - timedelta(seconds=30)
    )
    Process.objects.filter(pk__in=[child.process.pk, supervisor.pk]).update(
        last_heartbeat_at=timezone.now() - timedelta(seconds=600)
    )

    assert Process.prune(60, supervisor=supervisor, using="default") == []
    assert Process.objects.count() == 3

    pruned = Process.prune(60, using="default")
    assert sorted(p.pk for p in pruned) == sorted([child.process.pk, supervisor.pk])
    assert [p.pk for p in Process.prune(10, using="default")] == [recent.process.pk]
    assert not Process.objects.exists()


def test_deregister_interrupts_the_claims_and_deletes_the_row(worker):
    result = record.enqueue("deregistered")
    worker.claim()

    worker.process.deregister(ProcessExitError, "stopped", using="default")

    assert not Process.objects.filter(pk=worker.process.pk).exists()
    result.refresh()
    assert result.status == TaskResultStatus.READY
    assert [error.exception_class_path for error in result.errors] == [EXIT]


def test_recover_orphaned_claims_interrupts_claims_whose_process_is_gone(db):
    gone, alive = InProcessWorker(), InProcessWorker()
    orphan = record.enqueue("orphan")
    [orphan_job] = gone.claim()
    record.enqueue("kept")
    [kept_job] = alive.claim()
    gone_id = gone.process.pk
    Process.objects.filter(pk=gone_id).delete()

    assert Process.recover_orphaned_claims(using="default") == 1

    assert state(orphan_job) == (Job.Status.READY, ["ready"])
    assert claimed_by(kept_job) == alive.process.pk
    orphan.refresh()
    assert [error.exception_class_path for error in orphan.errors] == [
        "dq.exceptions.ProcessMissingError"
    ]
    assert orphan.errors[0].exception_class is ProcessMissingError
    assert orphan.worker_ids == [f"process-{gone_id}"]
    assert Process.recover_orphaned_claims(using="default") == 0


def lock_waiters():
    """How many transactions wait for a row lock now (live, not a snapshot)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")
        else:
            cursor.execute(
                "SELECT count(*) FROM information_schema.INNODB_TRX WHERE trx_state = 'LOCK WAIT'"
            )
        return cursor.fetchone()[0]


@contextlib.contextmanager
def locked_elsewhere(queryset, *, until_waited_for=False):
    """Lock ``queryset``'s rows in another thread's transaction, held until the block ends
    or, ``until_waited_for``, until another transaction waits for a lock."""
    if connection.vendor == "sqlite":
        pytest.skip("SQLite locks no rows")
    locked, release = threading.Event(), threading.Event()

    def hold():
        try:
            with transaction.atomic():
                assert list(queryset.select_for_update())
                locked.set()
                while not release.wait(timeout=0.02):
                    if until_waited_for and lock_waiters():
                        return
        finally:
            connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(timeout=30)
        yield
    finally:
        release.set()
        holder.join()


def test_a_dead_workers_run_found_locked_is_interrupted_as_a_run_once_unlocked(transactional_db):
    """The supervisor finds the claim of a run its SIGKILLed worker had not recorded yet
    locked (its transaction not yet rolled back by the database): skipped, and when its
    next maintenance finds it orphaned, it is a run that was interrupted, not a job
    claimed and never started that could go back to ready uncounted."""
    supervisor = Supervisor(conf.load("default"))
    supervisor.process = Process.register(Process.Kind.SUPERVISOR, using="default")
    dead = InProcessWorker()
    Process.objects.filter(pk=dead.process.pk).update(supervisor=supervisor.process, pid=2**22)
    result = record.enqueue("started, its start not written yet")
    [job] = dead.claim(started=False)
    claim = ClaimedExecution.objects.get(job_id=job.pk)

    with locked_elsewhere(ClaimedExecution.objects.filter(pk=claim.pk)):
        supervisor.recover(2**22, "killed by SIGKILL", {claim.pk})
        assert not Process.objects.filter(pk=dead.process.pk).exists()
        assert claimed_by(job) == dead.process.pk  # skipped, and remembered as a run
    supervisor.maintain()

    assert not supervisor.unrecovered
    assert Job.objects.get(pk=job.pk).interruption_count == 1
    result.refresh()
    assert [error.exception_class for error in result.errors] == [ProcessMissingError]


def test_a_rolled_back_exactly_once_run_is_interrupted_though_its_job_is_locked(
    transactional_db,
):
    """The transaction of an exactly_once run deadlocked with another that locks its job:
    the worker waits for that lock to record the interruption, rather than skip its own
    claim and leave it claimed with nobody running it."""
    worker = InProcessWorker()
    result = record_exactly_once.enqueue("deadlocked")
    [job] = worker.claim()
    error = TransactionRolledBackError("the transaction of its run was rolled back: deadlock")

    with locked_elsewhere(Job.objects.filter(pk=job.pk), until_waited_for=True):
        recorded = worker.worker.interrupt_run(job, error)

    assert recorded is not None
    assert recorded.interruption_count == 1
    assert claimed_by(job) is None
    result.refresh()
    assert [error.exception_class for error in result.errors] == [TransactionRolledBackError]


# --- retry of a failed job -------------------------------------------------------------


def test_retry_of_a_failed_job_runs_it_once_more_and_keeps_its_history(worker):
    result = flaky.using(max_attempts=1).enqueue("retried", 1)
    worker.work_off()
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    failed = FailedExecution.objects.get(job_id=int(result.id))

    before = timezone.now()
    assert FailedExecution.retry(failed.job_id, using="default") is True

    job = Job.objects.get(pk=int(result.id))
    assert state(job) == (Job.Status.READY, ["ready"])
    assert job.finished_at is None
    assert due_at(job) >= before  # due from the retry on: its pickup delay counts from it
    assert len(job.attempts) == 1
    assert FailedExecution.retry(failed.job_id, using="default") is False  # already retried

    assert [j.pk for j in worker.work_off()] == [job.pk]
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 2
    assert result.attempts == 2
    assert [error.exception_class_path for error in result.errors] == ["builtins.ValueError"]
    assert Run.objects.filter(label="retried").count() == 2


def test_a_retried_job_that_fails_again_runs_only_once_more(worker):
    result = boom.using(max_attempts=2, backoff=0).enqueue()
    # Fail it outright: two attempts, no backoff wait.
    for _ in range(2):
        [job] = worker.claim()
        ClaimedExecution.fail(
            job,
            {"exception_class_path": "builtins.RuntimeError", "message": "m", "traceback": "t"},
            worker_id=worker.process.name,
            using="default",
        )
    assert state(job) == (Job.Status.FAILED, ["failed"])

    FailedExecution.retry(job.pk, using="default")
    assert len(worker.work_off()) == 1

    assert state(job) == (Job.Status.FAILED, ["failed"])
    result.refresh()
    assert result.attempts == 3
    assert len(result.errors) == 3
