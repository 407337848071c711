"""dq_work across process boundaries: real forks, real signals, committed data.

Each test starts the real ``python -m django dq_work`` (the ``dq_work`` fixture), acts on
the processes it forked (their pids come from their ``Process`` rows), and waits on
conditions with deadlines. "Nothing happens" is only asserted after a positive event
that proves the system had the chance to do it.
"""

import contextlib
import os
import signal
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.db.models import Count, Q
from django.tasks import TaskResultStatus
from django.utils import timezone

from dq.models import ClaimedExecution, FailedExecution, Job, Process, ReadyExecution
from dq.queues import QueueSelector

from ..conftest import pid_alive, wait_until
from ..models import Run
from ..tasks import add, block, block_at_most_once, boom, kill_own_worker, record, record_after_work

pytestmark = pytest.mark.django_db(transaction=True)

PROCESS_EXIT = "dq.exceptions.ProcessExitError"
PROCESS_PRUNED = "dq.exceptions.ProcessPrunedError"
SHUTDOWN_TIMEOUT = "dq.exceptions.ShutdownTimeoutError"
INTERRUPTIONS = {
    PROCESS_EXIT,
    PROCESS_PRUNED,
    SHUTDOWN_TIMEOUT,
    "dq.exceptions.ProcessMissingError",
}

# Short intervals so that heartbeats, pruning and graceful stops happen within a test.
FAST = {
    "heartbeat_interval": 0.2,
    "alive_threshold": 3,
    "maintenance_interval": 0.2,
    "shutdown_timeout": 2,
}


def fast(**overrides):
    return {**FAST, **overrides}


def started(work, *, workers=1, timeout=30):
    """Wait until ``work``'s supervisor and all its children are registered.
    Returns (supervisor, [worker, ...], dispatcher) as Process rows."""

    def registered():
        if work.proc.poll() is not None:
            pytest.fail(f"dq_work exited with {work.proc.returncode}:\n{work.output()}")
        supervisor = Process.objects.filter(kind=Process.Kind.SUPERVISOR, pid=work.pid).first()
        if supervisor is None:
            return None
        children = list(Process.objects.filter(supervisor=supervisor).order_by("pk"))
        worker_rows = [p for p in children if p.kind == Process.Kind.WORKER]
        dispatchers = [p for p in children if p.kind == Process.Kind.DISPATCHER]
        if len(worker_rows) == workers and len(dispatchers) == 1:
            return supervisor, worker_rows, dispatchers[0]
        return None

    return wait_until(registered, timeout=timeout, message="dq_work never registered")


def workers_of(supervisor):
    return list(Process.objects.filter(supervisor=supervisor, kind=Process.Kind.WORKER))


def wait_for_replacement(supervisor, worker):
    """The new worker ``supervisor`` forked after ``worker`` died."""

    def replacement():
        return next((w for w in workers_of(supervisor) if w.pid != worker.pid), None)

    return wait_until(replacement, timeout=15, message=f"{worker} was not replaced")


def wait_for_all_gone(supervisor):
    """Wait until the rows of a dead ``supervisor`` and of its children are pruned."""
    rows = Process.objects.filter(Q(pk=supervisor.pk) | Q(supervisor=supervisor))
    wait_until(lambda: not rows.exists(), timeout=15, message=f"{supervisor} was never pruned")


def job_of(result):
    return Job.objects.get(pk=result.id)


def wait_for_status(result, status, *, timeout=30):
    def reached():
        return job_of(result).status == status

    wait_until(reached, timeout=timeout, message=f"job {result.id} never became {status}")
    return job_of(result)


def run_pids(label):
    return list(Run.objects.filter(label=label).order_by("pk").values_list("pid", flat=True))


def runs(label):
    return Run.objects.filter(label=label).count()


def wait_for_runs(label, count, *, timeout=30):
    wait_until(
        lambda: runs(label) >= count,
        timeout=timeout,
        message=f"{label!r} did not run {count} time(s)",
    )
    return run_pids(label)


