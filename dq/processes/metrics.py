"""Prometheus metrics of a ``dq_work`` tree, served by its supervisor at
``http://metrics_address:metrics_port/metrics``: one endpoint, however many processes it
forks and however often they are replaced.

prometheus_client's multiprocess mode: the supervisor makes a directory and names it in
PROMETHEUS_MULTIPROC_DIR before it imports this module (prometheus_client reads it at
import) and forks; every process then writes its counts to files of its own pid there, and
a scrape adds up the files of every process, ended ones (a recycled worker's) included.
Gauges of what the database holds are read by the supervisor when it is scraped.

Only the supervisor imports this module, and only with a metrics port: without one, dq
needs prometheus_client neither installed nor loaded.
"""

import logging
import socket
from collections.abc import Iterator
from datetime import datetime
from http.server import HTTPServer
from typing import Any

from django.db import DatabaseError, connections
from django.utils import timezone
from prometheus_client import CollectorRegistry, Counter, Histogram, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import MetricsHandler
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from .. import stats
from ..conf import Configuration
from ..models import Job, Process, runs_interrupted
from .running import Outcome

logger = logging.getLogger(__name__)

# The environment variable that tells prometheus_client where its processes' files are.
DIRECTORY_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# Seconds, from a few milliseconds (a short job, a pickup by a waiting worker) to an hour.
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
# How long a scraper may take to send its request and read the answer: the supervisor's
# loop waits for it meanwhile.
REQUEST_TIMEOUT = 5.0
PATH = "/metrics"


def use_multiprocess_values() -> None:
    """Make metrics created from now on keep their values in PROMETHEUS_MULTIPROC_DIR's
    files, even if prometheus_client was imported before that variable was set (it reads
    it once, at import, into ``values.ValueClass``)."""
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]  # unannotated


def due_at(job: Job) -> datetime:
    """When ``job`` could first run: when it was enqueued, or the later time it was
    scheduled for (a ``run_after``, a retry's backoff)."""
    if job.scheduled_at is not None and job.scheduled_at > job.enqueued_at:
        return job.scheduled_at
    return job.enqueued_at


class Metrics:
    """What the processes of a dq_work tree count: made by the supervisor before it forks,
    inherited by every process it forks, each of which writes its own files."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        # registry=None: a scrape reads them from the directory, whoever wrote them.
        self.jobs_finished = Counter(
            "dq_jobs_finished",
            "Runs of jobs that ended: successful, failed (for good), retried (raised, "
            "will run again).",
            ["queue", "task", "status"],
            registry=None,
        )
        self.job_duration = Histogram(
            "dq_job_duration_seconds",
            "How long runs of jobs took, from their start to their end.",
            ["queue", "task"],
            buckets=SECONDS_BUCKETS,
            registry=None,
        )
        self.pickup_delay = Histogram(
            "dq_pickup_delay_seconds",
            "From a job being due (enqueued, or the time it was scheduled for) to its run's start.",
            ["queue"],
            buckets=SECONDS_BUCKETS,
            registry=None,
        )
        self.interruptions = Counter(
            "dq_job_interruptions",
            "Runs that started and never ended, by the error that ended them: "
            "ProcessExitError (their worker died), ShutdownTimeoutError, JobTimeoutError, ...",
            ["queue", "kind"],
            registry=None,
        )
        runs_interrupted.connect(self.count_interruptions, weak=False)

    def job_started(self, job: Job) -> None:
        """``job``'s run started (at its ``last_attempted_at``)."""
        started_at = job.last_attempted_at or timezone.now()
        delay = (started_at - due_at(job)).total_seconds()
        # A job run before its time ("run now" in the admin) waited for nothing.
        self.pickup_delay.labels(job.queue_name).observe(max(0.0, delay))

    def job_ended(self, job: Job, outcome: Outcome, duration: float) -> None:
        """A run of ``job`` ended as ``outcome`` after ``duration`` seconds."""
        self.jobs_finished.labels(job.queue_name, job.task_path, outcome).inc()
        self.job_duration.labels(job.queue_name, job.task_path).observe(duration)

    def count_interruptions(
        self, sender: object, *, exception_class: type[BaseException], jobs: list[Job], **_: Any
    ) -> None:
        """Receives ``runs_interrupted``: count the runs interrupted by their kind."""
        try:
            for job in jobs:
                self.interruptions.labels(job.queue_name, exception_class.__name__).inc()
        except Exception:  # counting must never stop a recovery
            logger.exception("dq metrics: cannot count %s interruption(s)", len(jobs))

    def process_dead(self, pid: int) -> None:
        """Process ``pid`` of this tree ended: its live gauges go (its counts stay)."""
        mark_process_dead(pid, self.directory)  # type: ignore[no-untyped-call]  # unannotated

    def close(self) -> None:
        runs_interrupted.disconnect(self.count_interruptions)


