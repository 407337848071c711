"""Work done in few statements: enqueues, a worker's starts, ends and claims written
together (``ClaimedExecution.flush``, the worker's ``Writes``), and the statements one job
costs, pinned here so that a change that adds one per job fails."""

import os
import re
import sqlite3
import subprocess
import sys
import threading
from datetime import datetime, timedelta

import pytest
from django.db import DataError, connection, transaction
from django.tasks.signals import task_finished
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from dq.db import Claim, Database, End, postgresql
from dq.db import database as db_of
from dq.exceptions import ProcessExitError, ShutdownTimeoutError
from dq.models import ClaimedExecution, Job, ReadyExecution, ScheduledExecution, Semaphore
from dq.processes import batching
from dq.processes.base import StopMode
from dq.processes.batching import WriteAbandoned, Writes
from dq.processes.pool import Pool
from dq.queues import QueueSelector

from ..conftest import InProcessWorker, wait_until
from ..flow_tasks import per_account, unique_for_a_minute, unique_record
from ..tasks import add, flaky, record, return_nul

pytestmark = pytest.mark.django_db


def statements(queries):
    """The statements captured, without the savepoints of the test's own transaction."""
    return [
        query["sql"]
        for query in queries
        if not query["sql"].startswith(("SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK TO"))
    ]


def flush_statements(*, starts=False, ends=False, claim=False):
    """Statements a flush uses, however many jobs each part has: one on PostgreSQL; on
    SQLite two for the ends, three for the starts, three for the claim (inside a
    transaction, as in these tests: outside, a read first spares an empty poll the lock);
    on MySQL four for the ends, three for the starts, four for the claim."""
    if connection.vendor == "postgresql":
        return 1
    if connection.vendor == "mysql":
        return 4 * ends + 3 * starts + 4 * claim
    return 2 * ends + 3 * starts + 3 * claim


def started(worker, jobs):
    """``jobs`` as a pool thread leaves them when it starts them."""
    for job in jobs:
        job.record_start(timezone.now())
        job.status = Job.Status.RUNNING
    return jobs


def test_an_enqueue_is_one_statement_on_postgresql_however_many_jobs(db):
    later = timezone.now() + timedelta(hours=1)
    with CaptureQueriesContext(connection) as one:
        single = add.enqueue(1, 2)
    with CaptureQueriesContext(connection) as bulk:
        many = add.enqueue_many([((n, n), {}) for n in range(50)])
    with CaptureQueriesContext(connection) as mixed:
        deferred = add.using(run_after=later).enqueue_many([((1, 1), {}), ((2, 2), {})])
        on_other = add.using(queue_name="other").enqueue(3, 3)

    if connection.vendor == "postgresql":
        assert len(statements(one)) == 1, statements(one)
        assert len(statements(bulk)) == 1, statements(bulk)
        assert len(statements(mixed)) == 2, statements(mixed)
    ids = [int(result.id) for result in (single, *many)]
    assert ids == sorted(ids) and len(set(ids)) == 51
    for result, n in zip(many, range(50), strict=True):
        assert Job.objects.get(pk=result.id).args == [n, n]  # each id names its own job
    assert set(ReadyExecution.objects.values_list("job_id", flat=True)) == {
        *ids,
        int(on_other.id),
    }
    assert ReadyExecution.objects.get(job_id=on_other.id).queue_name == "other"
    for result in deferred:
        execution = ScheduledExecution.objects.get(job_id=result.id)
        assert execution.scheduled_at == later
        assert Job.objects.get(pk=result.id).status == Job.Status.SCHEDULED
    assert add.get_result(single.id).status == "READY"


