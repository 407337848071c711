"""The measurements on one database, run by ``benchmarks.run`` in a process of its own
whose ``DATABASE_URL`` names the scratch database (already created, empty).

``python -m benchmarks.measure --out PATH [--quick]`` writes the figures as JSON to PATH
and reports progress on stderr.
"""

import argparse
import json
import os
import platform
import random
import resource
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
django.setup()

from django.apps import apps  # noqa: E402 - after django.setup()
from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.core.management.color import no_style  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.db.models import Count, Q  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from django.utils import timezone  # noqa: E402

from benchmarks import ceiling, tasks  # noqa: E402
from benchmarks.peers.figures import (  # noqa: E402
    drain_rates,
    latency_figures,
    percentile,
    processes_of,
)
from dq.batches import batch  # noqa: E402
from dq.conf import default_worker_processes  # noqa: E402
from dq.models import Batch, ClaimedExecution, Job, Process, ReadyExecution  # noqa: E402
from dq.queues import QueueSelector  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / ".bench" / "logs"

# Seconds between checks of whether a drain is done. Its end time is read from the jobs'
# own finished_at, so this only adds to the benchmark's wall time, not to the figures.
POLL_INTERVAL = 0.1


@dataclass(frozen=True)
class Sizes:
    single_enqueues: int
    bulk_enqueues: int
    bulk_batch: int
    # (backlog, label, dq_work arguments)
    drains: tuple[tuple[int, str, tuple[str, ...]], ...]
    latency_jobs: int
    polling_latency_jobs: int
    history: int
    waiting: int
    scale_drain: int
    claim_calls: int
    ceiling_seconds: float
    ceiling_connections: int
    # The metrics' cost: how many times the drain of the defaults is measured without
    # metrics, then with them (--metrics-port, scraped).
    metrics_pairs: int
    # The batches' cost: how many times the bulk enqueue and the drain of the defaults are
    # measured with plain jobs, then with the same jobs in batches (of bulk_batch jobs).
    batch_pairs: int


# The polling intervals compared where idle workers poll, the variable that sets one for
# dq_work (benchmarks/settings.py) and the idle time measured at each.
POLLING_INTERVALS = (0.05, 0.1, 0.25, 0.5)
POLLING = "DQ_BENCH_POLLING_INTERVAL"
IDLE_SECONDS = 5.0

# Prometheus metrics: seconds between the scrapes of a dq_work with --metrics-port during a
# drain (a Prometheus server's scrape_interval is 15 to 60 s: 1 s is many times that), and
# how long a scrape may take.
SCRAPE_INTERVAL = 1.0
SCRAPE_TIMEOUT = 5.0

# dq's admin pages timed with a large history: (key, what it is, path; {job} a job's id),
# each requested ADMIN_WARMUPS times, then ADMIN_REQUESTS times timed; the project's
# targets (ms, of the median) for some, reported and not asserted.
ADMIN_PAGES = (
    ("overview", "queues overview", "/admin/dq/queue/"),
    ("jobs", "job list", "/admin/dq/job/"),
    ("jobs_ready", "job list, state ready", "/admin/dq/job/?state=ready"),
    ("failed", "failed list", "/admin/dq/failedexecution/"),
    ("job", "a finished job's page", "/admin/dq/job/{job}/change/"),
)
ADMIN_WARMUPS = 2
ADMIN_REQUESTS = 10
ADMIN_TARGETS_MS = {"overview": 300, "jobs": 100}
ADMIN_SLOWEST_QUERIES = 3  # the slowest queries of a page's counted request kept in the JSON
DEFAULT_PROCESSES = default_worker_processes()
DEFAULTS = (
    f"defaults ({DEFAULT_PROCESSES} process{'es' if DEFAULT_PROCESSES > 1 else ''} x 5 threads)"
)
ONE_THREAD = ("--processes 1 --threads 1", ("--processes", "1", "--threads", "1"))
TWO_BY_TEN = ("--processes 2 --threads 10", ("--processes", "2", "--threads", "10"))
FULL = Sizes(
    single_enqueues=2_000,
    bulk_enqueues=20_000,
    bulk_batch=1_000,
    drains=(
        (5_000, DEFAULTS, ()),
        (5_000, *ONE_THREAD),
        (5_000, *TWO_BY_TEN),
        (50_000, DEFAULTS, ()),
    ),
    latency_jobs=300,
    polling_latency_jobs=150,
    history=1_000_000,
    waiting=100_000,
    scale_drain=3_000,
    claim_calls=100,
    ceiling_seconds=2.0,
    ceiling_connections=8,
    metrics_pairs=3,
    batch_pairs=3,
)
QUICK = Sizes(
    single_enqueues=300,
    bulk_enqueues=5_000,
    bulk_batch=1_000,
    drains=((2_000, DEFAULTS, ()), (2_000, *TWO_BY_TEN)),
    latency_jobs=150,
    polling_latency_jobs=60,
    history=100_000,
    waiting=10_000,
    scale_drain=1_000,
    claim_calls=50,
    ceiling_seconds=1.0,
    ceiling_connections=8,
    metrics_pairs=1,
    batch_pairs=1,
)


def say(message):
    print(f"  [{connection.vendor}] {message}", file=sys.stderr, flush=True)


# -- the scratch database ------------------------------------------------------------------


def migrate():
    """dq's tables and those of the admin and the apps it needs (auth, sessions, ...)."""
    call_command("migrate", verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TABLE {tasks.PICKUP_TABLE} "
            "(number integer PRIMARY KEY, started double precision)"
        )


