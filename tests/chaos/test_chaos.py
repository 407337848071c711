"""The chaos run: jobs of all three delivery modes, worked by dq_work while random worker
processes are SIGKILLed, the supervisor is stopped with SIGTERM and started again, and (on
PostgreSQL and MariaDB, on a server of the tests' own) the database server restarts; then a
report per delivery mode, and its rules.

    ./dev chaos                                 # DQ_CHAOS_JOBS (default 3000), both databases
    .venv/bin/pytest tests/chaos -m chaos       # the bounded size (600) the suite and CI run

DQ_CHAOS_SEED replays a run's random choices (which worker dies, how long each job works).
"""

import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from django.db import connection
from django.db.models import Sum

from dq.batches import batch
from dq.models import Batch, Job, Process

from ..conftest import RESTARTABLE_SERVERS, _children_of, pid_alive, wait_until
from ..models import AtLeastOnceExecution, AtMostOnceExecution, ExactlyOnceExecution
from ..processes.test_processes import started
from . import tasks

JOBS = int(os.environ.get("DQ_CHAOS_JOBS", "600"))
SEED = int(os.environ.get("DQ_CHAOS_SEED") or random.SystemRandom().randrange(2**32))
WORKERS, THREADS = 3, 4
OPTIONS = {
    "heartbeat_interval": 1,
    "alive_threshold": 5,
    "maintenance_interval": 1,
    "shutdown_timeout": 3,
    # Enough that no job fails for being interrupted again and again by the kills.
    "max_interruptions": 10,
    "workers": [{"processes": WORKERS, "threads": THREADS}],
}
MODES = {
    "at_least_once": (tasks.at_least_once, AtLeastOnceExecution),
    "at_most_once": (tasks.at_most_once, AtMostOnceExecution),
    "exactly_once": (tasks.exactly_once, ExactlyOnceExecution),
}
NOT_STARTED = (Job.Status.READY, Job.Status.SCHEDULED, Job.Status.BLOCKED)
FINAL = (Job.Status.SUCCESSFUL, Job.Status.FAILED)
# A run that makes no progress for this long has lost or stuck jobs: report them.
STALL = 60
PROCESS_PRUNED = "dq.exceptions.ProcessPrunedError"
DATABASE_ERRORS = {"django.db.utils.OperationalError", "django.db.utils.InterfaceError"}

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(180 + JOBS // 4),
]


class Chaos:
    """One dq_work at a time, and the ways to hurt it."""

    def __init__(self, dq_work, cluster, rng):
        self.dq_work, self.cluster, self.rng = dq_work, cluster, rng
        self.worker_kills = self.supervisor_restarts = self.database_restarts = 0
        self.start()

    def start(self):
        self.work = self.dq_work(options=OPTIONS)
        self.supervisor, _, _ = started(self.work, workers=WORKERS, timeout=60)

    def live_workers(self):
        rows = Process.objects.filter(supervisor=self.supervisor, kind=Process.Kind.WORKER)
        children = _children_of(self.work.pid)  # never a pid reused by someone else
        # A worker killed a moment ago stays a child until its supervisor reaps it.
        return [row.pid for row in rows if row.pid in children and pid_alive(row.pid)]

    def kill_a_worker(self, pids=None):
        pids = pids or wait_until(self.live_workers, message="no live worker to kill")
        pid = self.rng.choice(pids)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:  # reaped between the listing and the kill
            return self.kill_a_worker([other for other in pids if other != pid] or None)
        self.worker_kills += 1

    def restart_supervisor(self):
        self.work.send(signal.SIGTERM)
        assert self.work.wait(timeout=60) == 0, self.work.output()
        self.supervisor_restarts += 1
        self.start()

    def restart_database(self):
        """Stop the database server, kill a worker while it is down (its jobs can only be recovered
        once it is back), start it again."""
        pids = wait_until(self.live_workers, message="no live worker to kill")
        self.cluster.stop()
        self.kill_a_worker([pid for pid in pids if pid in _children_of(self.work.pid)])
        self.cluster.start()
        self.database_restarts += 1

    def plan(self, kills):
        """(fraction of the jobs done, event): spread over the run, never at its very end."""
        events = [((k + 1) / (kills + 1) * 0.9, self.kill_a_worker) for k in range(kills)]
        events += [(0.25, self.restart_supervisor), (0.5, self.restart_supervisor)]
        if self.cluster is not None:
            # After the supervisor's last restart: a new supervisor's maintenance never
            # covers for the recovery of a worker killed during the outage.
            events.append((0.75, self.restart_database))
        return sorted(events, key=lambda event: event[0])