def kill(pid):
    """SIGKILL a process dq_work forked and wait until it is gone."""
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(pid), timeout=10, message=f"pid {pid} outlived SIGKILL")


def error_paths(job):
    return [error["exception_class_path"] for error in job.errors]


@pytest.fixture
def strays():
    """Pids of processes that outlive the supervisor the dq_work fixture reaps (its orphaned
    children); SIGKILLed at teardown if they are still dq processes."""
    pids = []
    yield pids
    for pid in pids:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if b"dq_work" in command and pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_runs_jobs_and_stops_gracefully(dq_work):
    results = [add.enqueue(i, i) for i in range(10)]
    work = dq_work("--threads", "2")
    wait_until(lambda: Job.objects.filter(status=Job.Status.SUCCESSFUL).count() == 10)
    for result in results:
        result.refresh()
        assert result.status == TaskResultStatus.SUCCESSFUL
        assert result.return_value == 2 * int(result.args[0])
    kinds = set(Process.objects.values_list("kind", flat=True))
    assert kinds == {"supervisor", "worker", "dispatcher"}
    assert work.stop(signal.SIGTERM) == 0, work.output()
    assert not Process.objects.exists()


def test_registers_supervisor_workers_and_dispatcher_with_live_heartbeats(dq_work):
    work = dq_work("--processes", "2", "--queues", "a,b", options=fast())
    supervisor, worker_rows, dispatcher = started(work, workers=2)

    assert supervisor.supervisor_id is None
    assert supervisor.hostname == dispatcher.hostname == worker_rows[0].hostname
    pids = {supervisor.pid, dispatcher.pid, *(w.pid for w in worker_rows)}
    assert len(pids) == 4, "every process is a process of its own"
    assert all(pid_alive(pid) for pid in pids)
    for worker in worker_rows:
        assert worker.metadata["queues"] == ["a", "b"]
    assert Process.objects.count() == 4

    seen = dict(Process.objects.values_list("pk", "last_heartbeat_at"))

    def all_heartbeats_advanced():
        now = dict(Process.objects.values_list("pk", "last_heartbeat_at"))
        return now.keys() == seen.keys() and all(now[pk] > seen[pk] for pk in seen)

    wait_until(all_heartbeats_advanced, timeout=10, message="heartbeats did not advance")
    assert "dq_work:" in work.output()
    assert "queues a,b" in work.output()

    assert work.stop(signal.SIGTERM) == 0, work.output()
    assert not Process.objects.exists()


def test_dead_idle_worker_is_replaced(dq_work):
    work = dq_work(options=fast())
    supervisor, [worker], _ = started(work)

    kill(worker.pid)
    replacement = wait_for_replacement(supervisor, worker)
    # The supervisor deregistered the dead worker before forking its replacement.
    assert not Process.objects.filter(pk=worker.pk).exists()
    assert workers_of(supervisor) == [replacement]
    assert pid_alive(replacement.pid)

    result = record.enqueue("after")
    wait_for_status(result, Job.Status.SUCCESSFUL)
    assert run_pids("after") == [replacement.pid]
    assert "killed by SIGKILL" in work.output()


def test_the_supervisor_never_forks_while_it_runs_threads(dq_work):
    """Python warns when a process with threads forks (the child gets their locks in
    whatever state they were): the supervisor forks its children, and again a replacement
    for a dead one, from its one thread."""
    work = dq_work(options=fast(), env={"PYTHONWARNINGS": "always::DeprecationWarning"})
    supervisor, [worker], _ = started(work)
    os.kill(worker.pid, signal.SIGKILL)
    wait_for_replacement(supervisor, worker)
    assert work.stop() == 0
    assert "multi-threaded" not in work.output()
    assert "DeprecationWarning" not in work.output()


