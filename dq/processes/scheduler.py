import logging
from typing import Any

from django.conf import settings
from django.utils import timezone

from ..db import database
from ..models import Process, RecurringTask
from .base import Role

logger = logging.getLogger(__name__)

# Longest the scheduler sleeps, so that a changed clock or a new run is noticed.
MAX_SLEEP = 60.0


class Scheduler(Role):
    """Enqueues recurring tasks when their cron schedule comes due: each run once,
    however many schedulers on however many hosts see it due."""

    kind = Process.Kind.SCHEDULER

    def metadata(self) -> dict[str, Any]:
        return {"recurring": sorted(self.config.recurring)}

    def start(self) -> None:
        """Record the configured recurring tasks (and forget removed ones) for the admin."""
        with database(self.database).atomic():
            for key, entry in self.config.recurring.items():
                RecurringTask.objects.using(self.database).update_or_create(
                    key=key,
                    defaults={
                        "backend": self.config.backend,
                        "task_path": entry.task,
                        "schedule": entry.schedule,
                        "timezone": entry.timezone or settings.TIME_ZONE,
                        "args": entry.args,
                        "kwargs": entry.kwargs,
                        "queue_name": entry.queue_name or "",
                        "priority": entry.priority,
                        "description": entry.description,
                    },
                )
            RecurringTask.objects.using(self.database).filter(backend=self.config.backend).exclude(
                key__in=list(self.config.recurring)
            ).delete()
        self.started_at = timezone.now()

    def poll(self) -> float:
        now = timezone.now()
        delays = [MAX_SLEEP]
        for task in RecurringTask.objects.using(self.database).filter(backend=self.config.backend):
            due = task.previous_run_at(now)
            if due >= self.started_at:
                job_id = task.enqueue_run(due, using=self.database)
                if job_id is not None:
                    logger.info(
                        "%s enqueued %s (run of %s) as job %s", self.name, task, due, job_id
                    )
            delays.append((task.next_run_at(now) - now).total_seconds())
        return max(0.0, min(delays))