def enqueue(per_mode):
    """``per_mode`` jobs of each delivery mode, interleaved, 100 to a dq batch whose
    callbacks are enqueued as its last job ends."""
    for start in range(0, per_mode, 100):
        for task, _ in MODES.values():
            with batch(
                on_finish=tasks.batch_ended,
                on_success=tasks.batch_ended,
                on_failure=tasks.batch_ended,
                kwargs={"outcome": "ended"},
            ):
                task.enqueue_many([((), {})] * min(100, per_mode - start))


def done():
    return Job.objects.filter(status__in=FINAL, batch__isnull=False).count()


def check_batches(report):
    """Every batch's counts are its jobs' (recounted), it has finished, and each of its
    callbacks was enqueued once: on_finish, and on_success or on_failure."""
    callbacks = Counter(
        Job.objects.filter(task_path=tasks.batch_ended.module_path).values_list(
            "kwargs__batch_id", flat=True
        )
    )
    for batch_row in Batch.objects.all():
        statuses = Counter(batch_row.jobs.values_list("status", flat=True))
        recount = {
            "total": sum(statuses.values()),
            "succeeded": statuses[Job.Status.SUCCESSFUL],
            "failed": statuses[Job.Status.FAILED],
            "cancelled": statuses[Job.Status.CANCELLED],
        }
        assert {name: getattr(batch_row, name) for name in recount} == recount, report
        assert batch_row.is_finished, report
        assert callbacks[batch_row.pk] == 2, (batch_row.pk, batch_row.callback_jobs, report)
        assert set(batch_row.callback_jobs) in ({"finish", "success"}, {"finish", "failure"})


def settle(total):
    """Wait until every job is finished or failed, or nothing has moved for STALL seconds."""
    seen = {"done": -1, "at": time.monotonic()}

    def settled():
        now_done = done()
        if now_done != seen["done"]:
            seen.update(done=now_done, at=time.monotonic())
        return now_done == total or time.monotonic() - seen["at"] > STALL

    wait_until(settled, timeout=JOBS + STALL, interval=0.2, message="the run never settled")


def report_row(mode):
    task, model = MODES[mode]
    jobs = Job.objects.filter(task_path=task.module_path)
    rows = Counter(model.objects.values_list("job_id", "attempt"))  # (job, attempt): rows
    executions = Counter()
    for (pk, _), n in rows.items():
        executions[pk] += n
    # An execution in an attempt that then raised a database error of the task's own: the
    # task's INSERT committed but its reply was lost (MariaDB's shutdown cuts connections
    # between a commit and its OK; PostgreSQL's answers first), so the task failed and its
    # job was retried as its max_attempts says. Its retry is the task's own, not a second
    # delivery; one such execution per attempt.
    raised = {
        (pk, number)
        for pk, attempts in jobs.values_list("pk", "attempts")
        for number, attempt in enumerate(attempts, 1)
        if attempt["error"] and attempt["error"]["exception_class_path"] in DATABASE_ERRORS
    }
    in_raised = Counter(pk for pk, number in rows if (pk, number) in raised)
    delivered = {pk: n - in_raised[pk] for pk, n in executions.items()}
    successful = jobs.filter(status=Job.Status.SUCCESSFUL).values_list("pk", flat=True)
    failed = jobs.filter(status=Job.Status.FAILED).values_list("pk", flat=True)
    return {
        "delivery": mode,
        "enqueued": jobs.count(),
        "finished": len(successful),
        "failed": len(failed),
        # Never ended, or "finished" without its work having run.
        "lost": jobs.filter(status__in=NOT_STARTED).count()
        + sum(1 for pk in successful if pk not in executions),
        "stuck in claimed": jobs.filter(status=Job.Status.RUNNING).count(),
        "executions beyond one": sum(n - 1 for n in executions.values()),
        "in attempts that raised": sum(in_raised.values()),
        "interruptions": jobs.aggregate(n=Sum("interruption_count"))["n"] or 0,
        # Not in the table; checked below.
        "_successful_executions": dict(Counter(executions.get(pk, 0) for pk in successful)),
        "_successful_deliveries": dict(Counter(delivered.get(pk, 0) for pk in successful)),
        "_deliveries_beyond_one": sum(max(0, n - 1) for n in delivered.values()),
        "_failed_with_effects": sum(1 for pk in failed if pk in executions),
        "_interrupted_not_failed": jobs.filter(interruption_count__gt=0)
        .exclude(status=Job.Status.FAILED)
        .count(),
    }


COLUMNS = [
    "delivery",
    "enqueued",
    "finished",
    "failed",
    "lost",
    "stuck in claimed",
    "executions beyond one",
    "in attempts that raised",
    "interruptions",
]


