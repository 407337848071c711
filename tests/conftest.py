"""Fixtures shared by the suite: waiting on conditions, and running the real dq_work."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection

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
        env["DATABASE_URL"] = (
            f"postgres://{settings['USER'] or ''}@{settings['HOST'] or ''}:"
            f"{settings['PORT'] or 5432}/{settings['NAME']}"
        )
    env["DQ_TEST_OPTIONS"] = json.dumps(options or {})
    env["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    env["PYTHONPATH"] = str(ROOT)
    return env


class DQWork:
    """A real ``manage.py dq_work`` in a subprocess, always reaped at the end of the test."""

    def __init__(self, args, options, tmp_path):
        self.log_path = tmp_path / f"dq_work-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "django", "dq_work", *args],
            cwd=ROOT,
            env=subprocess_env(options),
            stdout=self.log,
            stderr=subprocess.STDOUT,
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
        """Kill the supervisor and every process it forked, whatever state they are in."""
        if self.proc.poll() is None:
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

    def start(*args, options=None):
        work = DQWork(args, options, tmp_path)
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

    def __init__(self, queues=("*",)):
        from dq import conf
        from dq.models import Process
        from dq.processes.worker import Worker

        config = conf.load("default")
        self.worker = Worker(
            config,
            conf.WorkerConfig(queues=tuple(queues)),
            supervisor_pid=os.getppid(),
            supervisor_id=None,
        )
        self.worker.process = Process.register(Process.Kind.WORKER, using=config.database)
        self.process = self.worker.process

    def claim(self, limit=100):
        from dq.models import ReadyExecution

        return ReadyExecution.claim(
            self.worker.queues, limit, self.process, using=self.worker.database
        )

    def work_off(self, limit=1000):
        """Claim and run ready jobs until none is left; returns the jobs run, in order."""
        done = []
        while len(done) < limit:
            jobs = self.claim(limit=1)
            if not jobs:
                return done
            self.worker.perform(jobs[0])
            done.append(jobs[0])
        return done


@pytest.fixture
def worker(db):
    """An in-process worker over every queue; ``in_process_worker(queues)`` for others."""
    return InProcessWorker()
