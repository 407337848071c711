"""Fixtures shared by the suite: waiting on conditions, and running the real dq_work."""

import contextlib
import functools
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import DEFAULT_DB_ALIAS, connection, connections

ROOT = Path(__file__).resolve().parent.parent


def wait_until(condition, *, timeout=30.0, interval=0.02, message=None):
    """Call ``condition`` until it returns something truthy, return that; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(message or f"condition not met within {timeout}s: {condition}")
        time.sleep(interval)


def subprocess_env(options=None):
    """The environment for a process that must use the test database the suite uses."""
    env = dict(os.environ)
    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        env["DATABASE_URL"] = f"sqlite:///{settings['NAME']}"
    else:
        scheme, port = {"postgresql": ("postgres", 5432), "mysql": ("mysql", 3306)}[
            connection.vendor
        ]
        env["DATABASE_URL"] = (
            f"{scheme}://{settings['USER'] or ''}@{settings['HOST'] or ''}:"
            f"{settings['PORT'] or port}/{settings['NAME']}"
        )
    if connection.vendor == "sqlite" and not settings["OPTIONS"].get("transaction_mode"):
        env["DQ_TEST_SQLITE_DEFAULTS"] = "1"  # the sqlite_defaults_db fixture's database
    options = dict(options or {})
    # One worker process unless the test says otherwise: dq's default is one per CPU, and
    # the tests count and kill workers (--processes on the command line still wins).
    options["workers"] = [{"processes": 1, **group} for group in options.get("workers", [{}])]
    env["DQ_TEST_OPTIONS"] = json.dumps(options)
    env["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    env["PYTHONPATH"] = str(ROOT)
    return env


class DQWork:
    """A real ``manage.py dq_work`` in a subprocess, always reaped at the end of the test."""

    def __init__(self, args, options, tmp_path, *, new_session=False, env=None):
        self.log_path = tmp_path / f"dq_work-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        # In a session of its own, the supervisor and its children form one process group
        # that can be killed at once, as if their host vanished.
        self.new_session = new_session
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "django", "dq_work", *args],
            cwd=ROOT,
            env={**subprocess_env(options), **(env or {})},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=new_session,
        )

    @property
    def pid(self):
        return self.proc.pid

    def output(self):
        return self.log_path.read_text(errors="replace")

    def send(self, signum):
        self.proc.send_signal(signum)

    def wait(self, timeout=60):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"dq_work did not exit within {timeout}s:\n{self.output()}")

    def stop(self, signum=signal.SIGTERM, timeout=60):
        if self.proc.poll() is None:
            self.send(signum)
        return self.wait(timeout)

    def kill(self):
        """Kill the supervisor and every process it forked, whatever state they are in;
        with ``new_session``, all of them at once with one signal to the process group."""
        if self.new_session:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        elif self.proc.poll() is None:
            children = _children_of(self.proc.pid)
            self.proc.kill()
            self.proc.wait()
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.log.close()


def _children_of(pid):
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [int(child) for child in path.read_text().split()]
    except (FileNotFoundError, ValueError):
        return []


def pid_alive(pid):
    """Whether ``pid`` is a running process (a zombie counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):  # ESRCH: reaped between open and read
        return False
    return "\nState:\tZ" not in status


@pytest.fixture
def dq_work(tmp_path):
    """Start ``dq_work`` with command-line ``args`` and backend ``options``; reaped afterwards."""
    started = []

    def start(*args, options=None, new_session=False, env=None):
        work = DQWork(args, options, tmp_path, new_session=new_session, env=env)
        started.append(work)
        return work

    yield start
    for work in started:
        work.kill()


@pytest.fixture
def release(tmp_path):
    """A file path that blocking test tasks wait for; ``release.set()`` creates it."""

    class Release:
        path = str(tmp_path / "release")

        def set(self):
            Path(self.path).touch()

    return Release()


class InProcessWorker:
    """A registered worker whose jobs run synchronously in the test's own thread."""

    def __init__(self, queues=("*",), *, backend="default"):
        from dq import conf
        from dq.models import Process
        from dq.processes.worker import Worker

        config = conf.load(backend)
        self.worker = Worker(
            config,
            conf.WorkerConfig(queues=tuple(queues)),
            supervisor_pid=os.getppid(),
            supervisor_id=None,
        )
        self.worker.process = Process.register(Process.Kind.WORKER, using=config.database)
        self.process = self.worker.process
        # No main loop: a run that waits for its start or end writes it in its own thread.
        self.worker.writes.write_now = functools.partial(self.worker.flush, claim=False)

    def claim(self, limit=100, *, started=True):
        """Claim jobs as the worker's main loop does and, with ``started``, record their
        starts as though threads had taken them (``perform`` runs them)."""
        from django.utils import timezone

        from dq.models import ClaimedExecution, ReadyExecution

        jobs = ReadyExecution.claim(
            self.worker.queues,
            limit,
            self.process,
            backend=self.worker.config.backend,
            using=self.worker.database,
        )
        if started and jobs:
            for job in jobs:
                job.record_start(timezone.now())
                job.status = job.Status.RUNNING
            ClaimedExecution.flush(
                starts=jobs,
                ends=[],
                claim=None,
                worker_id=self.process.name,
                using=self.worker.database,
            )
        return jobs

    def work_off(self, limit=1000):
        """Claim and run ready jobs until none is left; returns the jobs run, in order."""
        done = []
        while len(done) < limit:
            jobs = self.claim(limit=1)
            if not jobs:
                return done
            done += self.perform(jobs[0])
        return done

    def perform(self, job):
        """Run a claimed job as a pool thread does, then write its end as the worker's
        main loop does (claiming nothing). Returns the jobs run."""
        self.worker.perform(job, 0)
        self.worker.flush(claim=False)
        return [job]


