"""The supervisor: forks the workers and the dispatcher, replaces the ones that die,
heartbeats, prunes dead processes of any host, and stops everything on a signal.

It stays single-threaded, and closes its database connections before every fork.
"""

import contextlib
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError, connections

from .. import tracing
from ..conf import Configuration
from ..exceptions import ProcessExitError
from ..models import ClaimedExecution, Process
from .base import HANDLED_SIGNALS, Role, Runnable, StopMode, database_retry_delay
from .board import RunBoard, board_slots
from .dispatcher import Dispatcher
from .scheduler import Scheduler
from .worker import Worker

if TYPE_CHECKING:
    from .metrics import Metrics, MetricsServer

logger = logging.getLogger(__name__)

# After children were told to stop, how long past their shutdown timeout to wait before SIGKILL.
KILL_GRACE = 5.0


@dataclass
class Child:
    description: str
    build: Callable[..., Role]  # (supervisor_pid=, supervisor_id=, [board=]) -> Role
    board_slots: int = 0  # a worker's: it gets a board of that many slots


def describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


class Supervisor(Runnable):
    kind = Process.Kind.SUPERVISOR

    def __init__(self, config: Configuration) -> None:
        super().__init__(config)
        self.children: dict[int, Child] = {}  # pid -> Child
        # No pruning before this time.monotonic(); None: once the database answers again.
        self.prune_not_before: float | None = 0.0
        # Dead children whose jobs could not all be recovered yet (pid -> message, and the
        # claims the child was running): it leaves its own children out of pruning, so it
        # must retry them itself, and a claim the child was running stays a run until ended.
        self.unrecovered: dict[int, tuple[str, set[int]]] = {}
        self.boards: dict[int, RunBoard] = {}  # a worker's pid -> what it runs
        # With a metrics port: what this tree's processes count, and where it is served.
        self.metrics: Metrics | None = None
        self.metrics_server: MetricsServer | None = None

    def metadata(self) -> dict[str, Any]:
        return {"children": [child.description for child in self.plan()]}

    def plan(self) -> list[Child]:
        """The children to run, one entry per process."""
        children = []
        for worker_config in self.config.workers:
            for _ in range(worker_config.processes):
                children.append(
                    Child(
                        f"worker ({worker_config.threads} threads, "
                        f"queues {','.join(worker_config.queues)})",
                        partial(Worker, self.config, worker_config, metrics=self.metrics),
                        board_slots=board_slots(worker_config.threads, worker_config.prefetch),
                    )
                )
        for _ in range(self.config.dispatcher.processes):
            children.append(Child("dispatcher", partial(Dispatcher, self.config)))
        if self.config.recurring and self.config.scheduler:
            children.append(Child("scheduler", partial(Scheduler, self.config)))
        return children

    def install_signal_handlers(self) -> None:
        super().install_signal_handlers()
        # A child's exit wakes the loop (through the wakeup fd), which reaps it.
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)

    def run(self) -> int:
        try:
            self.start_metrics()
        except OSError as error:
            logger.error(
                "dq supervisor: cannot serve metrics on %s port %s: %s",
                self.config.metrics_address,
                self.config.metrics_port,
                error,
            )
            self.stop_metrics()
            return 1
        try:
            return self.supervise()
        finally:
            self.stop_metrics()

    def start_metrics(self) -> None:
        """With a metrics port: make the directory every process of this tree writes its
        counts to (before the first fork) and listen on the port."""
        if self.config.metrics_port is None:
            return
        directory = tempfile.mkdtemp(prefix="dq-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        # Imported now, not before: a project without a metrics port needs it neither
        # installed nor loaded.
        from .metrics import Metrics, MetricsServer, use_multiprocess_values

        # prometheus_client chooses how values are kept when it is first imported, which
        # may have been before now (the project's URLs, another library): choose again.
        use_multiprocess_values()

        self.metrics = Metrics(directory)
        self.metrics_server = MetricsServer(self.config, self.metrics)
        logger.info("dq supervisor: serving metrics at %s", self.metrics_server.address)

    def stop_metrics(self) -> None:
        """Stop serving metrics and remove their directory."""
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
        if self.metrics is not None:
            self.metrics.close()
            shutil.rmtree(self.metrics.directory, ignore_errors=True)
            self.metrics = None

    def supervise(self) -> int:
        self.install_signal_handlers()
        if not self.register():
            return 0  # told to stop before it could register
        try:
            self.maintain()
        except DatabaseError:  # the loop maintains again
            logger.exception("%s: database error; retrying", self.name)
            connections[self.database].close()
        for child in self.plan():
            self.fork(child)
        next_heartbeat = next_maintenance = time.monotonic()
        try:
            while self.stopping is None:
                self.wait(min(next_heartbeat, next_maintenance) - time.monotonic())
                self.reap(replace=self.stopping is None)
                now = time.monotonic()
                try:
                    if self.stopping is None and now >= next_heartbeat:
                        self.heartbeat()
                        next_heartbeat = now + self.config.heartbeat_interval
                    if self.stopping is None and now >= next_maintenance:
                        self.maintain()
                        next_maintenance = now + self.config.maintenance_interval
                except DatabaseError:
                    logger.exception("%s: database error; retrying", self.name)
                    connections[self.database].close()
                    next_heartbeat = next_maintenance = now + database_retry_delay(1)
                    self.prune_not_before = None
        finally:
            self.stop_children()
            self.deregister(ProcessExitError, "supervisor stopped")
        return 0

    def wait(self, timeout: float) -> None:
        """Wait for a signal (a child's exit is one) or ``timeout``, answering the
        requests for metrics that come meanwhile."""
        if self.metrics_server is None:
            self.wakeup.wait(timeout)
        elif self.wakeup.wait(timeout, self.metrics_server):
            self.metrics_server.serve()  # then back to the loop: a signal may have come too

    def fork(self, child: Child) -> None:
        connections.close_all()  # a forked child must never share the parent's sockets
        # Signals wait until the child has its own handlers (it unblocks them then).
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        board = RunBoard(child.board_slots) if child.board_slots else None
        pid = os.fork()
        if pid == 0:
            os._exit(self._run_child(child, board))
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
        self.children[pid] = child
        if board is not None:
            self.boards[pid] = board
        logger.info("%s forked %s as pid %s", self.name, child.description, pid)

    def _run_child(self, child: Child, board: RunBoard | None) -> int:
        status = 1
        try:
            signal.set_wakeup_fd(-1)
            self.wakeup.close()
            if self.metrics_server is not None:
                self.metrics_server.close()  # the supervisor's socket, not this child's
            assert self.process is not None
            extra = {"board": board} if board is not None else {}
            role = child.build(supervisor_pid=os.getppid(), supervisor_id=self.process.pk, **extra)
            status = role.run()
        except BaseException:
            logger.exception("dq %s (pid %s) crashed", child.description, os.getpid())
        finally:
            tracing.flush()  # os._exit follows: nothing else would export its spans
            logging.shutdown()
        return status

    def reap(self, *, replace: bool) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is None:
                continue
            how = describe_exit(status)
            log = logger.info if status == 0 else logger.error
            log("%s: %s (pid %s) %s", self.name, child.description, pid, how)
            if self.metrics is not None:
                self.metrics.process_dead(pid)
            self.recover(pid, f"its process (pid {pid}) {how}", self.running_of(pid))
            if replace:
                self.fork(child)

    def running_of(self, pid: int) -> set[int]:
        """The claims dead worker ``pid`` was running when it died (none for other roles)."""
        board = self.boards.pop(pid, None)
        if board is None:
            return set()
        running = board.claims()
        board.close()
        return running

    def recover(self, pid: int, message: str, running: set[int]) -> None:
        """Deregister what a dead child left behind, interrupting the jobs it was running
        and giving back those it held for later. If the database is unreachable now, the
        next maintenance tries again."""
        self.unrecovered[pid] = (message, running)
        try:
            dead = Process.objects.using(self.database).filter(supervisor=self.process, pid=pid)
            for process in dead:
                process.deregister(
                    ProcessExitError,
                    f"{process.name}: {message}",
                    running=running,
                    using=self.database,
                )
            # Claims still locked were skipped (the database may not have rolled back the
            # dead child's exactly_once transaction yet); they are orphans now, and those it
            # was running are interrupted as runs however late they are found.
            Process.recover_orphaned_claims(running=running, using=self.database)
            left = ClaimedExecution.objects.using(self.database).filter(pk__in=running).exists()
        except DatabaseError:
            logger.exception("%s: cannot recover pid %s's jobs yet", self.name, pid)
            connections[self.database].close()
        else:
            if not left:
                del self.unrecovered[pid]

    def heartbeat(self) -> None:
        assert self.process is not None
        if not self.process.heartbeat(using=self.database):
            logger.warning("%s was pruned by another process; stopping", self.name)
            self.stop(StopMode.GRACEFUL)

    def maintain(self) -> None:
        for pid, (message, running) in list(self.unrecovered.items()):
            self.recover(pid, message, running)
        if self.prune_not_before is None:
            # Nobody could heartbeat while the database was unreachable: give every process
            # the alive threshold from now on before taking its silence for death.
            self.prune_not_before = time.monotonic() + self.config.alive_threshold
        pruned = []
        if time.monotonic() >= self.prune_not_before:
            # Its own children it reaps; pruning is for processes nobody reaps.
            pruned = Process.prune(
                self.config.alive_threshold, supervisor=self.process, using=self.database
            )
        for process in pruned:
            logger.warning("%s pruned %s: no heartbeat", self.name, process)
        recovered = Process.recover_orphaned_claims(
            running={claim for _, running in self.unrecovered.values() for claim in running},
            using=self.database,
        )
        if recovered:
            logger.warning("%s recovered %s orphaned claim(s)", self.name, recovered)

    def stop_children(self) -> None:
        """Pass the stop on to every child, wait for them, and kill what outstays its welcome."""
        how = self.stopping or StopMode.GRACEFUL
        signum = signal.SIGQUIT if how is StopMode.IMMEDIATE else signal.SIGTERM
        for pid in self.children:
            self._signal(pid, signum)
        deadline = time.monotonic() + (
            self.config.shutdown_timeout + KILL_GRACE if how is StopMode.GRACEFUL else KILL_GRACE
        )
        while self.children and time.monotonic() < deadline:
            self.wakeup.wait(min(0.5, deadline - time.monotonic()))
            if how is StopMode.GRACEFUL and self.stopping is StopMode.IMMEDIATE:
                how = StopMode.IMMEDIATE
                deadline = min(deadline, time.monotonic() + KILL_GRACE)
                for pid in self.children:
                    self._signal(pid, signal.SIGQUIT)
            self.reap(replace=False)
        for pid in list(self.children):
            logger.error("%s: pid %s did not stop; killing it", self.name, pid)
            self._signal(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            self.recover(pid, "its process was killed after not stopping", self.running_of(pid))
            del self.children[pid]

    def _signal(self, pid: int, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