def dq_tables():
    """dq's tables, each once (a proxy model shares its model's)."""
    models = apps.get_app_config("dq").get_models()
    return [model._meta.db_table for model in models if not model._meta.proxy]


def flush():
    """Empty dq's tables (and the pickup table), as after migrate."""
    tables = [*dq_tables(), tasks.PICKUP_TABLE]
    statements = connection.ops.sql_flush(
        no_style(), tables, reset_sequences=True, allow_cascade=True
    )
    connection.ops.execute_sql_flush(statements)
    vacuum()


def vacuum():
    """What autovacuum would have done by the time a loaded backlog is worked: on this
    benchmark's PostgreSQL it may be off, and a fresh table has no statistics. On MySQL and
    MariaDB, the statistics InnoDB recalculates in the background once a tenth of a table
    changed."""
    tables = ", ".join(dq_tables())
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"VACUUM ANALYZE {tables}")
        elif connection.vendor == "mysql":
            cursor.execute(f"ANALYZE TABLE {tables}")
            cursor.fetchall()


def enqueue_backlog(count, chunk=1_000, *, batched=False):
    """``count`` no-op jobs through the bulk API, ``chunk`` a call; with ``batched``, each
    call in a batch block of its own (``batch(on_finish=tasks.batch_done)``: a batch of
    ``chunk`` jobs). Returns its rate."""
    began = time.perf_counter()
    for start in range(0, count, chunk):
        calls = [((), {})] * min(chunk, count - start)
        if batched:
            with batch(on_finish=tasks.batch_done):
                tasks.noop.enqueue_many(calls)
        else:
            tasks.noop.enqueue_many(calls)
    return count / (time.perf_counter() - began)


def database_facts():
    facts = {"vendor": connection.vendor}
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SHOW server_version")
            facts["version"] = cursor.fetchone()[0].split()[0]
            facts["settings"] = {}
            for name in ("shared_buffers", "fsync", "synchronous_commit", "autovacuum"):
                cursor.execute(f"SHOW {name}")
                facts["settings"][name] = cursor.fetchone()[0]
        elif connection.vendor == "mysql":
            facts.update(mysql_facts(cursor))
        else:
            facts["version"] = sqlite3.sqlite_version
            cursor.execute("PRAGMA journal_mode")
            facts["settings"] = {"journal_mode": cursor.fetchone()[0]}
            cursor.execute("PRAGMA synchronous")
            level = cursor.fetchone()[0]
            facts["settings"]["synchronous"] = {0: "off", 1: "normal", 2: "full"}.get(level, level)
    return facts


def mysql_facts(cursor):
    cursor.execute("SELECT VERSION()")
    server = "MariaDB" if connection.mysql_is_mariadb else "MySQL"
    version = cursor.fetchone()[0].split("-")[0]
    cursor.execute(
        "SHOW SESSION VARIABLES WHERE Variable_name IN ('innodb_buffer_pool_size', "
        "'innodb_flush_log_at_trx_commit', 'log_bin', 'tx_isolation', 'transaction_isolation')"
    )
    values = dict(cursor.fetchall())
    return {
        "version": f"{server} {version}",
        "settings": {
            "innodb_buffer_pool_size": f"{int(values['innodb_buffer_pool_size']) // 2**20}MB",
            "innodb_flush_log_at_trx_commit": values["innodb_flush_log_at_trx_commit"],
            "log_bin": values["log_bin"],
            # Django's isolation level; MariaDB before 11.1 calls the variable tx_isolation.
            "transaction_isolation": values.get("transaction_isolation")
            or values.get("tx_isolation"),
        },
    }


# -- dq_work as a user runs it -------------------------------------------------------------


class DQWork:
    """``python -m django dq_work ARGS`` in a subprocess, with its output in a log file."""

    def __init__(self, args, label, env=None):
        LOGS.mkdir(parents=True, exist_ok=True)
        slug = "".join(c if c.isalnum() else "-" for c in label).strip("-")
        self.log_path = LOGS / f"{connection.vendor}-{slug}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
        self.cpu_before = children_cpu()
        self.database_before = server_threads()
        self.started = time.time()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "django", "dq_work", *args],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def check_running(self):
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"dq_work exited with {self.proc.returncode}:\n{tail}")

    def stop(self):
        """SIGTERM, as a user's process manager stops it; reaped within 60 s or killed.
        Returns the CPU seconds its process tree used (the supervisor reaps its children)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                say("dq_work did not stop within 60 s of SIGTERM; killing it")
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return children_cpu() - self.cpu_before

    def drain(self, *, pending, jobs, during=None):
        """Wait while ``pending()`` (calling ``during()`` at each check, if given); then
        its memory and the database server's CPU seconds for its sessions (on PostgreSQL and
        MariaDB) so far, while it still runs."""
        deadline = time.monotonic() + 120 + jobs / 10
        served = set()  # MariaDB's threads of its sessions, closed ones too
        while pending():
            self.check_running()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{jobs:,} jobs were not done in time; see {self.log_path}")
            if self.database_before:
                served |= session_ids()
            if during is not None:
                during()
            time.sleep(POLL_INTERVAL)
        return {
            "memory": self.memory(),
            "database_cpu_s": database_cpu(self.database_before, served),
        }

    def database_errors(self):
        """How many times its processes logged a database error (and waited to retry)."""
        return self.log_path.read_text(errors="replace").count(": database error; ")

    def memory(self):
        """Peak and current resident memory (MiB) of each process of its tree, by dq kind."""
        pids = [self.proc.pid, *children_of(self.proc.pid)]
        kinds = dict(
            Process.objects.filter(pid__in=pids, hostname=socket.gethostname()).values_list(
                "pid", "kind"
            )
        )
        memory = {}
        for pid in pids:
            status = proc_status(pid)
            if status is None:
                continue
            kind = kinds.get(pid, "unknown")
            memory.setdefault(kind, []).append(
                {"pid": pid, "rss_mib": status["VmRSS"], "peak_rss_mib": status["VmHWM"]}
            )
        return memory


def free_port():
    """A TCP port of 127.0.0.1 that nothing listens on: the one the system gives a socket
    bound to port 0."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Scraper:
    """A Prometheus server's part: ``GET http://127.0.0.1:PORT/metrics`` of a dq_work with
    ``--metrics-port PORT`` every SCRAPE_INTERVAL s, the first as soon as it listens (until
    then, at each of the driver's checks), each scrape timed."""

    def __init__(self, port):
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.due = time.monotonic()
        self.times_ms = []
        self.failures = 0  # scrapes that failed once one had been answered
        self.text = ""  # the last answer

    def scrape_if_due(self):
        if time.monotonic() >= self.due:
            self.scrape()

    def scrape(self):
        began = time.monotonic()
        try:
            with urllib.request.urlopen(self.url, timeout=SCRAPE_TIMEOUT) as response:
                self.text = response.read().decode()
        except OSError:  # urllib's URLError included: not listening yet, or a failure
            self.failures += bool(self.times_ms)
            return
        self.times_ms.append(1000 * (time.monotonic() - began))
        self.due = began + SCRAPE_INTERVAL

    def jobs_counted(self):
        """The successful runs the last answer counted (dq_jobs_finished_total)."""
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in self.text.splitlines()
            if line.startswith("dq_jobs_finished_total{") and 'status="successful"' in line
        )

    def figures(self):
        return {
            "url": self.url,
            "interval_s": SCRAPE_INTERVAL,
            "scrapes": len(self.times_ms),
            "failures": self.failures,
            "ms_median": statistics.median(self.times_ms) if self.times_ms else None,
            "ms_max": max(self.times_ms, default=None),
            "times_ms": self.times_ms,
        }


