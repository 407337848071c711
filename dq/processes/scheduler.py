import logging
import zoneinfo
from datetime import datetime

from croniter import croniter
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from ..models import Process, RecurringExecution, RecurringTask
from ..models.job import load_task
from .base import Role

logger = logging.getLogger("dq")

# Longest the scheduler sleeps, so that a changed clock or a new run is noticed.
MAX_SLEEP = 60.0


class Scheduler(Role):
    """Enqueues recurring tasks when their cron schedule comes due: each run once,
    however many schedulers on however many hosts see it due."""

    kind = Process.Kind.SCHEDULER

    def metadata(self):
        return {"recurring": sorted(self.config.recurring)}

    def start(self):
        """Record the configured recurring tasks (and forget removed ones) for the admin."""
        with transaction.atomic(using=self.database):
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

    def poll(self):
        now = timezone.now()
        delays = [MAX_SLEEP]
        for key, entry in self.config.recurring.items():
            zone = zoneinfo.ZoneInfo(entry.timezone or settings.TIME_ZONE)
            local_now = now.astimezone(zone)
            due = croniter(entry.schedule, local_now).get_prev(datetime)
            if due >= self.started_at.astimezone(zone):
                job_id = RecurringExecution.record(
                    key, due, lambda entry=entry: self.enqueue(entry), using=self.database
                )
                if job_id is not None:
                    logger.info("%s enqueued %s (run of %s) as job %s", self.name, key, due, job_id)
            upcoming = croniter(entry.schedule, local_now).get_next(datetime)
            delays.append((upcoming - local_now).total_seconds())
        return max(0.0, min(delays))

    def enqueue(self, entry):
        task = load_task(entry.task)
        changes = {}
        if entry.queue_name:
            changes["queue_name"] = entry.queue_name
        if entry.priority is not None:
            changes["priority"] = entry.priority
        if changes:
            task = task.using(**changes)
        return int(task.enqueue(*entry.args, **entry.kwargs).id)
