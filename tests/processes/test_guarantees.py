"""Execution guarantees, proven with real processes: exactly-once effects when a worker is
killed, per-task timeouts, worker recycling, cooperative shutdown, the loss of a whole
host, and outages of the database server (PostgreSQL, MariaDB). docs/guarantees.md names
these tests row by row.
"""

import re
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from django.db import connection

from dq import conf
from dq.db import database
from dq.models import ClaimedExecution, FailedExecution, Job, Process, ReadyExecution

from ..conftest import pid_alive, wait_until
from ..models import Run
from ..tasks import (
    block,
    block_at_most_once,
    block_exactly_once_announced,
    block_then_return,
    checkpoint_on_stop,
    flaky,
    outrun_timeout,
    record,
    swallow_a_failed_write,
)
from .test_processes import (
    PROCESS_EXIT,
    PROCESS_PRUNED,
    SHUTDOWN_TIMEOUT,
    assert_each_ran_once,
    enqueue_records,
    error_paths,
    fast,
    job_of,
    kill,
    run_pids,
    runs,
    started,
    wait_all_successful,
    wait_for_all_gone,
    wait_for_replacement,
    wait_for_runs,
    wait_for_status,
    workers_of,
)

pytestmark = pytest.mark.django_db(transaction=True)

PROCESS_MISSING = "dq.exceptions.ProcessMissingError"
JOB_TIMEOUT = "dq.exceptions.JobTimeoutError"
# How a job whose process died is recovered: by the supervisor that reaped the process, or,
# when the run's transaction still held the claim then, as an orphan at the next maintenance.
DIED = {PROCESS_EXIT, PROCESS_MISSING}
# How the jobs of a host that vanished are recovered, by another host.
VANISHED = {PROCESS_PRUNED, PROCESS_MISSING}

ends_sessions = pytest.mark.skipif(
    connection.vendor not in ("postgresql", "mysql"),
    reason="only PostgreSQL and MySQL can end another session's transaction "
    "(pg_terminate_backend, KILL)",
)


def began(path):
    """The pids of the runs that announced themselves in ``path`` (tasks.announce)."""
    try:
        return [int(line) for line in Path(path).read_text().split()]
    except FileNotFoundError:
        return []


def wait_for_timeout_error(result):
    def timed_out():
        job = job_of(result)
        return job if JOB_TIMEOUT in error_paths(job) else None

    return wait_until(timed_out, timeout=30, message=f"job {result.id} never timed out")


# exactly_once ---------------------------------------------------------------------------


def test_exactly_once_run_killed_mid_run_is_rolled_back_and_runs_again(dq_work, release, tmp_path):
    began_file = tmp_path / "began"
    work = dq_work(options=fast())
    # All registered first: on SQLite, the run holds the database's only write lock.
    supervisor, [worker], _ = started(work)
    result = block_exactly_once_announced.enqueue("x", release.path, str(began_file))
    wait_until(lambda: began(began_file) == [worker.pid], message="the run never began")
    assert ClaimedExecution.objects.filter(job_id=result.id).exists()
    # Written inside the run's transaction: invisible until it commits.
    assert runs("x:started") == 0

    kill(worker.pid)
    replacement = wait_for_replacement(supervisor, worker)
    wait_until(
        lambda: began(began_file) == [worker.pid, replacement.pid],
        message="the job did not run again",
    )
    # The killed run's write died with its transaction.
    assert runs("x:started") == 0
    release.set()
    job = wait_for_status(result, Job.Status.SUCCESSFUL)

    assert run_pids("x:started") == [replacement.pid]
    assert run_pids("x:finished") == [replacement.pid]
    assert job.interruption_count == 1
    [interruption] = error_paths(job)
    assert interruption in DIED
    result.refresh()
    assert result.return_value == "x"
    assert result.attempts == 2
    assert not ClaimedExecution.objects.exists()
    assert "killed by SIGKILL" in work.output()