def test_a_flush_writes_ends_and_starts_and_claims_in_one_go_and_skips_claims_taken_over(
    worker,
):
    plain, valued, unique, keeps_key, taken = (
        record.enqueue("none"),
        add.enqueue(2, 3),
        unique_record.enqueue("u"),
        unique_for_a_minute.enqueue("kept"),
        record.enqueue("taken"),
    )
    long_running = record.enqueue("long")
    claimed = {int(job.pk): job for job in started(worker, worker.claim(started=False))}
    assert len(claimed) == 6
    gone = claimed[int(taken.id)]
    ClaimedExecution.interrupt(
        ClaimedExecution.objects.filter(pk=gone.claim_id),
        ProcessExitError,
        "x",
        running={gone.claim_id},
        using="default",
    )
    for job in claimed.values():
        job.return_value = None
    claimed[int(valued.id)].return_value = {"sum": 5, "parts": [2, 3]}
    still_running = claimed.pop(int(long_running.id))
    waiting = [add.enqueue(n, n) for n in range(3)]
    assert worker.process is not None

    with CaptureQueriesContext(connection) as queries:
        starts, ends, more = ClaimedExecution.flush(
            starts=[still_running],
            ends=list(claimed.values()),
            claim=Claim(QueueSelector("*"), 2, "default", worker.process.pk),
            worker_id="w-1",
            using="default",
        )

    assert len(statements(queries)) == flush_statements(starts=True, ends=True, claim=True)
    assert starts == {still_running.claim_id}
    assert ends == {job.claim_id for job in claimed.values()} - {gone.claim_id}
    # The job interrupted, to run again, then the oldest waiting; claimed, not started.
    assert [job.pk for job in more] == [gone.pk, int(waiting[0].id)]
    assert Job.objects.get(pk=gone.pk).status == Job.Status.READY
    for job_id in (plain.id, valued.id, unique.id, keeps_key.id):
        job = Job.objects.get(pk=job_id)
        assert job.status == Job.Status.SUCCESSFUL and job.attempt_count == 1
        assert job.finished_at is not None and job.finished_at == claimed[job.pk].finished_at
        [attempt] = job.attempts
        held = claimed[job.pk].attempts[0]  # what the worker holds is what is stored
        for moment in ("started_at", "finished_at"):
            assert datetime.fromisoformat(attempt[moment]) == datetime.fromisoformat(held[moment])
        assert attempt["worker_id"] == "w-1" and attempt["error"] is None
        assert datetime.fromisoformat(attempt["started_at"]) == job.started_at
    assert Job.objects.get(pk=valued.id).return_value == {"sum": 5, "parts": [2, 3]}
    assert Job.objects.get(pk=plain.id).return_value is None
    assert Job.objects.get(pk=unique.id).unique_key is None  # free for the next one
    assert Job.objects.get(pk=keeps_key.id).unique_key is not None  # kept for unique_for
    running = Job.objects.get(pk=still_running.pk)
    assert (running.status, running.attempt_count) == (Job.Status.RUNNING, 1)
    assert ClaimedExecution.objects.get(pk=still_running.claim_id).started_at is not None
    assert {claim.job_id for claim in ClaimedExecution.objects.all()} == {
        still_running.pk,
        *(job.pk for job in more),
    }
    result = record.get_result(plain.id)
    assert result.attempts == 1 and result.finished_at is not None
    assert unique_record.enqueue("u").id != unique.id


def test_a_start_written_before_counts_as_written_and_is_counted_once(worker):
    record.enqueue("started twice")
    [job] = worker.claim(started=True)

    starts, _, _ = ClaimedExecution.flush(
        starts=[job], ends=[], claim=None, worker_id="w", using="default"
    )

    assert starts == {job.claim_id}
    assert Job.objects.get(pk=job.pk).attempt_count == 1


def test_an_end_whose_start_was_not_written_counts_the_attempt(worker):
    record.enqueue("ended at once")
    [job] = started(worker, worker.claim(started=False))

    ClaimedExecution.flush(starts=[], ends=[job], claim=None, worker_id="w", using="default")

    recorded = Job.objects.get(pk=job.pk)
    assert (recorded.status, recorded.attempt_count) == (Job.Status.SUCCESSFUL, 1)
    assert recorded.started_at == recorded.last_attempted_at == job.last_attempted_at


