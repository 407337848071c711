"""What every dq process does: register, heartbeat, loop on poll(), stop on a signal, deregister."""

import contextlib
import errno
import functools
import logging
import os
import select
import signal
import threading

from django.db import DatabaseError, connections

from ..exceptions import ProcessExitError
from ..models import Process

logger = logging.getLogger("dq")

GRACEFUL_SIGNALS = (signal.SIGTERM, signal.SIGINT)
IMMEDIATE_SIGNALS = (signal.SIGQUIT,)
HANDLED_SIGNALS = {*GRACEFUL_SIGNALS, *IMMEDIATE_SIGNALS, signal.SIGCHLD}


# How often a process tries to deregister when the database fails it (a lock wait timing
# out, an outage): if it cannot, its supervisor or the pruning recovers its jobs.
DEREGISTER_ATTEMPTS = 5


def database_retry_delay(failures):
    """Seconds to wait after ``failures`` database errors in a row: 0.5, 1, 2, ... up to 10."""
    return min(10.0, 0.5 * 2 ** (failures - 1))


def retry_database_errors(call, alias, doing, *, wait, give_up):
    """``call()``, tried again after each database error (a lock wait that timed out, a
    lost connection) with a growing delay, until it returns or ``give_up(failures)``
    says to raise the error. ``wait(seconds)`` waits between tries."""
    failures = 0
    while True:
        try:
            return call()
        except DatabaseError:
            failures += 1
            if give_up(failures):
                raise
            delay = database_retry_delay(failures)
            logger.exception("dq: cannot %s; retrying in %.1fs", doing, delay)
            connections[alias].close()
            wait(delay)


class Wakeup:
    """A self-pipe: signal handlers and other threads write to it, the main loop waits on it."""

    def __init__(self):
        self.reader, self.writer = os.pipe()
        os.set_blocking(self.reader, False)
        os.set_blocking(self.writer, False)

    def set(self):
        with contextlib.suppress(BlockingIOError):  # a full pipe wakes the reader anyway
            os.write(self.writer, b"\0")

    def wait(self, timeout, *others):
        """Block until woken, one of ``others`` is readable, or ``timeout`` seconds pass.
        Returns the readable ``others``."""
        try:
            readable, _, _ = select.select([self.reader, *others], [], [], max(timeout, 0))
        except OSError as error:  # pragma: no cover - select retries EINTR itself
            if error.errno != errno.EINTR:
                raise
            return []
        if self.reader in readable:
            self.drain()
        return [item for item in readable if item is not self.reader]

    def drain(self):
        try:
            while os.read(self.reader, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self):
        os.close(self.reader)
        os.close(self.writer)


class Role:
    """A process forked by the supervisor. Subclasses set ``kind`` and write ``poll()``,
    which does one round of work and returns the seconds until the next."""

    kind = None

    def __init__(self, config, *, supervisor_pid, supervisor_id):
        self.config = config
        self.database = config.database
        self.supervisor_pid = supervisor_pid
        self.supervisor_id = supervisor_id
        self.process = None
        self.stopping = None  # None, "graceful" or "immediate"
        self.wakeup = Wakeup()
        self._heartbeat_stopped = threading.Event()
        # Database errors this process has met: when it grows, connections kept open by
        # other threads may have been cut too (a database restart cuts them all).
        self.database_errors = 0

    @property
    def name(self):
        return self.process.name

    def metadata(self):
        return {}

    def run(self):
        """Run until told to stop; return the process's exit status."""
        self.install_signal_handlers()
        self.process = self.register()
        if self.process is None:
            return 0
        logger.info("%s started (pid %s)", self.name, os.getpid())
        heartbeat = threading.Thread(target=self._heartbeat_loop, name="dq-heartbeat", daemon=True)
        heartbeat.start()
        try:
            retry_database_errors(
                self.start,
                self.database,
                f"start {self.name}",
                wait=self.wakeup.wait,
                give_up=lambda failures: self.stopping is not None,
            )
            failures = 0
            while self.stopping is None:
                try:
                    delay, failures = self.poll(), 0
                except DatabaseError:
                    failures += 1
                    self.database_errors += 1
                    delay = database_retry_delay(failures)
                    logger.exception("%s: database error; retrying in %.1fs", self.name, delay)
                    connections[self.database].close()
                if self.stopping is None:
                    self.wait(delay)
                self.check_supervisor()
        finally:
            exception_class, message = self.shut_down()
            self._heartbeat_stopped.set()
            heartbeat.join(timeout=self.config.heartbeat_interval)
            retry_database_errors(
                functools.partial(
                    self.process.deregister, exception_class, message, using=self.database
                ),
                self.database,
                f"deregister {self.name}",
                wait=self.wakeup.wait,
                give_up=lambda failures: failures >= DEREGISTER_ATTEMPTS,
            )
            logger.info("%s stopped (%s)", self.name, self.stopping)
        return 0

    def register(self):
        """Register this process, waiting out database errors; None if told to stop first."""
        try:
            return retry_database_errors(
                functools.partial(
                    Process.register,
                    self.kind,
                    supervisor=Process(pk=self.supervisor_id),
                    metadata=self.metadata(),
                    using=self.database,
                ),
                self.database,
                f"register a {self.kind}",
                wait=self.wakeup.wait,
                give_up=lambda failures: self.stopping is not None,
            )
        except DatabaseError:
            return None  # told to stop meanwhile

    def start(self):
        """Set up what poll() needs, after registration."""

    def poll(self):
        raise NotImplementedError

    def wait(self, timeout):
        self.wakeup.wait(timeout)

    def shut_down(self):
        """Finish up after the loop; returns how to interrupt jobs still held, as
        (exception class, message) for Process.deregister."""
        return ProcessExitError, f"{self.name} stopped ({self.stopping})"

    def stop(self, how):
        if self.stopping != "immediate":
            self.stopping = how
        self.wakeup.set()

    def check_supervisor(self):
        if self.stopping is None and os.getppid() != self.supervisor_pid:
            logger.warning("%s: supervisor %s is gone; stopping", self.name, self.supervisor_pid)
            self.stop("graceful")

    def install_signal_handlers(self):
        signal.set_wakeup_fd(self.wakeup.writer, warn_on_full_buffer=False)
        for signum in GRACEFUL_SIGNALS:
            signal.signal(signum, lambda *_: self.stop("graceful"))
        for signum in IMMEDIATE_SIGNALS:
            signal.signal(signum, lambda *_: self.stop("immediate"))
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)  # blocked across the fork

    def _heartbeat_loop(self):
        try:
            while not self._heartbeat_stopped.wait(self.config.heartbeat_interval):
                try:
                    alive = self.process.heartbeat(using=self.database)
                except Exception:
                    self.database_errors += 1
                    logger.exception("%s: heartbeat failed", self.name)
                    connections[self.database].close()
                    continue
                if not alive:
                    logger.warning("%s was pruned by another process; stopping", self.name)
                    self.stop("graceful")
                self.check_supervisor()
        finally:
            connections.close_all()