def format_report(rows, chaos, seconds, database):
    server = chaos.cluster.name if chaos.cluster is not None else "database server"
    header = (
        f"chaos run on {database}: {sum(r['enqueued'] for r in rows)} jobs, "
        f"{WORKERS} workers x {THREADS} threads, seed {SEED}; {chaos.worker_kills} worker "
        f"SIGKILLs, {chaos.supervisor_restarts} supervisor SIGTERM+restarts, "
        f"{chaos.database_restarts} {server} restarts; {seconds:.0f} s"
    )
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in COLUMNS]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    for row in rows:
        cells = [str(row[c]) for c in COLUMNS]
        lines.append(
            "| "
            + " | ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
            )
            + " |"
        )
    return "\n".join([header, "", *lines])


def run_chaos(dq_work, cluster, capsys, database):
    """Enqueue, start dq_work and hurt it as planned until every job has ended; print the
    report and return (rows, report)."""
    rng = random.Random(SEED)
    random.seed(SEED)
    per_mode = JOBS // len(MODES)
    enqueue(per_mode)
    total = per_mode * len(MODES)

    began = time.monotonic()
    chaos = Chaos(dq_work, cluster, rng)
    for fraction, event in chaos.plan(kills=max(6, JOBS // 100)):
        wait_until(
            lambda fraction=fraction: done() >= fraction * total,
            timeout=120,
            interval=0.05,
            message=f"the run stalled before {fraction:.0%} of the jobs were done",
        )
        event()
    settle(total)
    seconds = time.monotonic() - began
    rows = [report_row(mode) for mode in MODES]
    report = format_report(rows, chaos, seconds, database)
    with capsys.disabled():
        print("\n" + report)
    if os.environ.get("DQ_CHAOS_REPORT"):  # a file to keep the report in
        with Path(os.environ["DQ_CHAOS_REPORT"]).open("a") as kept:
            kept.write(report + "\n\n")
    assert chaos.work.stop() == 0, chaos.work.output()
    return rows, report


def check_guarantees(rows, report):
    by_mode = {row["delivery"]: row for row in rows}
    for row in rows:
        assert row["lost"] == 0, report
        assert row["stuck in claimed"] == 0, report
        assert row["finished"] + row["failed"] == row["enqueued"], report
    # Kills landed mid-run: the run tested something.
    assert sum(row["interruptions"] for row in rows) > 0, report

    exactly_once = by_mode["exactly_once"]
    assert exactly_once["executions beyond one"] == 0, report
    assert exactly_once["_successful_executions"] == {1: exactly_once["finished"]}, report
    assert exactly_once["_failed_with_effects"] == 0, report

    # Run again after an interruption, or after an attempt whose task raised (its retry).
    at_least_once = by_mode["at_least_once"]
    assert at_least_once["executions beyond one"] <= (
        at_least_once["interruptions"] + at_least_once["in attempts that raised"]
    ), report

    # Never delivered again: a second execution only in a retry after the task raised.
    at_most_once = by_mode["at_most_once"]
    assert at_most_once["_deliveries_beyond_one"] == 0, report
    assert at_most_once["_interrupted_not_failed"] == 0, report
    assert at_most_once["_successful_deliveries"] == {1: at_most_once["finished"]}, report


def attempt_errors(task):
    """The errors of every attempt of ``task``'s jobs, as (exception class path, message)."""
    return [
        (attempt["error"]["exception_class_path"], attempt["error"]["message"])
        for attempts in Job.objects.filter(task_path=task.module_path).values_list(
            "attempts", flat=True
        )
        for attempt in attempts
        if attempt["error"]
    ]


def test_chaos(dq_work, request, capsys):
    cluster = None
    if connection.vendor in RESTARTABLE_SERVERS:
        # On a server of the tests' own, which the run restarts.
        cluster = request.getfixturevalue("restartable_db")
    rows, report = run_chaos(dq_work, cluster, capsys, connection.vendor)
    check_guarantees(rows, report)
    check_batches(report)


def test_chaos_on_sqlite_with_djangos_default_settings(dq_work, sqlite_defaults_db, capsys):
    """Deferred transactions, a 5 s lock timeout and no WAL: every guarantee holds; no
    exactly_once job fails for a lock wait (a rolled-back run is an interruption); no
    live worker is pruned for a heartbeat that waited on the lock."""
    rows, report = run_chaos(dq_work, None, capsys, "sqlite with Django's default settings")
    check_guarantees(rows, report)
    check_batches(report)
    errors = {mode: attempt_errors(task) for mode, (task, _) in MODES.items()}
    assert not [
        error for error in errors["exactly_once"] if error[0] == "django.db.utils.OperationalError"
    ], report
    assert {
        mode: [e for e in found if e[0] == PROCESS_PRUNED] for mode, found in errors.items()
    } == {mode: [] for mode in MODES}, report