def test_a_flush_gives_back_concurrency_slots(worker):
    per_account.enqueue(account_id=1)
    per_account.enqueue(account_id=2)
    jobs = worker.claim()
    assert Semaphore.objects.get(key="account-1").value == 0
    for job in jobs:
        job.return_value = None

    ClaimedExecution.flush(starts=[], ends=jobs, claim=None, worker_id="w", using="default")

    assert Semaphore.objects.get(key="account-1").value == 1
    assert Semaphore.objects.get(key="account-2").value == 1


def test_a_job_costs_a_share_of_a_claim_and_of_one_flush(db):
    """A worker that claims five jobs ahead and runs them: one statement to claim them,
    then one flush writes their five ends; nothing else per job."""
    for n in range(5):
        add.enqueue(n, n)
    worker = InProcessWorker()

    with CaptureQueriesContext(connection) as queries:
        jobs = worker.claim(limit=5, started=False)
        for job in jobs:
            worker.worker.perform(job, 0)  # at_least_once: its end is handed on
        worker.worker.flush(claim=False)

    assert len(jobs) == 5
    claims = {"postgresql": 1, "mysql": 4}.get(connection.vendor, 3)
    assert len(statements(queries)) == claims + flush_statements(ends=True), statements(queries)
    assert Job.objects.filter(status=Job.Status.SUCCESSFUL).count() == 5
    assert worker.worker.runs == {}


def ended_through(finish, value):
    """A job of ``add`` claimed and ended by ``finish(claim_id, value)``, reloaded."""
    add.enqueue(1, 2)
    [job] = InProcessWorker().claim(limit=1, started=False)
    finish(job.claim_id, value)
    return Job.objects.get(pk=job.pk)