def test_dead_dispatcher_is_replaced(dq_work):
    work = dq_work(options=fast())
    supervisor, _, dispatcher = started(work)

    kill(dispatcher.pid)

    def replacement():
        rows = Process.objects.filter(supervisor=supervisor, kind=Process.Kind.DISPATCHER)
        return next((row for row in rows if row.pid != dispatcher.pid), None)

    new_dispatcher = wait_until(replacement, timeout=15, message="no new dispatcher")
    assert not Process.objects.filter(pk=dispatcher.pk).exists()
    assert pid_alive(new_dispatcher.pid)

    # A deferred job only becomes ready through a dispatcher.
    result = record.using(run_after=timezone.now() + timedelta(seconds=0.5)).enqueue("later")
    assert job_of(result).status == Job.Status.SCHEDULED
    wait_for_status(result, Job.Status.SUCCESSFUL)
    assert "killed by SIGKILL" in work.output()


def test_worker_killed_mid_job_at_least_once_runs_again(dq_work, release):
    result = block.enqueue("a", release.path)
    work = dq_work(options=fast())
    supervisor, [worker], _ = started(work)
    assert wait_for_runs("a:started", 1) == [worker.pid]

    kill(worker.pid)
    pids = wait_for_runs("a:started", 2)
    release.set()
    job = wait_for_status(result, Job.Status.SUCCESSFUL)

    [replacement] = workers_of(supervisor)
    assert pids == [worker.pid, replacement.pid]
    assert run_pids("a:finished") == [pids[1]]
    assert job.interruption_count == 1
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.attempts == 2
    assert [error.exception_class_path for error in result.errors] == [PROCESS_EXIT]
    assert "SIGKILL" in job.errors[0]["message"]
    assert "SIGKILL" in work.output()
    assert not ClaimedExecution.objects.exists()


def test_interruptions_are_bounded(dq_work, release):
    result = block.enqueue("loop", release.path)
    work = dq_work(options=fast(max_interruptions=1))
    supervisor, _, _ = started(work)

    for attempt in (1, 2):
        pids = wait_for_runs("loop:started", attempt)
        kill(pids[-1])
    job = wait_for_status(result, Job.Status.FAILED)

    assert error_paths(job) == [PROCESS_EXIT, PROCESS_EXIT]
    assert job.interruption_count == 2
    assert FailedExecution.objects.get(job=job).exception_class_path == PROCESS_EXIT
    assert not ReadyExecution.objects.filter(job=job).exists()

    # The replacement worker is up and taking work, yet the failed job does not run again.
    later = record.enqueue("after")
    wait_for_status(later, Job.Status.SUCCESSFUL)
    [replacement] = workers_of(supervisor)
    assert run_pids("after") == [replacement.pid]
    assert runs("loop:started") == 2
    assert job_of(result).status == Job.Status.FAILED


def test_job_that_kills_its_worker_does_not_loop_forever(dq_work):
    result = kill_own_worker.enqueue("suicide")
    work = dq_work(options=fast(max_interruptions=2))
    supervisor, _, _ = started(work)

    job = wait_for_status(result, Job.Status.FAILED)
    assert error_paths(job) == [PROCESS_EXIT] * 3
    assert len(set(run_pids("suicide"))) == 3, "each run killed a different worker"

    # The last replacement is up and taking work, yet the failed job does not run again.
    later = record.enqueue("after")
    wait_for_status(later, Job.Status.SUCCESSFUL)
    [replacement] = workers_of(supervisor)
    assert run_pids("after") == [replacement.pid]
    assert runs("suicide") == 3
    assert work.output().count("killed by SIGKILL") == 3