def children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def session_ids():
    """The OS ids of what serves the other sessions on this database (dq_work's): server
    processes on PostgreSQL, server threads on MariaDB; None elsewhere (MySQL's
    PROCESSLIST has no thread id)."""
    if connection.vendor == "postgresql":
        sessions = (
            "SELECT pid FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    elif connection.vendor == "mysql" and connection.mysql_is_mariadb:
        sessions = (
            "SELECT TID FROM information_schema.PROCESSLIST "
            "WHERE DB = DATABASE() AND ID <> CONNECTION_ID()"
        )
    else:
        return None
    with connection.cursor() as cursor:
        cursor.execute(sessions)
        return {os_id for (os_id,) in cursor.fetchall()}


def database_cpu(before, served):
    """CPU seconds of the database server for the other sessions on this database
    (dq_work's), when it runs on this machine; None on SQLite, MySQL or when unknown.
    PostgreSQL serves each session with a process of its own, read while it lives.
    MariaDB serves it with a thread that outlives it and may have served others before:
    the threads of the sessions now and of those ``served`` saw (a worker reconnects after
    a database error), less what each had used ``before`` (``server_threads()``)."""
    clock = os.sysconf("SC_CLK_TCK")
    if connection.vendor == "postgresql":
        ticks = [cpu_ticks(f"/proc/{pid}/stat") for pid in session_ids()]
        return None if None in ticks else sum(ticks) / clock
    if not before:
        return None
    ticks = 0
    for tid in session_ids() | served:
        used = cpu_ticks(f"/proc/{tid}/task/{tid}/stat")
        earlier = before.get(tid, 0)
        if used is not None:  # else the thread is gone, and what it used with it
            ticks += used - earlier if used >= earlier else used  # else a new thread, same id
    return ticks / clock


def server_threads():
    """CPU ticks used so far by each thread of the MariaDB server, by thread id; empty
    elsewhere, and when the server does not run on this machine."""
    if connection.vendor != "mysql" or not connection.mysql_is_mariadb:
        return {}
    with connection.cursor() as cursor:
        cursor.execute("SELECT TID FROM information_schema.PROCESSLIST WHERE ID = CONNECTION_ID()")
        (own,) = cursor.fetchone()
    try:
        threads = os.listdir(f"/proc/{own}/task")
    except OSError:
        return {}
    ticks = {int(tid): cpu_ticks(f"/proc/{own}/task/{tid}/stat") for tid in threads}
    return {tid: used for tid, used in ticks.items() if used is not None}


def cpu_ticks(path):
    """User and system CPU ticks in a /proc stat file; None if it cannot be read."""
    try:
        stat = Path(path).read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def children_of(parent):
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name (field 2) may hold spaces; the parent pid follows the state.
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            children.append(int(entry.name))
    return children


def proc_status(pid):
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    values = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = round(int(value.split()[0]) / 1024, 1)
    return values


def wait_for(condition, *, timeout, what, work=None):
    deadline = time.monotonic() + timeout
    while not condition():
        if work is not None:
            work.check_running()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(POLL_INTERVAL)


def exists(sql, params=()):
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT EXISTS ({sql})", params)
        return bool(cursor.fetchone()[0])


def unfinished(up_to_job=None):
    """Whether jobs are still ready or claimed (only those with id <= ``up_to_job``)."""
    where, params = ("WHERE job_id <= %s", [up_to_job]) if up_to_job else ("", [])
    return exists(f"SELECT 1 FROM dq_ready_execution {where}", params) or exists(
        f"SELECT 1 FROM dq_claimed_execution {where}", params
    )


def finish_times(count, *, after):
    """Epoch seconds at which the 1st, 20%, 80% and ``count``-th jobs that finished after
    the epoch second ``after`` did so."""
    after = datetime.fromtimestamp(after, UTC)
    finished = Job.objects.filter(finished_at__gt=after).order_by("finished_at")
    marks = {"first": 0, "p20": int(0.2 * count), "p80": int(0.8 * count), "last": count - 1}
    return {
        name: finished.values_list("finished_at", flat=True)[index].timestamp()
        for name, index in marks.items()
    }


def rates(count, began, times):
    """From-start and steady-state rates of ``count`` jobs, from their finish times."""
    return drain_rates(
        count, began, first=times["first"], p20=times["p20"], p80=times["p80"], last=times["last"]
    )


# -- the measurements ----------------------------------------------------------------------


def measure_enqueue(sizes):
    flush()
    for _ in range(20):  # warm up: connection, imports, statement caches
        tasks.noop.enqueue()
    flush()
    began = time.perf_counter()
    for _ in range(sizes.single_enqueues):
        tasks.noop.enqueue()
    single = sizes.single_enqueues / (time.perf_counter() - began)
    flush()
    bulk = enqueue_backlog(sizes.bulk_enqueues, sizes.bulk_batch)
    flush()
    say(f"enqueue: {single:,.0f} jobs/s one at a time, {bulk:,.0f} jobs/s in bulk")
    return {
        "single": {"jobs": sizes.single_enqueues, "jobs_per_s": single},
        "bulk": {"jobs": sizes.bulk_enqueues, "batch": sizes.bulk_batch, "jobs_per_s": bulk},
    }


def measure_drain(size, label, args, *, scraped=False, batched=False):
    """A backlog of ``size`` no-op jobs worked off by ``dq_work ARGS``; with ``scraped``,
    dq_work serves metrics on a free port (``--metrics-port``), scraped every
    SCRAPE_INTERVAL s while it drains and once more when it is done (before it is stopped:
    the last answer's count of successful runs is kept). With ``batched``, the backlog is
    in batches of 1,000 jobs, each with an on_finish callback (``enqueue_backlog``): the
    drain is done when every batch has finished and its callback has run, its figures are
    of every job run (the callbacks too), and the batches are checked
    (``check_batches``)."""
    flush()
    enqueue_backlog(size, batched=batched)
    vacuum()
    batches = Batch.objects.count()
    jobs = size + batches  # each batch's callback is a job
    scraper = None
    if scraped:
        port = free_port()
        scraper = Scraper(port)
        args = (*args, "--metrics-port", str(port))
    mode = "-metrics" if scraped else "-batches" if batched else ""
    work = DQWork(args, f"drain-{size}-{label}{mode}")
    try:
        seen = work.drain(
            pending=unfinished_batch if batched else unfinished,
            jobs=jobs,
            during=scraper.scrape_if_due if scraper else None,
        )
        if scraper:
            scraper.scrape()
    finally:
        cpu = work.stop()
    done = Job.objects.filter(status=Job.Status.SUCCESSFUL).count()
    if done != jobs:
        raise RuntimeError(f"drain of {jobs} jobs ({label}{mode}): {done} successful")
    result = {
        "setting": label,
        "args": list(args),
        "processes": processes_of(args) or DEFAULT_PROCESSES,
        **rates(jobs, work.started, finish_times(jobs, after=work.started)),
        **cpu_per_job(cpu, seen["database_cpu_s"], jobs),
        "jobs_per_end_write": jobs_per_end_write(work.started),
        "database_errors": work.database_errors(),
        "memory": seen["memory"],
    }
    notes = ""
    if scraper:
        result["metrics"] = {**scraper.figures(), "jobs_counted": scraper.jobs_counted()}
        notes = f", metrics on ({len(scraper.times_ms)} scrapes)"
    if batched:
        result["batches"] = check_batches(size)
        notes = f", in {batches} batches, checked"
    say(
        f"drain {size:,} ({label}{notes}): {result['jobs_per_s']:,.0f} jobs/s from start, "
        f"{result['steady_jobs_per_s']:,.0f} steady, "
        f"{result['dq_work_cpu_ms_per_job']:.2f} CPU ms a job{errors_logged(work)}"
    )
    return result


def unfinished_batch():
    """Whether a batch has not finished, or jobs are still ready or claimed. The batches
    first: the end of a batch's last job enqueues its callback as it deletes the job's
    claim, between the two reads of ``unfinished``; once every batch has finished, the
    callbacks are ready or claimed, or done."""
    return Batch.objects.filter(finished_at__isnull=True).exists() or unfinished()


def check_batches(jobs):
    """That the batches of a drained backlog of ``jobs`` jobs ended as they must: every
    one finished, its counts those of its jobs (counted again from the jobs), all of them
    ``jobs``, and exactly one job of its on_finish callback, successful, the one the batch
    names. Raises RuntimeError with what is wrong; else returns what was checked."""
    successful = Q(status=Job.Status.SUCCESSFUL)
    recounted = {
        row["batch_id"]: row
        for row in Job.objects.filter(batch_id__isnull=False)
        .values("batch_id")
        .annotate(
            total=Count("pk"),
            succeeded=Count("pk", filter=successful),
            failed=Count("pk", filter=Q(status=Job.Status.FAILED)),
            cancelled=Count("pk", filter=Q(status=Job.Status.CANCELLED)),
        )
    }
    callbacks = {}
    for pk, kwargs, done in Job.objects.filter(task_path=tasks.batch_done.module_path).values_list(
        "pk", "kwargs", "status"
    ):
        callbacks.setdefault(kwargs.get("batch_id"), []).append((pk, done))
    problems = []
    batches = list(Batch.objects.order_by("pk"))
    for each in batches:
        counted = recounted.get(each.pk, {})
        counts = {key: getattr(each, key) for key in ("total", "succeeded", "failed", "cancelled")}
        again = {key: counted.get(key, 0) for key in counts}
        if each.finished_at is None:
            problems.append(f"batch {each.pk} has not finished")
        if counts != again:
            problems.append(f"batch {each.pk} counts {counts}, its jobs {again}")
        ran = callbacks.pop(each.pk, [])
        named = each.callback_jobs.get(Batch.Callback.FINISH)
        if [pk for pk, _ in ran] != [named] or ran[0][1] != Job.Status.SUCCESSFUL:
            problems.append(f"batch {each.pk}: callback jobs {ran}, the batch names {named!r}")
    in_batches = sum(each.total for each in batches)
    if in_batches != jobs:
        problems.append(f"{in_batches} jobs in batches, not {jobs}")
    if callbacks:
        problems.append(f"callback jobs of no batch: {callbacks}")
    if problems:
        message = f"batches of the {jobs:,}-job drain: " + "; ".join(problems)
        say(f"!! CHECK FAILED: {message}")
        raise RuntimeError(message)
    return {"batches": len(batches), "jobs": in_batches, "checked": True}


def defaults_drain(sizes):
    """The defaults' smallest backlog (the "5,000 jobs, defaults" drain)."""
    return min(size for size, label, _ in sizes.drains if label == DEFAULTS)


def paired(runs, keys):
    """The figures ``keys`` of the runs of two modes (``runs``: {mode: [run, ...]}, the
    base mode first), each as the median of each mode, the difference of the second mode's
    from the base's in % of the base's, and the spread of each mode's runs (max - min) in %
    of its median."""
    base, other = runs
    summary = {}
    for key in keys:
        values = {mode: [run[key] for run in runs[mode]] for mode in runs}
        medians = {mode: statistics.median(values[mode]) for mode in runs}
        summary[key] = {
            **medians,
            "difference_percent": 100 * (medians[other] / medians[base] - 1),
            "spread_percent": {
                mode: 100 * (max(values[mode]) - min(values[mode])) / medians[mode] for mode in runs
            },
        }
    return summary


def say_paired(what, figure, modes):
    """Report one figure of ``paired``: each mode's median, the difference, the spreads."""
    spreads = ", ".join(f"{figure['spread_percent'][mode]:.1f}% {mode}" for mode in modes)
    say(
        f"{what} {figure[modes[0]]:,.0f} {modes[0]}, {figure[modes[1]]:,.0f} {modes[1]} "
        f"({figure['difference_percent']:+.1f}%; spread {spreads})"
    )


def measure_metrics(sizes):
    """What dq_work's Prometheus metrics cost: the drain of the defaults' smallest backlog
    without metrics, then with them (``--metrics-port``, scraped), ``metrics_pairs`` times
    alternately so that the machine's drift falls on both; ``paired`` figures of them."""
    size = defaults_drain(sizes)
    runs = {"off": [], "on": []}
    for _ in range(sizes.metrics_pairs):
        runs["off"].append(measure_drain(size, DEFAULTS, ()))
        runs["on"].append(measure_drain(size, DEFAULTS, (), scraped=True))
    summary = paired(runs, ("jobs_per_s", "steady_jobs_per_s", "dq_work_cpu_ms_per_job"))
    say_paired("metrics: jobs/s steady", summary["steady_jobs_per_s"], tuple(runs))
    return {
        "jobs": size,
        "setting": DEFAULTS,
        "pairs": sizes.metrics_pairs,
        "scrape_interval_s": SCRAPE_INTERVAL,
        **summary,
        "runs": runs,
    }


def measure_batches(sizes):
    """What batches cost a job, ``batch_pairs`` times alternately, plain then batched
    (``paired`` figures of them): the bulk enqueue of ``bulk_enqueues`` jobs,
    ``bulk_batch`` a call, each call plain or in a batch block of its own; and the drain
    of the defaults' smallest backlog, plain or in batches of 1,000 jobs with an on_finish
    callback (``measure_drain``, whose batched runs are checked)."""
    jobs, chunk = sizes.bulk_enqueues, sizes.bulk_batch
    enqueues = {"plain": [], "batched": []}
    for _ in range(sizes.batch_pairs):
        for mode, runs in enqueues.items():
            flush()
            runs.append({"jobs_per_s": enqueue_backlog(jobs, chunk, batched=mode == "batched")})
    flush()
    enqueue = paired(enqueues, ("jobs_per_s",))
    say_paired("batches: enqueue_many() jobs/s", enqueue["jobs_per_s"], tuple(enqueues))
    size = defaults_drain(sizes)
    drains = {"plain": [], "batched": []}
    for _ in range(sizes.batch_pairs):
        drains["plain"].append(measure_drain(size, DEFAULTS, ()))
        drains["batched"].append(measure_drain(size, DEFAULTS, (), batched=True))
    keys = ["jobs_per_s", "steady_jobs_per_s", "dq_work_cpu_ms_per_job", "jobs_per_end_write"]
    if all(run["database_cpu_ms_per_job"] is not None for mode in drains.values() for run in mode):
        keys.append("database_cpu_ms_per_job")
    drain = paired(drains, keys)
    say_paired("batches: drain jobs/s steady", drain["steady_jobs_per_s"], tuple(drains))
    return {
        "pairs": sizes.batch_pairs,
        "enqueue": {"jobs": jobs, "batch": chunk, **enqueue, "runs": enqueues},
        "drain": {
            "jobs": size,
            "setting": DEFAULTS,
            "batches": drains["batched"][0]["batches"]["batches"],
            **drain,
            "runs": drains,
        },
    }


def errors_logged(work):
    """A note of the database errors dq_work logged, if any."""
    errors = work.database_errors()
    plural = "s" if errors > 1 else ""
    return f"; {errors} database error{plural} logged, see {work.log_path}" if errors else ""


def jobs_per_end_write(after):
    """Jobs per statement that wrote their ends, among jobs started after the epoch second
    ``after``: the ends a worker writes together share one finished_at."""
    started = Job.objects.filter(started_at__gt=datetime.fromtimestamp(after, UTC))
    return started.count() / max(1, started.values("finished_at").distinct().count())


def cpu_per_job(dq_work, database, jobs):
    return {
        "dq_work_cpu_s": dq_work,
        "database_cpu_s": database,
        "dq_work_cpu_ms_per_job": 1000 * dq_work / jobs,
        "database_cpu_ms_per_job": None if database is None else 1000 * database / jobs,
    }


def measure_latency(count, polling_interval=None):
    """Pickup latency: jobs enqueued one by one, 10-50 ms apart, to an idle dq_work (its
    workers polling every ``polling_interval`` s, where given)."""
    flush()
    label = "latency" if polling_interval is None else f"latency-polling-{polling_interval}"
    env = None if polling_interval is None else {POLLING: str(polling_interval)}
    work = DQWork([], label, env)
    try:
        wait_until_idle(work)
        chance = random.Random(20260509)
        returned = {}
        for number in range(count):
            time.sleep(chance.uniform(0.010, 0.050))
            tasks.record_start.enqueue(number)
            returned[number] = time.time()
        with connection.cursor() as cursor:

            def all_started():
                cursor.execute(f"SELECT count(*) FROM {tasks.PICKUP_TABLE}")
                return cursor.fetchone()[0] == count

            wait_for(all_started, timeout=60, what="every latency job starting", work=work)
            cursor.execute(f"SELECT number, started FROM {tasks.PICKUP_TABLE}")
            started = dict(cursor.fetchall())
    finally:
        work.stop()
    result, line = latency_figures(
        1000 * (started[number] - returned[number]) for number in returned
    )
    say(line)
    return result


def wait_until_idle(work):
    wait_for(
        lambda: Process.objects.filter(kind=Process.Kind.WORKER).count() == DEFAULT_PROCESSES,
        timeout=60,
        what="dq_work's workers registering",
        work=work,
    )
    time.sleep(1.0)  # let them reach their idle wait (and LISTEN, on PostgreSQL)


def measure_polling(sizes):
    """Where idle workers poll (every database but PostgreSQL): the pickup latency and the
    cost of an idle dq_work, for each polling interval of POLLING_INTERVALS. The cost is
    what dq_work's processes and the database server (MariaDB: its statements counted)
    spend while no job comes, over IDLE_SECONDS."""
    if connection.vendor == "postgresql":
        return None
    result = []
    for interval in POLLING_INTERVALS:
        flush()
        work = DQWork([], f"idle-polling-{interval}", {POLLING: str(interval)})
        try:
            wait_until_idle(work)
            pids = [work.proc.pid, *children_of(work.proc.pid)]
            ticks, statements = tree_ticks(pids), statements_served()
            time.sleep(IDLE_SECONDS)  # the window measured: nothing to wait for
            ticks, served = tree_ticks(pids) - ticks, statements_served()
            # None where the server does not count them (SQLite has no server).
            statements = None if statements is None else served - statements
        finally:
            work.stop()
        idle = {
            "polling_interval_s": interval,
            "dq_work_cpu_percent": 100 * ticks / os.sysconf("SC_CLK_TCK") / IDLE_SECONDS,
            # Less the measurement's own second statement.
            "statements_per_s": None if statements is None else (statements - 1) / IDLE_SECONDS,
        }
        idle["latency"] = measure_latency(sizes.polling_latency_jobs, interval)
        say(
            f"polling every {interval} s: idle dq_work {idle['dq_work_cpu_percent']:.1f}% "
            f"of a core, {idle['statements_per_s'] or 0:.0f} statements/s"
        )
        result.append(idle)
    return result


def tree_ticks(pids):
    return sum(cpu_ticks(f"/proc/{pid}/stat") or 0 for pid in pids)


def statements_served():
    """The statements the MySQL or MariaDB server has run since it started; None elsewhere."""
    if connection.vendor != "mysql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("SHOW GLOBAL STATUS LIKE 'Questions'")
        return int(cursor.fetchone()[1])


def job_columns(status, *, finished):
    """dq_job's columns, and the values of a no-op job in ``status`` as the database
    stores them (times are filled in by the loader)."""
    now = timezone.now()
    job = Job(
        task_path=tasks.noop.module_path,
        queue_name="default",
        backend="default",
        status=status,
        enqueued_at=now,
    )
    if finished:
        job.started_at = job.last_attempted_at = job.finished_at = now
        job.attempt_count = 1
        job.record_attempt(worker_id="worker-000000000000", started_at=now, finished_at=now)
    fields = [field for field in Job._meta.concrete_fields if not field.primary_key]
    return [
        (field.column, field.get_db_prep_save(getattr(job, field.attname), connection))
        for field in fields
    ]


TIME_COLUMNS = ("enqueued_at", "started_at", "last_attempted_at", "finished_at")


def insert_jobs(count, *, finished):
    """Insert ``count`` no-op jobs with SQL: finished ones (successful, spread over the last
    ``count`` x 50 ms, within dq's default keep_finished of a day) or waiting ones (ready,
    with their ready rows)."""
    if not count:
        return
    status = Job.Status.SUCCESSFUL if finished else Job.Status.READY
    columns = job_columns(status, finished=finished)
    names = ", ".join(name for name, _ in columns)
    if connection.vendor == "postgresql":
        # Job n ended n x 50 ms ago: 1,000,000 jobs span about 14 hours.
        values, params = [], []
        for name, value in columns:
            if name in TIME_COLUMNS and value is not None:
                values.append("now() - g * interval '50 milliseconds'")
            else:
                values.append("%s")
                params.append(value)
        params.append(count)
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO dq_job ({names}) SELECT {', '.join(values)} "
                f"FROM generate_series(%s, 1, -1) AS g",
                params,
            )
    elif connection.vendor == "mysql":
        # The same, the numbers from a recursive CTE (times are UTC, as Django stores them).
        values, params = [], []
        for name, value in columns:
            if name in TIME_COLUMNS and value is not None:
                values.append("UTC_TIMESTAMP(6) - INTERVAL g.n * 50000 MICROSECOND")
            else:
                values.append("%s")
                params.append(value)
        depth = (
            "max_recursive_iterations" if connection.mysql_is_mariadb else "cte_max_recursion_depth"
        )
        with connection.cursor() as cursor:
            cursor.execute(f"SET SESSION {depth} = %s", [count + 1])
            cursor.execute(
                f"INSERT INTO dq_job ({names}) WITH RECURSIVE g (n) AS "
                "(SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < %s) "
                f"SELECT {', '.join(values)} FROM g ORDER BY g.n DESC",
                [count, *params],
            )
    else:
        # The same, row by row in batches: SQLite has no generate_series.
        now = datetime.now(UTC)
        placeholders = ", ".join("%s" for _ in columns)

        def row(n):
            at = connection.ops.adapt_datetimefield_value(now - timedelta(milliseconds=50 * n))
            return [
                at if name in TIME_COLUMNS and value is not None else value
                for name, value in columns
            ]

        for start in range(count, 0, -20_000):
            rows = [row(n) for n in range(start, max(start - 20_000, 0), -1)]
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.executemany(f"INSERT INTO dq_job ({names}) VALUES ({placeholders})", rows)
    if not finished:
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO dq_ready_execution "
                "(job_id, backend, queue_name, priority, created_at) "
                "SELECT id, backend, queue_name, priority, enqueued_at FROM dq_job "
                "WHERE status = %s "
                "ORDER BY id",
                [Job.Status.READY],
            )


