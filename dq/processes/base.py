"""What every dq process does, the supervisor and the roles it forks alike: register a
``Process`` row, stop on a signal (the handler only records it and wakes the main loop),
wait on a self-pipe, wait out database errors, deregister. ``Role`` adds what a forked
process does: heartbeat from a thread, loop on ``poll()``, notice its supervisor is gone."""

import contextlib
import enum
import errno
import functools
import logging
import os
import select
import signal
import threading
import types
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from django.db import DatabaseError, connections

from ..conf import Configuration
from ..exceptions import ProcessExitError
from ..models import Process

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

logger = logging.getLogger(__name__)

T = TypeVar("T")


class StopMode(enum.StrEnum):
    """How a process was asked to stop: TERM and INT graceful (running jobs may finish
    within the shutdown timeout), QUIT immediate."""

    GRACEFUL = "graceful"
    IMMEDIATE = "immediate"


STOP_SIGNALS = {
    signal.SIGTERM: StopMode.GRACEFUL,
    signal.SIGINT: StopMode.GRACEFUL,
    signal.SIGQUIT: StopMode.IMMEDIATE,
}
HANDLED_SIGNALS = {*STOP_SIGNALS, signal.SIGCHLD}
# How often a process tries to deregister when the database fails it (a lock wait timing
# out, an outage): if it cannot, its supervisor or the pruning recovers its jobs.
DEREGISTER_ATTEMPTS = 5


def database_retry_delay(failures: int) -> float:
    """Seconds to wait after ``failures`` database errors in a row: 0.5, 1, 2, ... up to 10."""
    return min(10.0, 0.5 * 2.0 ** min(failures - 1, 30))  # uncapped, 2.0 ** 1024 overflows


class Wakeup:
    """A self-pipe: signal handlers and other threads write to it, the main loop waits on it."""

    def __init__(self) -> None:
        self.reader, self.writer = os.pipe()
        os.set_blocking(self.reader, False)
        os.set_blocking(self.writer, False)

    def set(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a full pipe wakes the reader anyway
            os.write(self.writer, b"\0")

    def wait(self, timeout: float, *others: "FileDescriptorLike") -> list["FileDescriptorLike"]:
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

    def drain(self) -> None:
        try:
            while os.read(self.reader, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self.reader)
        os.close(self.writer)


class Runnable:
    """A dq process: its Process row, how it stops, how it waits out the database."""

    kind: ClassVar[str]

    def __init__(self, config: Configuration) -> None:
        self.config = config
        self.database = config.database
        self.process: Process | None = None
        self.stopping: StopMode | None = None
        self.wakeup = Wakeup()
        # Database errors this process has met: when it grows, connections kept open by
        # other threads may have been cut too (a database restart cuts them all).
        self.database_errors = 0

    @property
    def name(self) -> str:
        assert self.process is not None, "the process has not registered"
        return self.process.name

    def metadata(self) -> dict[str, Any]:
        """What the Process row shows of this process's settings."""
        return {}

    def supervisor(self) -> Process | None:
        """The Process row of the supervisor that forked this process, if any."""
        return None

    def stop(self, how: StopMode) -> None:
        """Ask the main loop to stop (from a signal handler, or any thread): an immediate
        stop is never turned back into a graceful one."""
        if self.stopping is not StopMode.IMMEDIATE:
            self.stopping = how
        self.wakeup.set()

    def install_signal_handlers(self) -> None:
        """TERM, INT and QUIT stop the process; each wakes the main loop."""
        signal.set_wakeup_fd(self.wakeup.writer, warn_on_full_buffer=False)
        for signum, how in STOP_SIGNALS.items():
            signal.signal(signum, functools.partial(self._stop_on_signal, how))
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)  # blocked across a fork

    def _stop_on_signal(self, how: StopMode, signum: int, frame: types.FrameType | None) -> None:
        self.stop(how)

    def retry(self, call: Callable[[], T], doing: str, *, give_up: Callable[[int], bool]) -> T:
        """``call()``, tried again after each database error (a lock wait that timed out,
        a lost connection) with a growing delay, until it returns or
        ``give_up(failures)`` says to raise the error. The waits end early on a signal."""
        failures = 0
        while True:
            try:
                return call()
            except DatabaseError:
                failures += 1
                self.database_errors += 1
                if give_up(failures):
                    raise
                delay = database_retry_delay(failures)
                logger.exception("dq %s: cannot %s; retrying in %.1fs", self.kind, doing, delay)
                connections[self.database].close()
                self.wakeup.wait(delay)

    def register(self) -> bool:
        """Register this process, waiting out database errors; False if told to stop first."""
        try:
            self.process = self.retry(
                functools.partial(
                    Process.register,
                    self.kind,
                    supervisor=self.supervisor(),
                    metadata=self.metadata(),
                    using=self.database,
                ),
                f"register a {self.kind}",
                give_up=lambda failures: self.stopping is not None,
            )
        except DatabaseError:
            return False
        logger.info("%s started (pid %s)", self.name, os.getpid())
        return True

    def deregister(
        self, exception_class: type[BaseException], message: str, *, running: Collection[int] = ()
    ) -> None:
        """End the claims this process still holds (interrupting those in ``running`` or
        started) and delete its row, trying a few times if the database fails it."""
        assert self.process is not None
        self.retry(
            functools.partial(
                self.process.deregister,
                exception_class,
                message,
                running=running,
                using=self.database,
            ),
            f"deregister {self.name}",
            give_up=lambda failures: failures >= DEREGISTER_ATTEMPTS,
        )
        logger.info("%s stopped (%s)", self.name, self.stopping)


class Role(Runnable):
    """A process forked by the supervisor. Subclasses set ``kind`` and write ``poll()``,
    which does one round of work and returns the seconds until the next."""

    def __init__(self, config: Configuration, *, supervisor_pid: int, supervisor_id: int) -> None:
        super().__init__(config)
        self.supervisor_pid = supervisor_pid
        self.supervisor_id = supervisor_id
        self._heartbeat_stopped = threading.Event()

    def supervisor(self) -> Process:
        return Process(pk=self.supervisor_id)

    def run(self) -> int:
        """Run until told to stop; return the process's exit status."""
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the supervisor's, inherited
        self.install_signal_handlers()
        if not self.register():
            return 0
        heartbeat = threading.Thread(target=self._heartbeat_loop, name="dq-heartbeat", daemon=True)
        heartbeat.start()
        try:
            self.retry(
                self.start,
                f"start {self.name}",
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
            self.deregister(exception_class, message)
        return 0

    def start(self) -> None:
        """Set up what poll() needs, after registration."""

    def poll(self) -> float:
        raise NotImplementedError

    def wait(self, timeout: float) -> None:
        self.wakeup.wait(timeout)

    def shut_down(self) -> tuple[type[BaseException], str]:
        """Finish up after the loop; returns how to interrupt jobs still held, as
        (exception class, message) for Process.deregister."""
        return ProcessExitError, f"{self.name} stopped ({self.stopping})"

    def check_supervisor(self) -> None:
        if self.stopping is None and os.getppid() != self.supervisor_pid:
            logger.warning("%s: supervisor %s is gone; stopping", self.name, self.supervisor_pid)
            self.stop(StopMode.GRACEFUL)

    def _heartbeat_loop(self) -> None:
        assert self.process is not None
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
                    self.stop(StopMode.GRACEFUL)
                self.check_supervisor()
        finally:
            connections.close_all()