class DatabaseCollector:
    """The gauges read from the database when scraped, in three bounded queries: jobs per
    queue and open state, the age of each queue's oldest ready job, live processes per
    kind. A queue once seen is reported (at 0) until dq_work stops."""

    def __init__(self, config: Configuration) -> None:
        self.config = config
        self.queues: set[str] = set()

    def collect(self) -> Iterator[Metric]:
        using = self.config.database
        try:
            counts = stats.open_counts(using=using)
            oldest = stats.oldest_ready_times(using=using)
            processes = stats.live_process_counts(
                using=using, alive_threshold=self.config.alive_threshold
            )
        except DatabaseError:
            logger.exception("dq metrics: cannot read the database; its gauges are left out")
            connections[using].close()
            return
        now = timezone.now()
        self.queues.update(queue for queue, _ in counts)
        jobs = GaugeMetricFamily(
            "dq_jobs", "Jobs per queue in each state but the ended ones.", labels=["queue", "state"]
        )
        for queue in sorted(self.queues):
            for state in stats.OPEN_STATES:
                jobs.add_metric([queue, state.name], counts.get((queue, state.name), 0))
        yield jobs
        age = GaugeMetricFamily(
            "dq_oldest_ready_age_seconds",
            "How long the oldest ready job of each queue has been ready (0: none is).",
            labels=["queue"],
        )
        for queue in sorted(self.queues):
            ready_at = oldest.get(queue)
            age.add_metric([queue], max(0.0, (now - ready_at).total_seconds()) if ready_at else 0)
        yield age
        live = GaugeMetricFamily(
            "dq_processes",
            "Live dq processes (a heartbeat within the alive threshold) of every host, by kind.",
            labels=["kind"],
        )
        for kind in Process.Kind.values:
            live.add_metric([kind], processes.get(kind, 0))
        yield live


class MetricsRequestHandler(MetricsHandler):
    """Answers ``GET /metrics`` with the registry's metrics, anything else with 404."""

    timeout = REQUEST_TIMEOUT

    def do_GET(self) -> None:
        if self.path.split("?")[0] != PATH:
            self.send_error(404, f"dq serves {PATH} only")
            return
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("dq metrics: %s " + format, self.address_string(), *args)


class MetricsServer:
    """The supervisor's endpoint. Served from its main loop, one request at a time
    (``serve`` when ``fileno`` is readable): the supervisor stays single-threaded, so it
    forks safely."""

    def __init__(self, config: Configuration, metrics: Metrics) -> None:
        self.registry = CollectorRegistry()
        MultiProcessCollector(self.registry, path=metrics.directory)  # type: ignore[no-untyped-call]
        self.registry.register(DatabaseCollector(config))
        handler = type("Handler", (MetricsRequestHandler,), {"registry": self.registry})
        self.http = listening_server(config.metrics_address, config.metrics_port or 0, handler)
        self.http.timeout = 0  # serve() answers a request waiting, never waits for one

    @property
    def address(self) -> str:
        host, port = self.http.server_address[:2]
        return f"http://{host!s}:{port}{PATH}"

    def fileno(self) -> int:
        return self.http.fileno()

    def serve(self) -> None:
        """Answer the request waiting to be accepted, if any."""
        self.http.handle_request()

    def close(self) -> None:
        self.http.server_close()


def listening_server(address: str, port: int, handler: type[MetricsHandler]) -> HTTPServer:
    """An HTTPServer listening on ``address`` (IPv4 or IPv6) and ``port``; OSError if it
    cannot (the port is taken)."""

    class Server(HTTPServer):
        address_family = socket.AF_INET6 if ":" in address else socket.AF_INET

        def handle_error(self, request: Any, client_address: Any) -> None:
            logger.exception("dq metrics: cannot answer %s", client_address)

    return Server((address, port), handler)