@pytest.mark.parametrize(
    "value", [None, 3, 2.5, 'it\'s "quoted" \u00e9', [1, True, None], {"a": {"b": []}}]
)
def test_an_end_records_the_same_attempt_and_value_as_the_generic_database_would(db, value):
    """Each database's own statements for an end (dq.db.sqlite, dq.db.postgresql) must
    read back as the generic class's statements (any database) do."""
    worker_id = "worker-same"

    def through(database):
        def finish(claim_id, value):
            with transaction.atomic():
                database.flush(
                    starts={},
                    ends={claim_id: End(value, timezone.now())},
                    claim=None,
                    worker_id=worker_id,
                    now=timezone.now(),
                )

        return finish

    ours = ended_through(through(db_of("default")), value)
    generic = ended_through(through(Database("default")), value)

    for job in (ours, generic):
        assert job.status == Job.Status.SUCCESSFUL and job.return_value == value
        [attempt] = job.attempts
        assert set(attempt) == {"worker_id", "started_at", "finished_at", "error"}
        assert attempt["worker_id"] == worker_id and attempt["error"] is None
        began = datetime.fromisoformat(attempt["started_at"])
        assert began == job.started_at == job.last_attempted_at
        assert began.utcoffset() == timedelta(0) and job.attempt_count == 1
        assert datetime.fromisoformat(attempt["finished_at"]) == job.finished_at
    assert not ClaimedExecution.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_an_empty_poll_on_sqlite_does_not_wait_for_the_write_lock():
    """Idle workers poll SQLite ten times a second: a poll that finds nothing ready must
    not queue for the lock every writer needs (a job of a queue that differs only in case
    from the worker's prefix is not its)."""
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's write lock")
    record.using(queue_name="EMAIL-x").enqueue("not for email*")
    worker = InProcessWorker(queues=("email*",))
    writer = sqlite3.connect(connection.settings_dict["NAME"], isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        assert worker.claim(limit=5, started=False) == []
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_an_empty_poll_on_mysql_is_one_statement(transactional_db):
    """Idle workers poll MySQL ten times a second: a poll that finds nothing ready is one
    read that locks nothing, not a transaction (autocommit off, the locking read, COMMIT,
    autocommit on: the server counts each)."""
    if connection.vendor != "mysql":
        pytest.skip("MySQL's statements, as its server counts them")
    record.using(queue_name="EMAIL-x").enqueue("not for email*")
    worker = InProcessWorker(queues=("email*",))

    def statements():
        with connection.cursor() as cursor:
            cursor.execute("SHOW SESSION STATUS LIKE 'Questions'")
            return int(cursor.fetchone()[1])

    before = statements()
    assert worker.worker.flush() == 0
    assert statements() - before == 2  # the poll and the second SHOW


def test_the_generic_database_runs_the_whole_flow_on_this_database(generic_database):
    """The class any database without one of its own uses (dq.db.base.Database), here on
    SQLite or PostgreSQL: enqueue one and many, claim, end, retry, schedule."""
    assert type(db_of("default")) is Database
    add.enqueue_many([((n, n), {}) for n in range(3)])
    flaky_result = flaky.enqueue("generic", 1)
    later = add.using(run_after=timezone.now() + timedelta(hours=1)).enqueue(9, 9)

    with CaptureQueriesContext(connection) as queries:
        done = InProcessWorker().work_off()

    assert sorted(job.return_value for job in done if job.task_path.endswith("add")) == [0, 2, 4]
    assert flaky.get_result(flaky_result.id).return_value == 2
    assert Job.objects.get(pk=int(later.id)).status == Job.Status.SCHEDULED
    assert not any("json_each" in statement for statement in statements(queries))
    assert Job.objects.filter(status=Job.Status.SUCCESSFUL).count() == 4


# --- Writes: what the threads hand the main loop ---------------------------------------


def test_a_write_waited_for_returns_once_written_and_says_whether_it_took(db):
    record.enqueue("waited")
    worker = InProcessWorker()
    [job] = worker.claim(started=False)
    writes = Writes(lambda: None)
    outcome = {}
    thread = threading.Thread(
        target=lambda: outcome.update(took=writes.start(job, wait=True)), daemon=True
    )
    thread.start()
    wait_until(writes.due_now, message="the start was never handed in")
    assert thread.is_alive()  # nothing written yet

    starts, ends = writes.due()
    writes.written(starts, {job.claim_id})
    thread.join(10)

    assert [write.job for write in starts] == [job] and ends == []
    assert outcome == {"took": True}


def test_an_end_takes_the_place_of_its_runs_start_not_written_yet():
    job = Job(pk=1)
    job.claim_id = 7
    writes = Writes(lambda: None)

    writes.start(job, wait=False)
    assert not writes.due_now()  # a start not waited for waits START_AFTER
    writes.end(job, wait=False)

    starts, ends = writes.due()
    assert starts == [] and [write.job for write in ends] == [job]


def test_a_start_not_waited_for_is_due_once_its_run_has_lasted_a_while(monkeypatch):
    job = Job(pk=1)
    job.claim_id = 7
    writes = Writes(lambda: None)
    writes.start(job, wait=False)
    due = writes.next_due()
    assert due is not None and writes.due() == ([], [])

    monkeypatch.setattr(batching.time, "monotonic", lambda: due + batching.START_AFTER)

    starts, _ = writes.due()
    assert [write.job for write in starts] == [job]


def test_writes_of_a_failed_flush_are_written_by_the_next():
    first, second = Job(pk=1), Job(pk=2)
    first.claim_id, second.claim_id = 11, 12
    writes = Writes(lambda: None)
    writes.start(first, wait=False)
    writes.end(second, wait=False)
    taken = writes.due()
    writes.end(first, wait=False)  # its end came while the flush failed

    writes.retry(*taken)

    starts, ends = writes.due()
    assert starts == []  # the end writes the start with it
    assert sorted(write.job.pk for write in ends) == [1, 2]


def test_a_worker_that_stops_first_fails_the_writes_threads_wait_for():
    job = Job(pk=1)
    job.claim_id = 5
    writes = Writes(lambda: None)
    errors = []

    def wait_for_start():
        try:
            writes.start(job, wait=True)
        except WriteAbandoned as error:
            errors.append(error)

    thread = threading.Thread(target=wait_for_start, daemon=True)
    thread.start()
    wait_until(writes.due_now, message="the start was never handed in")

    abandoned = writes.abandon(WriteAbandoned("stopped"))
    thread.join(10)

    assert [write.job for write in abandoned] == [job]
    assert [str(error) for error in errors] == ["stopped"]


def test_the_main_loop_claims_ahead_when_the_buffer_runs_low(db):
    for n in range(4):
        add.enqueue(n, n)
    worker = InProcessWorker()
    worker.worker.end_rate = 1000.0  # ending many jobs a second: it claims ahead

    claimed = worker.worker.flush()

    assert claimed == 4 and len(worker.worker.buffer) == 4
    assert set(worker.worker.runs) == set(ClaimedExecution.objects.values_list("pk", flat=True))
    assert not ClaimedExecution.objects.filter(started_at__isnull=False).exists()
    assert Job.objects.filter(status=Job.Status.READY).count() == 4  # none of them started


def test_a_flush_that_claims_nothing_keeps_what_the_last_claim_learned(db):
    """A flush that only writes ends (the buffer still full) must not forget that more
    jobs are ready: the threads that empty the buffer wake the main loop to claim them
    (else the worker idled until its next poll, 2 s on PostgreSQL, with jobs waiting)."""
    add.enqueue_many([((n, n), {}) for n in range(100)])
    worker = InProcessWorker().worker
    worker.end_rate = 1000.0
    assert worker.flush() == worker.threads + 50 and worker.more_ready  # a full claim

    job = worker.buffer.take()
    worker.perform(job, 0)
    assert worker.flush() == 0  # its end written; the buffer is not low: no claim

    assert Job.objects.get(pk=job.pk).status == Job.Status.SUCCESSFUL
    assert worker.more_ready


def test_a_worker_near_max_jobs_counts_a_job_a_thread_took_but_has_not_started(db):
    """Between a thread taking a job from the buffer and starting it, the job is in
    neither the buffer nor the jobs started: counted in neither, a worker with max_jobs 3
    claimed a fourth, and ran it (seen on PostgreSQL: 6 jobs with max_jobs 5)."""
    from dataclasses import replace

    add.enqueue_many([((n, n), {}) for n in range(10)])
    worker = InProcessWorker().worker
    worker.worker_config = replace(worker.worker_config, max_jobs=3)
    assert worker.flush() == 3  # one for each of its threads up to max_jobs: 3

    worker.buffer.take()  # a thread took it; its run has not begun
    assert worker.jobs_started == 0 and len(worker.buffer) == 2
    assert worker.wanted() == 0
    assert worker.flush() == 0


def test_a_worker_without_a_rate_claims_for_its_threads_only(db):
    for n in range(8):
        add.enqueue(n, n)
    worker = InProcessWorker()

    assert worker.worker.flush() == worker.worker.threads


def test_a_stopping_worker_claims_nothing_as_runs_end(db):
    add.enqueue(1, 1)
    add.enqueue(2, 2)
    worker = InProcessWorker()
    [first] = worker.claim(limit=1)
    worker.worker.stopping = StopMode.GRACEFUL

    assert worker.perform(first) == [first]
    worker.worker.flush()
    assert ReadyExecution.objects.count() == 1
    assert not ClaimedExecution.objects.exists()


def test_a_graceful_stop_gives_the_buffered_jobs_back_as_never_claimed(db):
    for n in range(3):
        add.enqueue(n, n)
    worker = InProcessWorker()
    worker.worker.flush()
    assert len(worker.worker.buffer) == 3

    worker.worker.release_buffered()

    assert not ClaimedExecution.objects.exists() and worker.worker.runs == {}
    for job in Job.objects.all():
        assert (job.status, job.attempt_count, job.attempts) == (Job.Status.READY, 0, [])
    assert ReadyExecution.objects.count() == 3


@pytest.mark.django_db(transaction=True)
def test_a_bulk_enqueue_is_one_statement_text_whatever_its_size():
    """What the jobs of a bulk enqueue share is sent once and only their arguments as
    arrays, so 10 jobs and 300 run the same (prepared) statement."""
    connection.close()  # a new session, without what earlier tests prepared
    for n in (10, 300):
        results = record.enqueue_many([((f"{n}-{i}",), {"at": i}) for i in range(n)])
        stored = dict(
            Job.objects.filter(pk__in=[r.id for r in results]).values_list("pk", "kwargs")
        )
        assert [stored[int(r.id)] for r in results] == [{"at": i} for i in range(n)]

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT parameter_types::text[] FROM pg_prepared_statements "
                "WHERE statement LIKE %s",
                ["%INSERT INTO dq_job%"],
            )
            [(types,)] = cursor.fetchall()
        assert [sql_type for sql_type in types if sql_type.endswith("[]")] == ["jsonb[]"] * 2


