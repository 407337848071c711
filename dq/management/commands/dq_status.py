import sys
from collections.abc import Sequence
from datetime import datetime
from json import dumps
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.tasks import DEFAULT_TASK_BACKEND_ALIAS
from django.utils import timezone
from django.utils.timesince import timesince

from dq import conf
from dq.exceptions import ConfigurationError
from dq.models import Process
from dq.queues import QueueSelector, serves
from dq.stats import (
    RUNNING_SHOWN,
    STATES,
    QueueSummary,
    backend_alias,
    is_alive,
    processes_with_claims,
    queue_summaries,
    total_activity,
)

# How long, by default, a ready job may wait before --check says the queue is not served.
DEFAULT_MAX_READY_AGE = 300.0


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
        parser.add_argument(
            "--json", action="store_true", help="Print the overview as JSON, for scripts."
        )
        parser.add_argument(
            "--check",
            action="store_true",
            help="A health check: exit 0 if every queue with ready jobs (and not paused) is "
            "served by a live worker and no ready job has waited longer than "
            "--max-ready-age; else print why and exit 1.",
        )
        parser.add_argument(
            "--max-ready-age",
            type=float,
            default=DEFAULT_MAX_READY_AGE,
            metavar="SECONDS",
            help="With --check: how long a ready job may wait, in seconds "
            f"(default {DEFAULT_MAX_READY_AGE:g}).",
        )

    def handle(
        self,
        *args: object,
        backend: str | None,
        json: bool = False,
        check: bool = False,
        max_ready_age: float = DEFAULT_MAX_READY_AGE,
        **options: object,
    ) -> None:
        try:
            config = conf.load(backend or backend_alias())
        except ConfigurationError as error:
            raise CommandError(str(error)) from None
        now = timezone.now()
        queues = queue_summaries(using=config.database, now=now)
        processes = list(processes_with_claims(using=config.database))
        if check:
            problems = health_problems(queues, processes, config, now, max_ready_age)
            for problem in problems:
                self.stderr.write(f"dq unhealthy: {problem}")
            if problems:
                sys.exit(1)
            self.stdout.write("dq healthy: every queue with ready jobs has a live worker.")
            return
        if json:
            self.stdout.write(dumps(overview(queues, processes, config, now), indent=2))
            return
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
        for process in processes:
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


def overview(
    queues: Sequence[QueueSummary],
    processes: Sequence[Process],
    config: conf.Configuration,
    now: datetime,
) -> dict[str, Any]:
    """The overview as JSON-ready values: times in ISO 8601, ages in seconds."""
    return {
        "backend": config.backend,
        "database": config.database,
        "at": now.isoformat(),
        "queues": [
            {
                "name": queue.name,
                "jobs": dict(queue.counts),
                "capped": sorted(queue.capped),
                "paused": queue.paused,
                "oldest_ready_at": queue.oldest_ready_at.isoformat()
                if queue.oldest_ready_at
                else None,
                "oldest_ready_age_s": (now - queue.oldest_ready_at).total_seconds()
                if queue.oldest_ready_at
                else None,
                "last_hour": {
                    "finished": sum(minute.finished for minute in queue.activity),
                    "failed": sum(minute.failed for minute in queue.activity),
                },
            }
            for queue in queues
        ],
        "processes": [
            {
                "kind": process.kind,
                "name": process.name,
                "hostname": process.hostname,
                "pid": process.pid,
                "last_heartbeat_at": process.last_heartbeat_at.isoformat(),
                "alive": is_alive(process.last_heartbeat_at, config.alive_threshold, now),
                "queues": process.metadata.get("queues"),
                "running": [claim.job_id for claim in process.claims.all()],
            }
            for process in processes
        ],
    }


def health_problems(
    queues: Sequence[QueueSummary],
    processes: Sequence[Process],
    config: conf.Configuration,
    now: datetime,
    max_ready_age: float,
) -> list[str]:
    """Why dq is not healthy: a queue with ready jobs that no live worker takes, or whose
    oldest ready job has waited longer than ``max_ready_age`` seconds. Paused queues wait
    on purpose and are left out."""
    served = [
        tuple(QueueSelector(text) for text in process.metadata.get("queues", []))
        for process in processes
        if process.kind == Process.Kind.WORKER
        and is_alive(process.last_heartbeat_at, config.alive_threshold, now)
    ]
    problems = []
    for queue in queues:
        if queue.paused or not queue.counts.get("ready"):
            continue
        if not any(serves(selectors, queue.name) for selectors in served):
            problems.append(
                f"queue {queue.name!r} has {queue.counts['ready']} ready job(s) and no live "
                "worker takes its jobs"
            )
        elif (
            queue.oldest_ready_at and (now - queue.oldest_ready_at).total_seconds() > max_ready_age
        ):
            problems.append(
                f"queue {queue.name!r}: its oldest ready job has waited "
                f"{ago(queue.oldest_ready_at, now)} (more than {max_ready_age:g} s)"
            )
    return problems