def test_worker_killed_mid_job_at_most_once_fails(dq_work, release):
    result = block_at_most_once.enqueue("once", release.path)
    work = dq_work(options=fast())
    supervisor, [worker], _ = started(work)
    assert wait_for_runs("once:started", 1) == [worker.pid]

    kill(worker.pid)
    job = wait_for_status(result, Job.Status.FAILED)
    release.set()
    replacement = wait_for_replacement(supervisor, worker)
    later = record.enqueue("after")
    wait_for_status(later, Job.Status.SUCCESSFUL)
    assert run_pids("after") == [replacement.pid]

    assert runs("once:started") == 1
    assert runs("once:finished") == 0
    job = job_of(result)
    assert job.status == Job.Status.FAILED
    assert error_paths(job) == [PROCESS_EXIT]
    assert FailedExecution.objects.get(job=job).exception_class_path == PROCESS_EXIT
    result.refresh()
    assert result.status == TaskResultStatus.FAILED


def test_children_of_a_killed_supervisor_stop_and_nothing_is_lost(dq_work, release, strays):
    result = block.enqueue("a", release.path)
    # Two threads, so the worker has an idle one; a slow poll, so a job enqueued after the
    # supervisor's death could only be taken by a worker that failed to notice the death.
    options = fast(shutdown_timeout=1, workers=[{"threads": 2, "polling_interval": 2}])
    old = dq_work(options=options)
    old_supervisor, [worker], dispatcher = started(old)
    strays += [worker.pid, dispatcher.pid]
    assert wait_for_runs("a:started", 1) == [worker.pid]

    old.proc.kill()
    old.proc.wait()
    later = record.enqueue("later")
    for pid in (worker.pid, dispatcher.pid):
        wait_until(lambda pid=pid: not pid_alive(pid), timeout=15, message=f"{pid} lives on")

    assert runs("later") == 0
    assert job_of(later).status == Job.Status.READY
    assert job_of(later).attempt_count == 0, "never claimed"

    new = dq_work(options=fast())
    new_supervisor, [new_worker], _ = started(new)
    release.set()
    wait_for_status(result, Job.Status.SUCCESSFUL)
    wait_for_status(later, Job.Status.SUCCESSFUL)
    assert run_pids("a:finished") == [new_worker.pid]
    assert run_pids("later") == [new_worker.pid]
    # However it was recovered (by the old worker giving up at its shutdown timeout, or by
    # the new supervisor pruning the dead processes), the first run counts as interrupted.
    job = job_of(result)
    assert job.interruption_count == 1
    assert error_paths(job)[0] in INTERRUPTIONS
    wait_for_all_gone(old_supervisor)
    assert set(Process.objects.values_list("supervisor_id", flat=True)) == {
        None,
        new_supervisor.pk,
    }


def test_jobs_of_a_host_killed_outright_are_recovered_by_pruning(dq_work, release):
    """kill -9 of every process at once (the host vanished): another supervisor finds the
    dead processes by their heartbeat age and the job runs again."""
    result = block.enqueue("a", release.path)
    old = dq_work(options=fast())
    old_supervisor, [worker], dispatcher = started(old)
    assert wait_for_runs("a:started", 1) == [worker.pid]
    # Its start is written once it has run a moment (batching.START_AFTER): a host lost
    # before that gives the job back as never started.
    wait_until(lambda: job_of(result).status == Job.Status.RUNNING)

    # Stopped first, the supervisor cannot see its children die, nor they it.
    old.send(signal.SIGSTOP)
    wait_until(lambda: "\nState:\tT" in Path(f"/proc/{old.pid}/status").read_text())
    kill(worker.pid)
    kill(dispatcher.pid)
    old.kill()
    assert Process.objects.count() == 3, "nobody deregistered"

    release.set()
    new = dq_work(options=fast())
    job = wait_for_status(result, Job.Status.SUCCESSFUL)

    new_supervisor, [new_worker], _ = started(new)
    assert error_paths(job) == [PROCESS_PRUNED]
    assert run_pids("a:started") == [worker.pid, new_worker.pid]
    assert run_pids("a:finished") == [new_worker.pid]
    wait_for_all_gone(old_supervisor)
    assert set(Process.objects.values_list("supervisor_id", flat=True)) == {
        None,
        new_supervisor.pk,
    }


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_graceful_stop_finishes_running_job_and_claims_nothing_new(dq_work, release, signum):
    running = block.enqueue("a", release.path)
    waiting = record.enqueue("b")
    work = dq_work("--threads", "1", options=fast(shutdown_timeout=30))
    _, [worker], dispatcher = started(work)
    assert wait_for_runs("a:started", 1) == [worker.pid]
    assert job_of(waiting).status == Job.Status.READY

    work.send(signum)
    # The dispatcher's row is gone once the supervisor has passed the signal on to its children.
    wait_until(lambda: not Process.objects.filter(pk=dispatcher.pk).exists(), timeout=10)
    assert pid_alive(worker.pid), "the worker waits for its running job"
    release.set()

    assert work.wait(timeout=30) == 0, work.output()
    assert job_of(running).status == Job.Status.SUCCESSFUL
    assert run_pids("a:finished") == [worker.pid]
    # The worker had an idle thread once "a" finished, and still took nothing.
    assert runs("b") == 0
    waiting_job = job_of(waiting)
    assert waiting_job.status == Job.Status.READY
    assert waiting_job.attempt_count == 0, "never claimed"
    assert ReadyExecution.objects.filter(job_id=waiting.id).exists()
    assert not ClaimedExecution.objects.exists()
    assert not Process.objects.exists()


