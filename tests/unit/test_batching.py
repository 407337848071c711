"""Work done in few statements: enqueues, runs recorded together (finish_many, the
worker's group commit), and the statements one job costs, pinned here so that a change
that adds one per job fails."""

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

from dq.db import Database, postgresql
from dq.db import database as db_of
from dq.exceptions import ProcessExitError
from dq.models import ClaimedExecution, Job, ReadyExecution, ScheduledExecution, Semaphore
from dq.processes.base import StopMode
from dq.processes.batching import BatchWriteError, GroupCommit
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


def finishing_statements():
    """Statements finish_many uses, however many runs end: one on PostgreSQL; on SQLite
    two (the claims deleted, then their jobs updated, each with RETURNING)."""
    return 1 if connection.vendor == "postgresql" else 2


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


def test_finish_many_records_several_runs_in_one_transaction_and_skips_claims_taken_over(
    worker,
):
    plain, valued, unique, keeps_key, taken = (
        record.enqueue("none"),
        add.enqueue(2, 3),
        unique_record.enqueue("u"),
        unique_for_a_minute.enqueue("kept"),
        record.enqueue("taken"),
    )
    claimed = {int(job.pk): job for job in worker.claim()}
    assert len(claimed) == 5
    gone = claimed[int(taken.id)]
    ClaimedExecution.interrupt(
        ClaimedExecution.objects.filter(pk=gone.claim_id), ProcessExitError, "x", using="default"
    )
    for job in claimed.values():
        job.return_value = None
    claimed[int(valued.id)].return_value = {"sum": 5, "parts": [2, 3]}

    with CaptureQueriesContext(connection) as queries:
        ended = ClaimedExecution.finish_many(
            list(claimed.values()), worker_id="w-1", using="default"
        )

    assert len(statements(queries)) == finishing_statements(), statements(queries)
    assert ended[gone.claim_id] is None
    assert Job.objects.get(pk=gone.pk).status == Job.Status.READY  # interrupted, to run again
    for job_id in (plain.id, valued.id, unique.id, keeps_key.id):
        job = Job.objects.get(pk=job_id)
        assert ended[claimed[job.pk].claim_id].pk == job.pk
        assert job.status == Job.Status.SUCCESSFUL
        assert job.finished_at is not None
        [attempt] = job.attempts
        assert attempt["worker_id"] == "w-1" and attempt["error"] is None
        assert attempt["started_at"] is not None and attempt["finished_at"] is not None
    assert Job.objects.get(pk=valued.id).return_value == {"sum": 5, "parts": [2, 3]}
    assert Job.objects.get(pk=plain.id).return_value is None
    assert Job.objects.get(pk=unique.id).unique_key is None  # free for the next one
    assert Job.objects.get(pk=keeps_key.id).unique_key is not None  # kept for unique_for
    assert not ClaimedExecution.objects.exclude(job_id=gone.pk).exists()

    result = record.get_result(plain.id)
    assert result.attempts == 1 and result.finished_at is not None
    assert unique_record.enqueue("u").id != unique.id


def test_finish_many_gives_back_concurrency_slots(worker):
    per_account.enqueue(account_id=1)
    per_account.enqueue(account_id=2)
    jobs = worker.claim()
    assert Semaphore.objects.get(key="account-1").value == 0

    ClaimedExecution.finish_many(jobs, worker_id="w", using="default")

    assert Semaphore.objects.get(key="account-1").value == 1
    assert Semaphore.objects.get(key="account-2").value == 1


