from collections.abc import Sequence
from datetime import datetime

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.tasks import DEFAULT_TASK_BACKEND_ALIAS
from django.utils import timezone
from django.utils.timesince import timesince

from dq import conf
from dq.exceptions import ConfigurationError
from dq.stats import (
    RUNNING_SHOWN,
    STATES,
    backend_alias,
    is_alive,
    processes_with_claims,
    queue_summaries,
    total_activity,
)


class Command(BaseCommand):
    help = (
        "Print dq's queues overview: jobs per queue and state, paused queues, the oldest "
        "ready job, the last hour's finished and failed jobs, and processes with their "
        "heartbeats."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--backend",
            help=f"TASKS alias (default: {DEFAULT_TASK_BACKEND_ALIAS!r} if it is dq's).",
        )

    def handle(self, *args: object, backend: str | None, **options: object) -> None:
        try:
            config = conf.load(backend or backend_alias())
        except ConfigurationError as error:
            raise CommandError(str(error)) from None
        now = timezone.now()
        queues = queue_summaries(using=config.database, now=now)
        self.stdout.write(f"Queues (backend {config.backend!r}, database {config.database!r})")
        header = ["QUEUE", *(state.label.upper() for state in STATES), "OLDEST READY", "STATUS"]
        rows = []
        for queue in queues:
            counts = [
                f"{queue.counts[state.name]}{'+' if state.name in queue.capped else ''}"
                for state in STATES
            ]
            oldest = queue.oldest_ready_at
            rows.append(
                [
                    queue.name,
                    *counts,
                    ago(oldest, now) if oldest else "-",
                    "paused" if queue.paused else "active",
                ]
            )
        self.write_table(header, rows, empty="  no jobs yet")
        last_hour = total_activity({queue.name: queue.activity for queue in queues}, now)
        self.stdout.write(
            f"Last hour: {sum(m.finished for m in last_hour)} finished, "
            f"{sum(m.failed for m in last_hour)} failed."
        )
        self.stdout.write("")

        self.stdout.write(f"Processes (stale: no heartbeat for {config.alive_threshold:g} s)")
        rows = []
        for process in processes_with_claims(using=config.database):
            alive = is_alive(process.last_heartbeat_at, config.alive_threshold, now)
            claims = process.claims.all()
            running = [f"#{claim.job_id} {claim.job.task_path}" for claim in claims[:RUNNING_SHOWN]]
            if len(claims) > RUNNING_SHOWN:
                running.append(f"and {len(claims) - RUNNING_SHOWN} more")
            rows.append(
                [
                    process.kind,
                    process.name,
                    process.hostname,
                    str(process.pid),
                    f"{ago(process.last_heartbeat_at, now)} ago",
                    "alive" if alive else "STALE",
                    ", ".join(running) or "-",
                ]
            )
        self.write_table(
            ["KIND", "NAME", "HOST", "PID", "HEARTBEAT", "STATE", "RUNNING"],
            rows,
            empty="  no process is running: start one with `manage.py dq_work`",
        )

    def write_table(
        self, header: Sequence[str], rows: Sequence[Sequence[str]], *, empty: str
    ) -> None:
        if not rows:
            self.stdout.write(empty)
            return
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            self.stdout.write(
                "  "
                + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            )


def ago(moment: datetime, now: datetime) -> str:
    """How long before ``now``, with plain spaces for a terminal."""
    return timesince(moment, now).replace("\xa0", " ")