def test_jobs_enqueued_together_keep_their_own_values(db):
    """Columns the jobs of one insert hold different values in are sent per job, and equal
    values that JSON tells apart (1 and true) stay apart."""
    later = timezone.now() + timedelta(hours=1)
    built = [
        Job(task_path="tests.tasks.add", queue_name="default", backend="default", args=[1]),
        Job(task_path="tests.tasks.add", queue_name="other", backend="default", args=[True]),
        Job(
            task_path="tests.tasks.record",
            queue_name="default",
            backend="default",
            priority=7,
            args=[1.0],
            scheduled_at=later,
            max_attempts=3,
        ),
    ]

    jobs = Job.enqueue(built, using="default")

    stored = {job.pk: job for job in Job.objects.filter(pk__in=[job.pk for job in jobs])}
    first, second, third = (stored[job.pk] for job in jobs)
    assert [type(job.args[0]) for job in (first, second, third)] == [int, bool, float]
    assert (first.queue_name, second.queue_name) == ("default", "other")
    assert (third.task_path, third.priority, third.max_attempts) == ("tests.tasks.record", 7, 3)
    assert (third.status, third.scheduled_at) == (Job.Status.SCHEDULED, later)
    assert ReadyExecution.objects.get(job_id=second.pk).queue_name == "other"
    assert ScheduledExecution.objects.get(job_id=third.pk).priority == 7