def measure_claims(calls):
    """In this process, ``calls`` x (claim up to 10 jobs, then finish each)."""
    process = Process.register(Process.Kind.WORKER, using="default")
    claims, finishes = [], []
    try:
        for _ in range(calls):
            began = time.perf_counter()
            jobs = ReadyExecution.claim(
                (QueueSelector("*"),), 10, process, backend="default", using="default"
            )
            claims.append(time.perf_counter() - began)
            for job in jobs:
                began = time.perf_counter()
                job.record_start(timezone.now())
                job.return_value = None
                ClaimedExecution.finish(job, worker_id=process.name, using="default")
                finishes.append(time.perf_counter() - began)
    finally:
        Process.objects.filter(pk=process.pk).delete()
    claims.sort()
    finishes.sort()
    return {
        "claims": calls,
        "jobs": len(finishes),
        "claim_10_ms_p50": 1000 * percentile(claims, 50),
        "claim_10_ms_mean": 1000 * sum(claims) / len(claims),
        "finish_ms_p50": 1000 * percentile(finishes, 50),
        "finish_ms_mean": 1000 * sum(finishes) / len(finishes),
        "jobs_per_s": len(finishes) / (sum(claims) + sum(finishes)),
    }


def admin_client():
    """A django.test.Client logged in as a superuser (created with the ORM; no password)."""
    users = get_user_model()
    user = users.objects.filter(username="bench").first()
    if user is None:
        user = users.objects.create_superuser("bench", "bench@example.com", password=None)
    client = Client()
    client.force_login(user)
    return client