def test_graceful_stop_interrupts_jobs_that_outlast_the_shutdown_timeout(dq_work, release):
    at_least_once = block.enqueue("alo", release.path)
    at_most_once = block_at_most_once.enqueue("amo", release.path)
    work = dq_work("--threads", "2", options=fast(shutdown_timeout=1))
    _, [worker], _ = started(work)
    assert wait_for_runs("alo:started", 1) == wait_for_runs("amo:started", 1) == [worker.pid]

    sent = time.monotonic()
    work.send(signal.SIGTERM)
    assert work.wait(timeout=20) == 0, work.output()
    assert time.monotonic() - sent >= 1, "the worker waited its shutdown timeout first"

    job = job_of(at_least_once)
    assert job.status == Job.Status.READY
    assert ReadyExecution.objects.filter(job=job).exists()
    assert error_paths(job) == [SHUTDOWN_TIMEOUT]
    assert "shutdown timeout" in job.errors[0]["message"]

    job = job_of(at_most_once)
    assert job.status == Job.Status.FAILED
    assert error_paths(job) == [SHUTDOWN_TIMEOUT]
    assert FailedExecution.objects.get(job=job).exception_class_path == SHUTDOWN_TIMEOUT

    assert runs("alo:finished") == runs("amo:finished") == 0
    assert not ClaimedExecution.objects.exists()
    assert not Process.objects.exists()


@pytest.mark.parametrize("after_term", [False, True], ids=["QUIT", "TERM-then-QUIT"])
def test_sigquit_stops_at_once_and_interrupts_running_jobs(dq_work, release, after_term):
    result = block.enqueue("a", release.path)
    work = dq_work(options=fast(shutdown_timeout=30))
    _, [worker], dispatcher = started(work)
    assert wait_for_runs("a:started", 1) == [worker.pid]

    if after_term:
        # A graceful stop is under way, waiting for the blocked job; QUIT cuts it short.
        work.send(signal.SIGTERM)
        wait_until(lambda: not Process.objects.filter(pk=dispatcher.pk).exists(), timeout=10)
        assert pid_alive(worker.pid)
    work.send(signal.SIGQUIT)
    # Far below the 30 s a graceful stop would wait for the blocked job.
    assert work.wait(timeout=10) == 0, work.output()

    job = job_of(result)
    assert job.status == Job.Status.READY
    assert ReadyExecution.objects.filter(job=job).exists()
    assert error_paths(job) == [PROCESS_EXIT]
    assert "stopped (immediate)" in job.errors[0]["message"], "the worker itself stopped"
    assert runs("a:finished") == 0
    assert not Process.objects.exists()