def test_jobs_alike_in_every_column_are_each_inserted(db):
    first = Job(task_path="tests.tasks.add", queue_name="default", backend="default")
    jobs = Job.enqueue([first, first.copy_with(), first.copy_with()], using="default")

    assert len({job.pk for job in jobs}) == 3
    assert Job.objects.count() == ReadyExecution.objects.count() == 3


def test_a_value_too_long_for_its_column_is_refused_not_cut(db):
    if connection.vendor != "postgresql":
        pytest.skip("SQLite does not enforce a column's length")
    long = Job(task_path="tests.tasks.record", queue_name="q" * 150, backend="default")
    with pytest.raises(DataError), transaction.atomic():  # the backend refuses it earlier
        Job.enqueue([long, long.copy_with(args=["x"])], using="default")
    assert not Job.objects.exists()


def test_copies_of_an_unsaved_job_are_jobs_of_their_own(db):
    job = Job(task_path="tests.tasks.add", queue_name="default", backend="default")
    copy = job.copy_with(args=[2, 3])

    [saved] = Job.enqueue([copy], using="default")

    assert saved.pk is not None and job.pk is None and job._state.adding
    assert Job.objects.get(pk=saved.pk).args == [2, 3]
    with pytest.raises(ValueError, match="unsaved"):
        saved.copy_with(args=[])