def test_an_exactly_once_run_that_outlasts_the_shutdown_timeout_is_rolled_back_and_runs_again(
    dq_work, release, tmp_path
):
    began_file = tmp_path / "began"
    first = dq_work(options=fast(shutdown_timeout=1))
    # All registered first: on SQLite, the run holds the database's only write lock.
    _, [worker], _ = started(first)
    result = block_exactly_once_announced.enqueue("x", release.path, str(began_file))
    wait_until(lambda: began(began_file) == [worker.pid], message="the run never began")

    first.send(signal.SIGTERM)
    first.wait(timeout=30)
    assert not pid_alive(worker.pid)
    assert runs("x:started") == 0, "the interrupted run's write was rolled back"
    # Not waiting for every process of the next dq_work to register: on SQLite, the rerun's
    # transaction holds the database's only write lock until it ends.
    dq_work(options=fast())
    wait_until(lambda: len(began(began_file)) == 2, message="the job did not run again")
    rerun_pid = began(began_file)[1]
    release.set()
    job = wait_for_status(result, Job.Status.SUCCESSFUL)

    [interruption] = error_paths(job)
    assert interruption in {SHUTDOWN_TIMEOUT, *DIED}
    assert rerun_pid != worker.pid
    assert run_pids("x:started") == run_pids("x:finished") == [rerun_pid]


def test_an_exactly_once_task_that_breaks_its_transaction_fails_clearly_and_commits_nothing(
    worker,
):
    result = swallow_a_failed_write.enqueue("broken")
    worker.work_off()
    result.refresh()
    assert result.status == "FAILED"
    [error] = result.errors
    assert error.exception_class_path == "django.db.transaction.TransactionManagementError"
    assert "You can't execute queries until the end of the 'atomic' block" in error.traceback
    assert runs("broken") == 0


# retries after a partial success --------------------------------------------------------


def test_at_most_once_governs_interruptions_only_a_raising_task_is_retried_per_max_attempts(
    worker,
):
    """Like at_least_once, the retry runs the whole task again: the failed attempt's
    writes stay (exactly_once rolls them back: test_exactly_once)."""
    result = flaky.using(delivery="at_most_once").enqueue("partial", 1)
    worker.work_off()
    result.refresh()
    assert result.status == "SUCCESSFUL"
    assert [error.exception_class_path for error in result.errors] == ["builtins.ValueError"]
    assert runs("partial") == 2


# timeouts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sibling_ends", ["finished-during-the-recycle", "re-run-after-the-recycle"]
)
def test_a_job_that_outruns_its_timeout_is_interrupted_and_its_worker_recycled(
    dq_work, tmp_path, sibling_ends
):
    """The runaway thread cannot be stopped, so its worker is replaced; the other job it was
    running ends in the graceful stop, or, past the shutdown timeout, is re-run."""
    during = sibling_ends == "finished-during-the-recycle"
    release_timed, release_sibling = tmp_path / "timed", tmp_path / "sibling"
    timed = outrun_timeout.enqueue("t", str(release_timed))
    sibling = block.enqueue("b", str(release_sibling))
    work = dq_work("--threads", "2", options=fast(shutdown_timeout=30 if during else 1))
    supervisor, [worker], _ = started(work)
    assert wait_for_runs("t:started", 1) == [worker.pid]
    assert wait_for_runs("b:started", 1) == [worker.pid]

    job = wait_for_timeout_error(timed)
    assert job.interruption_count == 1
    assert "timeout of 1" in job.errors[0]["message"]
    # Its rerun, in the next worker, may now finish.
    release_timed.touch()
    if during:
        assert pid_alive(worker.pid), "the recycled worker waits for its other job"
        assert job_of(sibling).status == Job.Status.RUNNING
        release_sibling.touch()
        replacement = wait_for_replacement(supervisor, worker)
        sibling_job = wait_for_status(sibling, Job.Status.SUCCESSFUL)
        assert sibling_job.errors == []
        assert run_pids("b:finished") == [worker.pid]
    else:
        replacement = wait_for_replacement(supervisor, worker)
        assert wait_for_runs("b:started", 2) == [worker.pid, replacement.pid]
        release_sibling.touch()
        sibling_job = wait_for_status(sibling, Job.Status.SUCCESSFUL)
        assert error_paths(sibling_job) == [SHUTDOWN_TIMEOUT]
        assert run_pids("b:finished") == [replacement.pid]

    job = wait_for_status(timed, Job.Status.SUCCESSFUL)
    assert error_paths(job) == [JOB_TIMEOUT]
    assert job.worker_ids == [worker.name, replacement.name]
    assert run_pids("t:started") == [worker.pid, replacement.pid]
    assert not ClaimedExecution.objects.exists()
    output = work.output()
    assert "outran its timeout" in output
    assert "recycling" in output
    assert work.stop() == 0, output


