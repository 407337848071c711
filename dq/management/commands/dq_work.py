import logging
import sys
from typing import cast

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections
from django.tasks import DEFAULT_TASK_BACKEND_ALIAS, task_backends
from django.tasks.exceptions import InvalidTaskBackend

from dq import conf
from dq.backend import DQBackend
from dq.exceptions import ConfigurationError
from dq.processes.supervisor import Supervisor


class Command(BaseCommand):
    help = "Run dq: a supervisor that forks workers and a dispatcher for one task backend."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--backend",
            default=DEFAULT_TASK_BACKEND_ALIAS,
            help="TASKS alias to run (default: %(default)s).",
        )
        parser.add_argument("--processes", type=int, help="Worker processes (overrides OPTIONS).")
        parser.add_argument("--threads", type=int, help="Threads per worker (overrides OPTIONS).")
        parser.add_argument(
            "--queues",
            help="Comma-separated queues in the order they are worked: names, '*', or prefixes "
            "like 'mail*' (overrides OPTIONS).",
        )
        parser.add_argument(
            "--metrics-port",
            type=int,
            help="Serve Prometheus metrics at http://ADDRESS:PORT/metrics, ADDRESS being "
            "OPTIONS['metrics_address'] (overrides OPTIONS['metrics_port']; needs dq[metrics]).",
        )

    def handle(
        self,
        *args: object,
        backend: str,
        processes: int | None,
        threads: int | None,
        queues: str | None,
        metrics_port: int | None,
        **options: object,
    ) -> None:
        try:
            backend_instance = task_backends[backend]
        except InvalidTaskBackend as error:
            raise CommandError(f"No task backend {backend!r} in TASKS: {error}") from None
        if not isinstance(backend_instance, DQBackend):
            raise CommandError(
                f"TASKS[{backend!r}] uses {type(backend_instance).__module__}."
                f"{type(backend_instance).__qualname__}, not dq.backend.DQBackend."
            )
        try:
            config = (
                conf.load(backend)
                .with_worker_overrides(
                    queues=conf.parse_queues(queues) if queues is not None else None,
                    threads=threads,
                    processes=processes,
                )
                .with_metrics_port(metrics_port)
            )
        except ConfigurationError as error:
            raise CommandError(str(error)) from None
        self.configure_logging(verbosity=cast(int, options["verbosity"]))
        self.stdout.write(self.banner(config))
        self.stdout.flush()
        sys.exit(Supervisor(config).run())

    def banner(self, config: conf.Configuration) -> str:
        vendor = connections[config.database].vendor
        scheduler = (
            f"scheduler for {len(config.recurring)} recurring task(s); "
            if config.recurring and config.scheduler
            else ""
        )
        workers = "; ".join(
            f"{w.processes} x worker ({w.threads} threads, queues {','.join(w.queues)})"
            for w in config.workers
        )
        return (
            f"dq_work: backend {config.backend!r} on database {config.database!r} ({vendor}): "
            f"{workers}; {config.dispatcher.processes} x dispatcher; "
            f"{scheduler}"
            f"shutdown timeout {config.shutdown_timeout}s, heartbeat every "
            f"{config.heartbeat_interval}s, alive threshold {config.alive_threshold}s"
            + (
                f"; metrics at http://{config.metrics_address}:{config.metrics_port}/metrics"
                if config.metrics_port is not None
                else ""
            )
        )

    def configure_logging(self, *, verbosity: int) -> None:
        """When the project's LOGGING says nothing about them, show dq's INFO lines (its
        processes starting and stopping) and Django's ``django.tasks`` WARNING lines (runs
        failed and retried); with ``-v 2`` also Django's two INFO lines per run. A line
        per run costs a worker more than the run of a short job itself."""
        dq_logger = logging.getLogger("dq")
        if dq_logger.handlers or logging.getLogger().handlers:
            return
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s")
        )
        levels = {
            "dq": logging.INFO,
            "django.tasks": logging.INFO if verbosity > 1 else logging.WARNING,
        }
        for name, level in levels.items():
            logging.getLogger(name).addHandler(handler)
            logging.getLogger(name).setLevel(level)
            logging.getLogger(name).propagate = False