def test_a_claim_planned_for_any_parameters_still_reads_by_index(db):
    """A prepared statement may run a generic plan, planned without its parameters (after
    five runs PostgreSQL may choose one; plan_cache_mode can force it). The claim's limit is
    in its text, so that plan takes the few rows a claim needs by index: with the limit
    a parameter it planned for a tenth of the table, with hash joins over whole tables."""
    if connection.vendor != "postgresql":
        pytest.skip("plans of prepared statements: PostgreSQL's")
    add.enqueue_many([((n, n), {}) for n in range(3000)])
    sql = postgresql.flush_statement(ends=False, starts=False, claim=("1 = 1", 3))
    names = ["backend", "process_id", "now"]  # the claim's parameters, in order
    numbers = iter(range(1, len(names) + 1))
    prepared = re.sub(r"%s", lambda match: f"${next(numbers)}", sql)
    types = {"process_id": "bigint", "now": "timestamptz", "backend": "text"}
    values = {"process_id": "0", "now": "now()", "backend": "'default'"}
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE dq_job, dq_ready_execution, dq_pause")
        cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        cursor.execute(f"PREPARE dq_claim ({', '.join(types[n] for n in names)}) AS {prepared}")
        cursor.execute(f"EXPLAIN EXECUTE dq_claim ({', '.join(values[n] for n in names)})")
        plan = "\n".join(line for (line,) in cursor.fetchall())
        cursor.execute("DEALLOCATE dq_claim")

    assert "Seq Scan on dq_job" not in plan and "Hash Join" not in plan, plan
    assert "Index Scan using dq_ready_claim" in plan, plan


def run_eight_jobs():
    """Enqueue, claim and end eight jobs the way a worker does."""
    for n in range(8):
        add.enqueue(n, n)
    assert len(InProcessWorker().work_off()) == 8


def test_dq_statements_are_prepared_on_postgresql(db):
    """Planning dq's statements costs about as much as running them: psycopg prepares
    them once they have run a few times on a connection."""
    if connection.vendor != "postgresql":
        pytest.skip("prepared statements: PostgreSQL's")
    run_eight_jobs()

    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        prepared = [statement for (statement,) in cursor.fetchall()]
    assert any("INSERT INTO dq_job" in statement for statement in prepared), prepared
    assert any("FOR UPDATE SKIP LOCKED" in statement for statement in prepared), prepared
    assert any("DELETE FROM dq_claimed_execution" in statement for statement in prepared)


@pytest.mark.django_db(transaction=True)
def test_a_project_that_turns_prepared_statements_off_gets_none_from_dq(monkeypatch):
    if connection.vendor != "postgresql":
        pytest.skip("prepared statements: PostgreSQL's")
    monkeypatch.setitem(connection.settings_dict["OPTIONS"], "prepare_threshold", None)
    connection.close()  # a new session, without what earlier tests prepared
    run_eight_jobs()

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_prepared_statements")
        assert cursor.fetchone() == (0,)


def test_a_failing_announcement_does_not_drop_the_next_ends(db):
    for n in range(3):
        add.enqueue(n, n)
    worker = InProcessWorker()
    jobs = worker.claim(limit=3, started=False)

    def broken_receiver(**kwargs):
        raise RuntimeError("a receiver of task_finished is broken")

    task_finished.connect(broken_receiver)
    try:
        for job in jobs:
            worker.worker.perform(job, 0)
        worker.worker.flush(claim=False)
    finally:
        task_finished.disconnect(broken_receiver)

    assert Job.objects.filter(status=Job.Status.SUCCESSFUL).count() == 3
    assert not ClaimedExecution.objects.exists()
    assert worker.worker.runs == {}