def test_a_timed_out_at_most_once_job_fails(dq_work, release):
    result = outrun_timeout.using(delivery="at_most_once").enqueue("amo", release.path)
    work = dq_work(options=fast())
    supervisor, [worker], _ = started(work)

    job = wait_for_status(result, Job.Status.FAILED)
    assert error_paths(job) == [JOB_TIMEOUT]
    assert FailedExecution.objects.get(job=job).exception_class_path == JOB_TIMEOUT
    # The worker is replaced, and the replacement takes work but not the failed job.
    replacement = wait_for_replacement(supervisor, worker)
    later = record.enqueue("after")
    wait_for_status(later, Job.Status.SUCCESSFUL)
    assert run_pids("after") == [replacement.pid]
    assert run_pids("amo:started") == [worker.pid]
    assert job_of(result).status == Job.Status.FAILED


@ends_sessions
def test_a_job_does_not_fail_on_a_connection_cut_while_its_thread_was_idle(dq_work):
    """The server ends a pool thread's session while it waits for work (as
    idle_session_timeout, wait_timeout or a proxy would); its next job reconnects instead
    of failing."""
    dq_work("--threads", "1", options=fast())
    first = record.enqueue("first")
    wait_for_status(first, Job.Status.SUCCESSFUL)

    def idle_thread_sessions():
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                # The pool thread's session: the last statement it ran was the task's own
                # write (the run's end is written by the worker's main thread).
                cursor.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    """ AND state = 'idle' AND query LIKE '%%INSERT INTO "tests_run"%%'"""
                    " AND now() - state_change > interval '1.5 seconds'"
                )
            else:
                # MySQL does not say what a session ran last: every session idle for 2 s
                # (the worker's main loop polls ten times a second; the supervisor's and
                # the dispatcher's sessions reconnect too).
                cursor.execute(
                    "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = DATABASE()"
                    " AND COMMAND = 'Sleep' AND TIME >= 2 AND ID <> CONNECTION_ID()"
                )
            return [session for (session,) in cursor.fetchall()]

    sessions = wait_until(idle_thread_sessions, message="no idle pool-thread session")
    for session in sessions:
        database("default").terminate_session(session)

    second = record.enqueue("second")
    wait_until(lambda: job_of(second).status in (Job.Status.SUCCESSFUL, Job.Status.FAILED))
    assert job_of(second).status == Job.Status.SUCCESSFUL, job_of(second).errors


@ends_sessions
def test_a_timed_out_exactly_once_job_is_rolled_back_and_runs_again(dq_work, release):
    result = outrun_timeout.using(delivery="exactly_once").enqueue("eo", release.path)
    work = dq_work(options=fast())
    supervisor, [worker], _ = started(work)

    job = wait_for_timeout_error(result)
    # Its session was ended first: the run's write was rolled back.
    assert runs("eo:started") == 0
    release.set()
    replacement = wait_for_replacement(supervisor, worker)
    job = wait_for_status(result, Job.Status.SUCCESSFUL)

    assert error_paths(job) == [JOB_TIMEOUT]
    assert run_pids("eo:started") == [replacement.pid], work.output()
    assert run_pids("eo:finished") == [replacement.pid]
    assert "outran its timeout" in work.output()


# recycling and cooperative shutdown -----------------------------------------------------


def test_a_worker_is_recycled_after_max_jobs_and_no_job_is_lost(dq_work):
    labels = enqueue_records(20)
    work = dq_work(options=fast(workers=[{"threads": 1, "max_jobs": 5}]))
    wait_all_successful(len(labels))

    assert_each_ran_once(labels)
    per_worker = Counter(Run.objects.values_list("pid", flat=True))
    assert sorted(per_worker.values()) == [5, 5, 5, 5], per_worker
    assert work.output().count("(max_jobs 5)") >= 4
    assert not ClaimedExecution.objects.exists()
    assert work.stop() == 0, work.output()