def test_bad_jobs_fail_without_harming_the_worker(dq_work):
    raising = boom.enqueue()
    missing = record.enqueue("never")
    Job.objects.filter(pk=missing.id).update(task_path="tests.nowhere.task")
    work = dq_work(options=fast())
    supervisor, [worker], _ = started(work)

    job = wait_for_status(raising, Job.Status.FAILED)
    failed = FailedExecution.objects.get(job=job)
    assert failed.exception_class_path == "builtins.RuntimeError"
    assert failed.message == "boom"
    assert worker.name in job.worker_ids

    job = wait_for_status(missing, Job.Status.FAILED)
    failed = FailedExecution.objects.get(job=job)
    assert failed.exception_class_path == "builtins.ImportError"
    assert "tests.nowhere.task" in failed.message
    assert runs("never") == 0

    later = record.enqueue("after")
    wait_for_status(later, Job.Status.SUCCESSFUL)
    assert run_pids("after") == [worker.pid]
    assert [w.pk for w in workers_of(supervisor)] == [worker.pk]
    assert pid_alive(worker.pid)
    assert "crashed" not in work.output()
    # The worker's log says what failed and why, with the traceback.
    output = work.output()
    assert f"Task id={raising.id} path=tests.tasks.boom state=FAILED\nTraceback" in output
    assert 'raise RuntimeError("boom")\nRuntimeError: boom' in output
    assert f"job {missing.id} (tests.nowhere.task) failed: Cannot import task" in output
    assert "ModuleNotFoundError: No module named 'tests.nowhere'" in output


def claimed_by_a_ghost(label, *, started):
    """A job claimed by a worker of another host that stopped heartbeating an hour ago,
    with its run's start recorded or not."""
    ghost = Process.objects.create(
        kind=Process.Kind.WORKER,
        name="worker-ghost",
        pid=999999,
        hostname="other-host",
        last_heartbeat_at=timezone.now() - timedelta(hours=1),
    )
    result = record.enqueue(label)
    [claimed] = ReadyExecution.claim(
        (QueueSelector("*"),), 1, ghost, backend="default", using="default"
    )
    assert claimed.pk == int(result.id)
    if started:
        claimed.record_start(timezone.now())
        ClaimedExecution.flush(
            starts=[claimed], ends=[], claim=None, worker_id=ghost.name, using="default"
        )
    return ghost, result


def test_processes_of_other_hosts_are_pruned_and_their_jobs_run_again(dq_work):
    ghost, result = claimed_by_a_ghost("orphan", started=True)
    assert job_of(result).status == Job.Status.RUNNING

    work = dq_work(options=fast())
    job = wait_for_status(result, Job.Status.SUCCESSFUL)

    assert not Process.objects.filter(pk=ghost.pk).exists()
    assert error_paths(job) == [PROCESS_PRUNED]
    assert job.worker_ids[0] == "worker-ghost"
    assert "other-host" in job.errors[0]["message"]
    assert runs("orphan") == 1
    assert "pruned" in work.output()


def test_a_pruned_process_gives_back_the_jobs_it_had_not_started_as_never_claimed(dq_work):
    ghost, result = claimed_by_a_ghost("claimed ahead", started=False)
    assert job_of(result).status == Job.Status.READY

    dq_work(options=fast())
    job = wait_for_status(result, Job.Status.SUCCESSFUL)

    assert not Process.objects.filter(pk=ghost.pk).exists()
    assert (job.attempt_count, job.interruption_count, job.errors) == (1, 0, [])
    assert job.worker_ids != ["worker-ghost"] and runs("claimed ahead") == 1


def assert_each_ran_once(labels):
    assert Run.objects.count() == len(labels)
    duplicates = Run.objects.values("label").annotate(n=Count("pk")).filter(n__gt=1)
    assert not duplicates.exists(), list(duplicates)
    assert set(Run.objects.values_list("label", flat=True)) == set(labels)
    assert set(Job.objects.values_list("attempt_count", flat=True)) == {1}