def test_a_return_value_postgresql_cannot_store_fails_its_job_alone(db):
    result = return_nul.enqueue()
    add.enqueue(1, 1)
    worker = InProcessWorker()

    worker.work_off()

    job = Job.objects.get(pk=result.id)
    assert job.status == Job.Status.FAILED
    assert "NUL character" in job.errors[-1]["message"]
    assert Job.objects.filter(status=Job.Status.SUCCESSFUL).count() == 1
    with pytest.raises(TypeError, match="NUL character"):
        record.enqueue("a\x00b")


def test_a_project_on_sqlite_does_not_need_psycopg(tmp_path):
    """dq's PostgreSQL module is imported everywhere; what it needs of psycopg is
    imported on first use, so a SQLite project runs without psycopg installed."""
    program = (
        "import sys, django; django.setup(); "
        "import dq.backend, dq.models, dq.admin, dq.processes.supervisor, "
        "dq.processes.worker, dq.management.commands.dq_work; "
        "sys.exit('psycopg' in sys.modules)"
    )
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
    }
    finished = subprocess.run([sys.executable, "-c", program], env=environment, check=False)
    assert finished.returncode == 0


def test_a_claim_its_worker_never_received_is_released_and_runs_again(db):
    """A statement that claimed a job committed, but its reply was lost: no thread of the
    worker runs the job. The worker gives the claim up; a claim a thread runs it keeps."""
    lost, running = record.enqueue("lost"), record.enqueue("running")
    worker = InProcessWorker()
    jobs = {job.pk: job for job in worker.claim(limit=2)}
    worker.worker.track([jobs[int(running.id)]])  # the other was never handed to a thread
    ClaimedExecution.objects.update(claimed_at=timezone.now() - timedelta(minutes=1))

    worker.worker.release_untracked_claims()

    job = Job.objects.get(pk=lost.id)
    assert job.status == Job.Status.READY
    assert job.errors[-1]["exception_class_path"] == "dq.exceptions.ClaimLostError"
    assert list(ClaimedExecution.objects.values_list("job_id", flat=True)) == [int(running.id)]
    assert [done.pk for done in worker.work_off()] == [int(lost.id)]
    assert record.get_result(lost.id).status == "SUCCESSFUL"


def test_a_recent_untracked_claim_is_left_alone(db):
    """A claim is tracked as soon as its statement returns; a young one may be on its way."""
    record.enqueue("young")
    worker = InProcessWorker()
    worker.claim(limit=1)

    worker.worker.release_untracked_claims()

    assert ClaimedExecution.objects.count() == 1


def test_a_graceful_stop_waits_for_a_job_a_thread_took_but_had_not_started(transactional_db):
    """Between a thread taking a job from the buffer and starting it, the job is neither
    buffered nor running: a stop that counted running jobs only did not wait for it and
    interrupted it as it began (a recycled worker's job ran again, an at_most_once one
    failed)."""
    results = add.enqueue_many([((n, n), {}) for n in range(3)])
    worker = InProcessWorker().worker
    assert worker.flush() == 3
    took, go = threading.Event(), threading.Event()

    def slow_to_start(job, thread):
        took.set()
        go.wait(10)  # taken, not started, until the stop has begun
        worker.perform(job, thread)

    worker.pool = Pool(1, worker.buffer, slow_to_start)
    assert took.wait(10)
    release_buffered = worker.release_buffered

    def stop_begun():
        release_buffered()
        go.set()

    worker.release_buffered = stop_begun
    worker.stopping = StopMode.GRACEFUL
    assert worker.shut_down()[0] is not ShutdownTimeoutError
    jobs = {job.pk: job for job in Job.objects.filter(pk__in=[r.id for r in results])}
    taken = [job for job in jobs.values() if job.status == Job.Status.SUCCESSFUL]
    assert len(taken) == 1 and (taken[0].attempt_count, taken[0].interruption_count) == (1, 0)
    # The two still buffered went back to ready, as never claimed.
    assert sorted(job.status for job in jobs.values() if job not in taken) == ["ready", "ready"]
    assert worker.runs == {}