def test_a_worker_is_recycled_above_max_memory_and_no_job_is_lost(dq_work):
    labels = enqueue_records(3)
    # Far below what any Python process takes: recycled after every job.
    work = dq_work(options=fast(workers=[{"threads": 1, "max_memory": 1}]))
    wait_all_successful(len(labels))

    assert_each_ran_once(labels)
    per_worker = Counter(Run.objects.values_list("pid", flat=True))
    assert sorted(per_worker.values()) == [1, 1, 1], per_worker
    assert work.output().count("(max_memory 1)") >= 3
    assert work.stop() == 0, work.output()


def test_a_long_task_checkpoints_when_its_worker_is_stopping(dq_work):
    result = checkpoint_on_stop.enqueue("long")
    work = dq_work(options=fast(shutdown_timeout=60))
    _, [worker], _ = started(work)
    assert wait_for_runs("long:started", 1) == [worker.pid]

    work.send(signal.SIGTERM)
    # Far below the 60 s the worker would wait for a task that did not look.
    assert work.wait(timeout=20) == 0, work.output()
    job = job_of(result)
    assert job.status == Job.Status.SUCCESSFUL
    assert job.errors == []
    assert job.return_value == "checkpointed"
    assert run_pids("long:checkpoint") == [worker.pid]


# host loss ------------------------------------------------------------------------------

HOST_LOSS = {
    "heartbeat_interval": 0.5,
    "alive_threshold": 3,
    "maintenance_interval": 1,
    "shutdown_timeout": 2,
}
# Scheduling on a busy machine, on top of alive_threshold + maintenance_interval.
RECOVERY_MARGIN = 3


def test_jobs_of_a_vanished_host_are_recovered_within_alive_threshold_plus_maintenance_interval(
    dq_work, release
):
    at_least_once = block.enqueue("alo", release.path)
    at_most_once = block_at_most_once.enqueue("amo", release.path)
    lost = dq_work("--threads", "2", options=HOST_LOSS, new_session=True)
    lost_supervisor, [lost_worker], lost_dispatcher = started(lost)
    assert wait_for_runs("alo:started", 1) == wait_for_runs("amo:started", 1) == [lost_worker.pid]
    survivor = dq_work(options=HOST_LOSS)
    _, [survivor_worker], _ = started(survivor)

    # One SIGKILL to the process group: supervisor, worker and dispatcher at once, with
    # nobody left to reap them or to deregister anything.
    vanished_at = time.monotonic()
    lost.kill()
    for pid in (lost_supervisor.pid, lost_worker.pid, lost_dispatcher.pid):
        wait_until(lambda pid=pid: not pid_alive(pid), timeout=10, message=f"{pid} lives on")

    limit = HOST_LOSS["alive_threshold"] + HOST_LOSS["maintenance_interval"] + RECOVERY_MARGIN

    def recovered():
        return (
            job_of(at_most_once).status == Job.Status.FAILED
            and job_of(at_least_once).interruption_count == 1
        )

    wait_until(recovered, timeout=limit, message=f"not recovered within {limit}s")
    recovered_after = time.monotonic() - vanished_at
    # Not before the heartbeats were older than the threshold: liveness is not guessed.
    assert recovered_after >= HOST_LOSS["alive_threshold"] - HOST_LOSS["heartbeat_interval"]

    amo = job_of(at_most_once)
    [amo_error] = error_paths(amo)
    assert amo_error in VANISHED
    assert FailedExecution.objects.get(job=amo).exception_class_path == amo_error
    [alo_error] = error_paths(job_of(at_least_once))
    assert alo_error in VANISHED

    release.set()
    wait_for_status(at_least_once, Job.Status.SUCCESSFUL)
    assert run_pids("alo:started") == [lost_worker.pid, survivor_worker.pid]
    assert run_pids("alo:finished") == [survivor_worker.pid]
    assert run_pids("amo:started") == [lost_worker.pid]
    assert job_of(at_most_once).status == Job.Status.FAILED
    wait_for_all_gone(lost_supervisor)  # those stale a little later are pruned a little later
    assert "pruned" in survivor.output()