def enqueue_records(count):
    labels = [f"job-{i}" for i in range(count)]
    record.enqueue_many([((label,), {}) for label in labels])
    return labels


def wait_all_successful(count, timeout=60):
    wait_until(
        lambda: Job.objects.filter(status=Job.Status.SUCCESSFUL).count() == count,
        timeout=timeout,
        interval=0.1,
        message="not every job succeeded",
    )


def test_no_job_runs_twice_across_worker_processes(dq_work):
    work = dq_work("--processes", "2", "--threads", "4")
    _, worker_rows, _ = started(work, workers=2)
    labels = enqueue_records(300)
    wait_all_successful(len(labels))

    assert_each_ran_once(labels)
    pids = set(Run.objects.values_list("pid", flat=True))
    assert pids == {w.pid for w in worker_rows}, "both workers took jobs, and only they did"
    assert not ReadyExecution.objects.exists() and not ClaimedExecution.objects.exists()


def test_no_job_runs_twice_across_supervisors(dq_work):
    first = dq_work("--threads", "4")
    second = dq_work("--threads", "4")
    _, [first_worker], _ = started(first)
    _, [second_worker], _ = started(second)
    # Jobs that take a little time: no-op jobs could all go to whichever worker first
    # holds SQLite's write lock, as each end claims that thread's next job.
    labels = [f"job-{i}" for i in range(300)]
    record_after_work.enqueue_many([((label,), {}) for label in labels])
    wait_all_successful(len(labels))

    assert_each_ran_once(labels)
    pids = set(Run.objects.values_list("pid", flat=True))
    assert pids == {first_worker.pid, second_worker.pid}, "both supervisors' workers took jobs"
    assert not ReadyExecution.objects.exists() and not ClaimedExecution.objects.exists()


def test_notify_wakes_an_idle_worker_long_before_its_next_poll(dq_work):
    if connection.vendor != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL-only; other databases are polled")
    first = record.enqueue("first")
    work = dq_work(options=fast(workers=[{"polling_interval": 30}]))
    _, [worker], _ = started(work)
    wait_for_status(first, Job.Status.SUCCESSFUL)

    for round_ in range(2):
        # Once its heartbeat moved on, the worker has long gone back to waiting (30 s).
        seen = Process.objects.get(pk=worker.pk).last_heartbeat_at
        wait_until(lambda seen=seen: Process.objects.get(pk=worker.pk).last_heartbeat_at > seen)
        result = record.enqueue(f"woken-{round_}")
        wait_for_status(result, Job.Status.SUCCESSFUL, timeout=10)
        assert run_pids(f"woken-{round_}") == [worker.pid]


def test_supervisor_whose_row_is_deleted_stops_everything(dq_work):
    work = dq_work(options=fast())
    supervisor, [worker], dispatcher = started(work)

    Process.objects.filter(pk=supervisor.pk).delete()
    assert work.wait(timeout=20) == 0, work.output()
    assert not pid_alive(worker.pid) and not pid_alive(dispatcher.pid)
    assert not Process.objects.exists()
    assert "pruned by another process" in work.output()


def test_worker_whose_row_is_deleted_stops_and_is_replaced(dq_work):
    work = dq_work(options=fast())
    supervisor, [worker], _ = started(work)

    Process.objects.filter(pk=worker.pk).delete()
    wait_until(lambda: not pid_alive(worker.pid), timeout=10, message="the worker went on")
    replacement = wait_for_replacement(supervisor, worker)
    assert workers_of(supervisor) == [replacement]
    result = record.enqueue("after")
    wait_for_status(result, Job.Status.SUCCESSFUL)
    assert run_pids("after") == [replacement.pid]
    assert "pruned by another process" in work.output()
