import logging
import time

from django.db import connections
from django.tasks import TaskContext, task_backends
from django.tasks.signals import task_finished, task_started

from .. import db as vendor
from ..conf import ALL_QUEUES
from ..exceptions import ShutdownTimeoutError
from ..models import ClaimedExecution, Process, ReadyExecution
from ..models.job import describe_error, jsonable, load_task
from .base import Role
from .pool import Pool

logger = logging.getLogger("dq")


def serves(selectors, queue_name):
    """Whether a worker with these queue selectors takes jobs from ``queue_name``."""
    return any(
        selector in (ALL_QUEUES, queue_name)
        or (selector.endswith("*") and queue_name.startswith(selector[:-1]))
        for selector in selectors
    )


class Worker(Role):
    """Claims ready jobs, at most as many as it has idle threads, and runs them."""

    kind = Process.Kind.WORKER

    def __init__(self, config, worker_config, **kwargs):
        super().__init__(config, **kwargs)
        self.queues = worker_config.queues
        self.threads = worker_config.threads
        self.polling_interval = (
            worker_config.polling_interval
            or vendor.for_alias(self.database).DEFAULT_POLLING_INTERVAL
        )
        self.pool = None
        self.listener = None

    def metadata(self):
        return {"queues": list(self.queues), "threads": self.threads}

    def start(self):
        self.pool = Pool(self.threads, on_idle=self.wakeup.set)
        self.listen()

    def listen(self):
        listener_class = vendor.for_alias(self.database).Listener
        if listener_class is None:
            return
        try:
            self.listener = listener_class(self.database)
        except Exception:
            logger.exception(
                "%s: cannot LISTEN; polling every %ss", self.name, self.polling_interval
            )

    def poll(self):
        idle = self.pool.idle
        if idle == 0:
            return self.polling_interval  # a finishing job wakes us
        jobs = ReadyExecution.claim(self.queues, idle, self.process, using=self.database)
        for job in jobs:
            self.pool.submit(self.perform, job)
        return 0 if len(jobs) == idle else self.polling_interval

    def wait(self, timeout):
        """Wait for a free thread, a signal, or a notification about a queue this worker serves."""
        if self.listener is None:
            return super().wait(timeout)
        deadline = time.monotonic() + timeout
        while self.wakeup.wait(deadline - time.monotonic(), self.listener):
            try:
                queues = self.listener.drain()
            except Exception:
                logger.exception("%s: lost the LISTEN connection; polling", self.name)
                self.listener = None
                return
            if "" in queues or any(serves(self.queues, queue) for queue in queues):
                return

    def perform(self, job):
        """Run one claimed job in a pool thread and record how it ended."""
        try:
            self._perform(job)
        except Exception:
            logger.exception("%s: could not record the end of job %s", self.name, job.pk)
        finally:
            connection = connections[self.database]
            if connection.errors_occurred and not connection.is_usable():
                connection.close()

    def _perform(self, job):
        task = backend = None
        started = time.monotonic()
        try:
            # Anything that goes wrong from here on is the job's failure, never the worker's.
            task = load_task(job.task_path)
            backend = task_backends[job.backend]
            result = backend.to_result(job, task, running_worker_id=self.name)
            task_started.send(type(backend), task_result=result)
            if task.takes_context:
                value = task.call(TaskContext(task_result=result), *job.args, **job.kwargs)
            else:
                value = task.call(*job.args, **job.kwargs)
            value = jsonable(value, f"The return value of {job.task_path}")
        except BaseException as error:  # a task's SystemExit must not stop the worker
            ended = ClaimedExecution.fail(
                job.claim_id,
                describe_error(error),
                worker_id=self.name,
                using=self.database,
            )
            if ended is not None and ended.status != ended.Status.FAILED:
                logger.warning(
                    "%s: job %s (%s) attempt %s raised %r; retrying at %s",
                    self.name,
                    job.pk,
                    job.task_path,
                    ended.attempt_count,
                    error,
                    ended.scheduled_at if ended.status == ended.Status.SCHEDULED else "once",
                )
                return
        else:
            ended = ClaimedExecution.finish(
                job.claim_id, value, worker_id=self.name, using=self.database
            )
        if ended is None:
            logger.warning(
                "%s: job %s was taken over while it ran (%.1fs); its outcome is dropped",
                self.name,
                job.pk,
                time.monotonic() - started,
            )
        elif backend is not None:
            task_finished.send(type(backend), task_result=backend.to_result(ended, task))
        else:
            logger.error("%s: job %s failed: %s", self.name, job.pk, ended.errors[-1]["message"])

    def shut_down(self):
        if self.pool is None:
            return super().shut_down()
        self.pool.shutdown()
        if self.stopping == "graceful":
            deadline = time.monotonic() + self.config.shutdown_timeout
            while self.pool.busy and self.stopping == "graceful":
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.wakeup.wait(left)
        if self.listener is not None:
            self.listener.close()
        busy = self.pool.busy
        if busy:
            logger.warning(
                "%s: %s job(s) still running at shutdown are interrupted", self.name, busy
            )
        if self.stopping == "graceful" and busy:
            return (
                ShutdownTimeoutError,
                f"still running when {self.name}'s shutdown timeout of "
                f"{self.config.shutdown_timeout}s ran out",
            )
        return super().shut_down()