def test_a_job_costs_one_claim_share_and_one_finishing_statement(db):
    """A worker that claims five jobs and runs them one after another: one statement to
    claim them, then the finishing statements of each; nothing else per job."""
    for n in range(5):
        add.enqueue(n, n)
    worker = InProcessWorker()

    with CaptureQueriesContext(connection) as queries:
        jobs = worker.claim(limit=5)
        for job in jobs:
            worker.perform(job)

    assert len(jobs) == 5
    # On SQLite: take the ready rows, insert the claims, start the jobs (outside a
    # transaction a read first spares an empty poll the write lock; this test runs in one).
    claims = 1 if connection.vendor == "postgresql" else 3
    # Each end also looks for a next job for its thread (in the same statement on
    # PostgreSQL; on SQLite one more, which finds none: all five are claimed).
    ends = 1 if connection.vendor == "postgresql" else finishing_statements() + 1
    assert len(statements(queries)) == claims + 5 * ends, statements(queries)
    assert Job.objects.filter(status=Job.Status.SUCCESSFUL).count() == 5


def ended_through(finish, value):
    """A job of ``add`` claimed and ended by ``finish(claim_id, value)``, reloaded."""
    add.enqueue(1, 2)
    [job] = InProcessWorker().claim(limit=1)
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
                database.finish({claim_id: value}, worker_id=worker_id, now=timezone.now())

        return finish

    ours = ended_through(through(db_of("default")), value)
    generic = ended_through(through(Database("default")), value)

    for job in (ours, generic):
        assert job.status == Job.Status.SUCCESSFUL and job.return_value == value
        [attempt] = job.attempts
        assert set(attempt) == {"worker_id", "started_at", "finished_at", "error"}
        assert attempt["worker_id"] == worker_id and attempt["error"] is None
        started = datetime.fromisoformat(attempt["started_at"])
        assert started == job.started_at and started.utcoffset() == timedelta(0)
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
        assert worker.claim(limit=5) == []
    finally:
        writer.execute("ROLLBACK")
        writer.close()


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


# --- GroupCommit -------------------------------------------------------------------------


def hand_in_during_a_write(outcome, first, others):
    """Submit ``first``, then ``others`` while its batch is being written.

    ``outcome(batch_number, items)`` is what writing a batch returns or raises. Returns
    the group, the batches written and, per item, its result or the exception raised.
    """
    writing, release = threading.Event(), threading.Event()
    batches = []

    def write(items):
        batches.append(list(items))
        if len(batches) == 1:
            writing.set()
            release.wait(30)
        return outcome(len(batches), items)

    group = GroupCommit(write)
    outcomes = {}

    def submit(item):
        try:
            outcomes[item] = group.submit(item)
        except Exception as error:
            outcomes[item] = error

    first_thread = threading.Thread(target=submit, args=(first,))
    first_thread.start()
    assert writing.wait(30)
    threads = [threading.Thread(target=submit, args=(item,)) for item in others]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(group._waiting) == len(others), message="the others never queued up")
    release.set()
    for thread in (first_thread, *threads):
        thread.join(30)
    return group, batches, outcomes


def test_items_handed_in_while_a_batch_is_written_are_written_together_next():
    _, batches, results = hand_in_during_a_write(
        lambda _, items: [item * 10 for item in items], 1, (2, 3, 4)
    )

    assert batches[0] == [1]
    assert sorted(batches[1]) == [2, 3, 4]
    assert len(batches) == 2
    assert results == {1: 10, 2: 20, 3: 30, 4: 40}


def test_a_failed_batch_fails_each_of_its_items():
    def outcome(batch_number, items):
        if batch_number == 1:
            return [None for _ in items]
        raise ConnectionError("the database went away")

    group, batches, outcomes = hand_in_during_a_write(outcome, "first", ("a", "b"))
    errors = {item: value for item, value in outcomes.items() if isinstance(value, Exception)}

    assert "first" not in errors
    # The thread that wrote the failed batch has the cause; the other one learns of it.
    assert sorted(type(error).__name__ for error in errors.values()) == [
        "BatchWriteError",
        "ConnectionError",
    ]
    [follower] = [error for error in errors.values() if isinstance(error, BatchWriteError)]
    assert "the database went away" in str(follower)
    # Nothing is left waiting or locked: the next item is written in a batch of its own.
    with pytest.raises(ConnectionError):
        group.submit("later")
    assert batches[-1] == ["later"]