def measure_admin(sizes):
    """dq's admin pages as a logged-in superuser, in this process through django.test.Client
    (no HTTP server): the time of the view, its queries and its rendering. The connection
    stays open from request to request (the test client does not close it)."""
    client = admin_client()
    # A finished job from the middle of the history.
    first = (
        Job.objects.filter(status=Job.Status.SUCCESSFUL)
        .order_by("pk")
        .values_list("pk", flat=True)
        .first()
    )
    job = (
        Job.objects.filter(status=Job.Status.SUCCESSFUL, pk__gte=first + sizes.history // 2)
        .order_by("pk")
        .values_list("pk", flat=True)
        .first()
    )
    pages = {}
    for key, label, path in ADMIN_PAGES:
        url = path.format(job=job)

        def get(url=url):
            response = client.get(url)
            if response.status_code != 200:
                raise RuntimeError(
                    f"admin page {url}: status {response.status_code}\n"
                    f"{response.content[:2000].decode(errors='replace')}"
                )
            return response

        for _ in range(ADMIN_WARMUPS - 1):
            get()
        # The last warm-up is the request whose queries are counted (capturing them costs
        # time of its own, so it is not one of the timed requests).
        with CaptureQueriesContext(connection) as captured:
            size = len(get().content)
        # Read now: the next request's start empties the connection's log of queries.
        queries = list(captured.captured_queries)
        times = []
        for _ in range(ADMIN_REQUESTS):
            began = time.perf_counter()
            get()
            times.append(1000 * (time.perf_counter() - began))
        target = ADMIN_TARGETS_MS.get(key)
        median = statistics.median(times)
        slowest = sorted(queries, key=lambda query: -float(query["time"]))
        pages[key] = {
            "label": label,
            "path": path,
            "url": url,
            "median_ms": median,
            "max_ms": max(times),
            "min_ms": min(times),
            "times_ms": times,
            "queries": len(queries),
            "bytes": size,
            "target_ms": target,
            "within_target": None if target is None else median < target,
            "slowest_queries": [
                {"ms": 1000 * float(query["time"]), "sql": query["sql"][:1000]}
                for query in slowest[:ADMIN_SLOWEST_QUERIES]
            ],
        }
        verdict = ""
        if target is not None:
            verdict = f" (target < {target} ms: {'met' if median < target else 'MISSED'})"
        say(
            f"admin {url}: {median:.1f} ms median, {max(times):.1f} ms max, "
            f"{len(queries)} queries{verdict}"
        )
    return {
        "history": sizes.history,
        "waiting": sizes.waiting,
        "warmups": ADMIN_WARMUPS,
        "requests": ADMIN_REQUESTS,
        "job": job,
        "pages": pages,
    }


def measure_scale(sizes):
    """The large history: claim and finish on an empty and a loaded jobs table, dq's admin
    pages on the loaded one, then a drain; returns the figures and those of the admin."""
    flush()
    insert_jobs(sizes.claim_calls * 10 + 10, finished=False)
    vacuum()
    empty = measure_claims(sizes.claim_calls)
    say(
        f"claim cost, empty table: {empty['claim_10_ms_mean']:.2f} ms per claim of 10, "
        f"{empty['finish_ms_mean']:.2f} ms per finish"
    )

    flush()
    began = time.perf_counter()
    insert_jobs(sizes.history, finished=True)
    insert_jobs(sizes.waiting, finished=False)
    vacuum()
    loaded = time.perf_counter() - began
    say(f"loaded {sizes.history:,} finished + {sizes.waiting:,} waiting jobs in {loaded:.1f} s")
    admin_pages = measure_admin(sizes)
    large = measure_claims(sizes.claim_calls)
    say(
        f"claim cost, large table: {large['claim_10_ms_mean']:.2f} ms per claim of 10, "
        f"{large['finish_ms_mean']:.2f} ms per finish"
    )

    # Work off the first scale_drain waiting jobs with dq_work's defaults.
    first = ReadyExecution.objects.order_by("job_id").values_list("job_id", flat=True).first()
    target = first + sizes.scale_drain - 1
    work = DQWork([], "scale-drain")
    try:
        seen = work.drain(pending=lambda: unfinished(up_to_job=target), jobs=sizes.scale_drain)
    finally:
        cpu = work.stop()
    drain = {
        "setting": DEFAULTS,
        **rates(
            sizes.scale_drain, work.started, finish_times(sizes.scale_drain, after=work.started)
        ),
        # dq_work went on past the first scale_drain jobs until it was stopped.
        **cpu_per_job(
            cpu,
            seen["database_cpu_s"],
            Job.objects.filter(finished_at__gt=datetime.fromtimestamp(work.started, UTC)).count(),
        ),
        "jobs_per_end_write": jobs_per_end_write(work.started),
        "database_errors": work.database_errors(),
    }
    say(
        f"drain with a large history: {drain['steady_jobs_per_s']:,.0f} jobs/s steady"
        f"{errors_logged(work)}"
    )
    scale = {
        "history": sizes.history,
        "waiting": sizes.waiting,
        "load_seconds": loaded,
        "claims_empty": empty,
        "claims_large": large,
        "drain_large": drain,
    }
    return scale, admin_pages


def server_params(database_key):
    """The connection's server and database as a driver's keyword arguments."""
    settings = connection.settings_dict
    params = {database_key: settings["NAME"]}
    for key, name in (("user", "USER"), ("password", "PASSWORD"), ("host", "HOST")):
        if settings[name]:
            params[key] = settings[name]
    if settings["PORT"]:
        params["port"] = int(settings["PORT"])
    return params


def measure_ceiling(sizes):
    if connection.vendor == "postgresql":
        database = ceiling.PostgreSQL(server_params("dbname"))
    elif connection.vendor == "mysql":
        database = ceiling.MySQL(server_params("database"))
    else:
        database = ceiling.SQLite(str(connection.settings_dict["NAME"]))
    result = ceiling.measure(
        database, seconds=sizes.ceiling_seconds, many=sizes.ceiling_connections
    )
    say("ceiling: " + ", ".join(f"{k} {v['jobs_per_s']:,.0f} jobs/s" for k, v in result.items()))
    return result


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true")
    options = parser.parse_args(argv)
    sizes = QUICK if options.quick else FULL
    began = time.perf_counter()
    results = {
        "database": database_facts(),
        "sizes": asdict(sizes),
        "load_before": os.getloadavg(),
    }
    migrate()
    say("ceiling (bare SQL, no dq)")
    results["ceiling"] = measure_ceiling(sizes)
    results["enqueue"] = measure_enqueue(sizes)
    results["drain"] = [measure_drain(size, label, args) for size, label, args in sizes.drains]
    results["metrics"] = measure_metrics(sizes)
    results["batches"] = measure_batches(sizes)
    results["latency"] = measure_latency(sizes.latency_jobs)
    results["polling"] = measure_polling(sizes)
    results["scale"], results["admin_pages"] = measure_scale(sizes)
    results["load_after"] = os.getloadavg()
    results["seconds"] = time.perf_counter() - began
    results["python"] = platform.python_version()
    results["django"] = django.get_version()
    Path(options.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