def test_by_default_a_vanished_host_is_recovered_well_within_a_minute(settings):
    settings.TASKS = {"default": {"BACKEND": "dq.backend.DQBackend", "OPTIONS": {}}}
    config = conf.load("default")
    assert config.alive_threshold + config.maintenance_interval < 60
    assert config.heartbeat_interval < config.alive_threshold


# database outages ----------------------------------------------------------------------

OUTAGE = {
    "heartbeat_interval": 0.5,
    "alive_threshold": 20,  # longer than the outages below
    "maintenance_interval": 0.5,
    "shutdown_timeout": 5,
    "workers": [{"processes": 2, "threads": 3}],
}
DATABASE_ERRORS = {"django.db.utils.OperationalError", "django.db.utils.InterfaceError"}


def wait_until_every_process_noticed(work, supervisor, worker_rows, *, heartbeats=1):
    """Wait until the supervisor has logged a database error and each worker ``heartbeats``
    failed heartbeats: they are all cut off, and have been for that many intervals."""

    def noticed():
        output = work.output()
        return f"{supervisor.name}: database error" in output and all(
            output.count(f"{worker.name}: heartbeat failed") >= heartbeats for worker in worker_rows
        )

    wait_until(noticed, timeout=60, message="not every process noticed the outage")


def start_across_the_outage(tmp_path):
    """Jobs that will be running when the database goes: one whose thread then needs the
    database only to record its end, and an exactly_once one whose transaction is cut."""
    release, began_file = tmp_path / "release", tmp_path / "began"
    across = block_then_return.enqueue("across", str(release))
    across_exactly_once = block_exactly_once_announced.using(max_attempts=2).enqueue(
        "across-eo", str(release), str(began_file)
    )
    return release, began_file, across, across_exactly_once


@pytest.mark.parametrize("outage", ["restart", "stopped-for-a-while"])
def test_every_process_survives_a_database_server_outage_and_no_job_is_lost(
    dq_work, restartable_db, tmp_path, outage
):
    """The server (PostgreSQL or MariaDB, restartable_db) restarts, or stays down until
    every process has noticed, while jobs run and wait."""
    before = enqueue_records(30)
    release, began_file, across, across_exactly_once = start_across_the_outage(tmp_path)
    work = dq_work(options=OUTAGE)
    supervisor, worker_rows, _ = started(work, workers=2)
    wait_for_runs("across:started", 1)
    wait_until(lambda: began(began_file), message="the exactly_once job never began")
    wait_all_successful(len(before))

    if outage == "restart":
        restartable_db.restart()
    else:
        restartable_db.stop()
        wait_until_every_process_noticed(work, supervisor, worker_rows, heartbeats=2)
        restartable_db.start()
    after = [f"after-{i}" for i in range(30)]
    record.enqueue_many([((label,), {}) for label in after])
    release.touch()
    wait_all_successful(len(before) + len(after) + 2, timeout=90)

    # The same processes carry on.
    assert work.proc.poll() is None
    assert Process.objects.filter(pk=supervisor.pk).exists()
    assert {w.pid for w in workers_of(supervisor)} == {w.pid for w in worker_rows}
    assert all(pid_alive(w.pid) for w in worker_rows)
    # Each job ran once; the jobs started after the outage on threads whose connections the
    # outage cut ran as well as any.
    assert_each_ran_once_but(["across:started", "across-eo:started", "across-eo:finished"])
    assert set(Run.objects.values_list("label", flat=True)) >= {*before, *after}
    # The end of the job running across the outage was recorded once the database was back.
    job = job_of(across)
    assert (job.attempt_count, job.errors) == (1, [])
    output = work.output()
    # Written by its worker's main loop, which waited the outage out.
    assert re.search(r"worker-\w+: database error; retrying", output), output
    # The exactly_once attempt whose transaction was cut failed and was retried; only the
    # retry's writes exist.
    job = job_of(across_exactly_once)
    assert job.attempt_count == 2
    assert set(error_paths(job)) <= DATABASE_ERRORS, error_paths(job)
    assert runs("across-eo:started") == runs("across-eo:finished") == 1
    assert not ClaimedExecution.objects.exists()
    assert not ReadyExecution.objects.exists()
    assert f"{supervisor.name}: database error" in output
    assert work.stop() == 0, output