def test_a_thread_claims_its_next_job_as_its_last_ends(db):
    """In the statement that ends the run on PostgreSQL, in its transaction elsewhere."""
    for n in range(4):
        add.enqueue(n, n)
    worker = InProcessWorker()
    [first] = worker.claim(limit=1)

    with CaptureQueriesContext(connection) as queries:
        done = worker.perform(first)

    # Each end claims the next job; the fourth finds none left.
    assert len(done) == 4
    assert Job.objects.filter(status=Job.Status.SUCCESSFUL).count() == 4
    assert not ClaimedExecution.objects.exists()
    if connection.vendor == "postgresql":
        assert len(statements(queries)) == 4, statements(queries)  # one per end


def test_a_stopping_worker_claims_nothing_as_runs_end(db):
    add.enqueue(1, 1)
    add.enqueue(2, 2)
    worker = InProcessWorker()
    [first] = worker.claim(limit=1)
    worker.worker.stopping = StopMode.GRACEFUL

    assert worker.perform(first) == [first]
    assert ReadyExecution.objects.count() == 1
    assert not ClaimedExecution.objects.exists()


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
    sql, selector_params = postgresql.claim_statement(QueueSelector("*"), 3)
    assert selector_params == []
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


def run_eight_jobs_in_one_chain():
    """Enqueue, claim and end eight jobs the way a pool thread does: each end claims the
    next."""
    for n in range(8):
        add.enqueue(n, n)
    worker = InProcessWorker()
    [first] = worker.claim(limit=1)
    assert len(worker.perform(first)) == 8


def test_dq_statements_are_prepared_on_postgresql(db):
    """Planning dq's statements costs about as much as running them: psycopg prepares
    them once they have run a few times on a connection."""
    if connection.vendor != "postgresql":
        pytest.skip("prepared statements: PostgreSQL's")
    run_eight_jobs_in_one_chain()

    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        prepared = [statement for (statement,) in cursor.fetchall()]
    assert any("INSERT INTO dq_job" in statement for statement in prepared), prepared
    assert any(
        "DELETE FROM dq_claimed_execution" in statement and "FOR UPDATE SKIP LOCKED" in statement
        for statement in prepared
    ), prepared


@pytest.mark.django_db(transaction=True)
def test_a_project_that_turns_prepared_statements_off_gets_none_from_dq(monkeypatch):
    if connection.vendor != "postgresql":
        pytest.skip("prepared statements: PostgreSQL's")
    monkeypatch.setitem(connection.settings_dict["OPTIONS"], "prepare_threshold", None)
    connection.close()  # a new session, without what earlier tests prepared
    run_eight_jobs_in_one_chain()

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_prepared_statements")
        assert cursor.fetchone() == (0,)


def test_a_failing_announcement_does_not_drop_the_job_claimed_with_the_end(db):
    for n in range(3):
        add.enqueue(n, n)
    worker = InProcessWorker()
    [first] = worker.claim(limit=1)

    def broken_receiver(**kwargs):
        raise RuntimeError("a receiver of task_finished is broken")

    task_finished.connect(broken_receiver)
    try:
        done = worker.perform(first)
    finally:
        task_finished.disconnect(broken_receiver)

    assert len(done) == 3
    assert Job.objects.filter(status=Job.Status.SUCCESSFUL).count() == 3
    assert not ClaimedExecution.objects.exists()
    assert worker.worker.runs == {}


def test_a_next_job_is_tracked_from_the_moment_its_claim_commits(db):
    add.enqueue(1, 1)
    add.enqueue(2, 2)
    worker = InProcessWorker()
    [first] = worker.claim(limit=1)
    first.return_value = 2

    [(ended, next_job)] = worker.worker.finish_batch([(first, True)])

    assert ended.status == Job.Status.SUCCESSFUL
    # Counted by a graceful shutdown and by timeouts before its thread even gets it.
    assert list(worker.worker.runs) == [next_job.claim_id]
    assert worker.worker.running_count() == 1
    worker.perform(next_job)
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
    worker.worker.track(jobs[int(running.id)])  # the other was never handed to a thread
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