@pytest.fixture
def worker(db):
    """An in-process worker over every queue; ``in_process_worker(queues)`` for others."""
    return InProcessWorker()


# The database servers of the tests' own, per vendor, which a test may stop and restart:
# (its module, the server, the variable that makes it required where CI is not set).
RESTARTABLE_SERVERS = {
    "postgresql": ("pgcluster", "PostgreSQL", "DQ_REQUIRE_POSTGRES"),
    "mysql": ("mariadb_server", "MariaDB", "DQ_REQUIRE_MYSQL"),
}


def restartable_server():
    """The module managing the restartable server of the suite's database vendor
    (tests/pgcluster.py on PostgreSQL, tests/mariadb_server.py on MySQL and MariaDB), made
    sure to run; the test is skipped where there is none, and where it cannot be started,
    unless CI (or DQ_REQUIRE_POSTGRES=1, DQ_REQUIRE_MYSQL=1) is set: then it fails."""
    if connection.vendor not in RESTARTABLE_SERVERS:
        pytest.skip(f"restarting the database server is not a {connection.vendor} test")
    module, name, required = RESTARTABLE_SERVERS[connection.vendor]
    server = importlib.import_module(f"{__package__}.{module}")
    try:
        server.ensure()
    except server.Unavailable as error:
        message = f"the tests' own {name} server (tests/{module}.py) is unavailable: {error}"
        if os.environ.get("CI") or os.environ.get(required) == "1":
            pytest.fail(f"{message} (CI or {required}=1 is set, so this is a failure)")
        pytest.skip(message)
    return server


@pytest.fixture(scope="session")
def restartable_database(django_db_setup, django_db_blocker):
    """The name of a database with dq's and the tests' tables on the tests' own server
    (restartable_server()), where a test may stop and restart the server."""
    server = restartable_server()
    # One per test database, so that sessions on different databases do not share it.
    name = f"dq_restartable_{connection.settings_dict['NAME']}"
    server.create_database(name)
    env = subprocess_env()
    env["DATABASE_URL"] = server.url(name)
    migrate = subprocess.run(
        [sys.executable, "-m", "django", "migrate", "--run-syncdb", "--noinput", "-v", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    yield name
    with contextlib.suppress(Exception):  # the server may have been stopped by a test
        server.drop_database(name)


class RestartableServer:
    """Stops and restarts the server the test's database lives on; the test's own
    connection is closed after each, so its next query opens a new one."""

    def __init__(self, server, name):
        self.server = server
        self.name = name  # "PostgreSQL", "MariaDB"

    def restart(self):
        self.server.restart()
        connection.close()

    def stop(self):
        self.server.stop()
        connection.close()

    def start(self):
        self.server.start()
        connection.close()


@pytest.fixture
def restartable_db(transactional_db, restartable_database):
    """Point the test's default database, and so every dq_work it starts, at
    ``restartable_database``, emptied first; yields a RestartableServer."""
    server = restartable_server()  # a test before this one may have left it stopped
    wrapper = connections[DEFAULT_DB_ALIAS]
    saved = wrapper.settings_dict
    wrapper.close()
    wrapper.settings_dict = {
        **saved,
        "NAME": restartable_database,
        "HOST": server.HOST,
        "PORT": server.PORT,
        "USER": server.USER,
        "PASSWORD": "",
    }
    try:
        call_command("flush", interactive=False, inhibit_post_migrate=True, verbosity=0)
        yield RestartableServer(server, RESTARTABLE_SERVERS[connection.vendor][1])
    finally:
        with contextlib.suppress(Exception):
            server.ensure()
        wrapper.close()
        wrapper.settings_dict = saved


@pytest.fixture
def sqlite_defaults_db(transactional_db, tmp_path):
    """Point the test's default database, and so every dq_work it starts, at a new SQLite
    database with Django's default settings: deferred transactions, a 5 s lock timeout,
    a rollback journal (no WAL)."""
    if connection.vendor != "sqlite":
        pytest.skip("Django's default SQLite settings")
    path = tmp_path / "defaults.sqlite3"
    env = subprocess_env()
    env.update(DATABASE_URL=f"sqlite:///{path}", DQ_TEST_SQLITE_DEFAULTS="1")
    migrate = subprocess.run(
        [sys.executable, "-m", "django", "migrate", "--run-syncdb", "--noinput", "-v", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    wrapper = connections[DEFAULT_DB_ALIAS]
    saved = wrapper.settings_dict
    wrapper.close()
    wrapper.settings_dict = {**saved, "NAME": str(path), "OPTIONS": {}}
    try:
        yield path
    finally:
        wrapper.close()
        wrapper.settings_dict = saved


@pytest.fixture
def generic_database(db, monkeypatch):
    """Every alias worked through dq.db.base.Database, the class for a database without
    one of its own, whatever the database is."""
    from dq import db as dq_db

    monkeypatch.setattr(dq_db, "BY_VENDOR", {})