def assert_each_ran_once_but(labels):
    """Every Run label but ``labels`` was written once."""
    counts = Counter(Run.objects.exclude(label__in=labels).values_list("label", flat=True))
    assert all(n == 1 for n in counts.values()), [label for label, n in counts.items() if n > 1]


def test_an_outage_longer_than_the_alive_threshold_takes_no_live_process_for_dead(
    dq_work, restartable_db, tmp_path
):
    """Nobody can heartbeat while the database is down: once it is back, no host may take
    another's live processes for dead for the silence of the outage, prune them and
    interrupt their running jobs."""
    options = {**OUTAGE, "alive_threshold": 3, "workers": [{"threads": 2}]}
    release = tmp_path / "release"
    at_least_once = block_then_return.enqueue("alo", str(release))
    at_most_once = block_then_return.using(delivery="at_most_once").enqueue("amo", str(release))
    busy = dq_work(options=options)
    busy_supervisor, [busy_worker], _ = started(busy)
    assert wait_for_runs("alo:started", 1) == wait_for_runs("amo:started", 1) == [busy_worker.pid]
    idle = dq_work(options=options)
    idle_supervisor, [idle_worker], _ = started(idle)

    restartable_db.stop()
    # Longer than the alive threshold: more heartbeats missed in a row than it allows.
    missed = int(options["alive_threshold"] / options["heartbeat_interval"]) + 2
    wait_until_every_process_noticed(busy, busy_supervisor, [busy_worker], heartbeats=missed)
    wait_until_every_process_noticed(idle, idle_supervisor, [idle_worker], heartbeats=missed)
    restartable_db.start()
    # Both hosts work again: each has heartbeaten and maintained since.
    later = [record.enqueue(f"later-{i}") for i in range(4)]
    for result in later:
        wait_for_status(result, Job.Status.SUCCESSFUL, timeout=60)
    release.touch()

    for result in (at_least_once, at_most_once):
        job = wait_for_status(result, Job.Status.SUCCESSFUL, timeout=60)
        assert (job.attempt_count, job.errors) == (1, [])
    assert runs("alo:started") == runs("amo:started") == 1
    for work, supervisor, worker in (
        (busy, busy_supervisor, busy_worker),
        (idle, idle_supervisor, idle_worker),
    ):
        assert work.proc.poll() is None, work.output()
        assert [w.pid for w in workers_of(supervisor)] == [worker.pid]
        assert "pruned" not in work.output()
        assert work.stop() == 0, work.output()


def test_a_job_whose_timeout_falls_in_an_outage_is_recovered_once_the_database_is_back(
    dq_work, restartable_db, release
):
    """The worker cannot record the interruption, is recycled anyway and exits while the
    database is down; its supervisor recovers the job once the database is back."""
    result = outrun_timeout.using(timeout=3).enqueue("t", release.path)
    work = dq_work(options={**OUTAGE, "workers": [{"threads": 2}]})
    supervisor, [worker], _ = started(work)
    assert wait_for_runs("t:started", 1) == [worker.pid]

    restartable_db.stop()
    # The deadline passed while the worker could not record the interruption.
    wait_until(
        lambda: "in enforce_timeouts" in work.output(),
        timeout=30,
        message="the worker never tried to enforce the timeout during the outage",
    )
    wait_until(lambda: not pid_alive(worker.pid), message="the worker was not recycled")
    restartable_db.start()

    job = wait_until(
        lambda: job_of(result).interruption_count and job_of(result),
        message="the job was never recovered",
    )
    [interruption] = error_paths(job)
    assert interruption in {JOB_TIMEOUT, *DIED}
    replacement = wait_for_replacement(supervisor, worker)
    release.set()
    job = wait_for_status(result, Job.Status.SUCCESSFUL)
    assert run_pids("t:started") == [worker.pid, replacement.pid]
    assert not ClaimedExecution.objects.exists()
    assert "outran its timeout" in work.output()
    assert work.stop() == 0, work.output()
