from collections.abc import Callable
from datetime import datetime
from typing import TypedDict
from zoneinfo import ZoneInfo

from croniter import croniter
from django.db import IntegrityError, models

from ..db import database
from ..serialization import load_task
from .fields import ExactCharField


class TaskChanges(TypedDict, total=False):
    """What a recurring task changes of its Task (arguments of ``Task.using``)."""

    backend: str
    queue_name: str
    priority: int


class RecurringTask(models.Model):
    """A task enqueued on a cron schedule, as declared in the backend's OPTIONS["recurring"]."""

    key = ExactCharField(max_length=255, unique=True)
    backend = ExactCharField(max_length=100)
    task_path = ExactCharField(max_length=255)
    schedule = models.CharField(max_length=255)
    timezone = models.CharField(max_length=64)
    args = models.JSONField(default=list)
    kwargs = models.JSONField(default=dict)
    queue_name = ExactCharField(max_length=100, blank=True)
    priority = models.SmallIntegerField(null=True, blank=True)
    description = models.TextField(blank=True)
    last_run_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "dq_recurring_task"

    def __str__(self) -> str:
        return f"{self.key} ({self.schedule})"

    def next_run_at(self, now: datetime) -> datetime:
        """The next time the schedule comes due after ``now``, in the task's time zone."""
        return croniter(self.schedule, now.astimezone(ZoneInfo(self.timezone))).get_next(datetime)

    def previous_run_at(self, now: datetime) -> datetime:
        return croniter(self.schedule, now.astimezone(ZoneInfo(self.timezone))).get_prev(datetime)

    def enqueue_run(self, run_at: datetime, *, using: str) -> int | None:
        """Enqueue the run at ``run_at`` unless someone already did; the job id, or None."""
        return RecurringExecution.record(self.key, run_at, self.enqueue_job, using=using)

    def enqueue_job(self) -> int:
        """Enqueue one run through this task's backend alias; returns the job id."""
        task = load_task(self.task_path)
        changes: TaskChanges = {"backend": self.backend}
        if self.queue_name:
            changes["queue_name"] = self.queue_name
        if self.priority is not None:
            changes["priority"] = self.priority
        return int(task.using(**changes).enqueue(*self.args, **self.kwargs).id)


class RecurringExecution(models.Model):
    """One run of a recurring task: unique per task and run time, so that however many
    schedulers see a run due, one enqueues it."""

    task_key = ExactCharField(max_length=255)
    run_at = models.DateTimeField()
    job = models.ForeignKey(
        "dq.Job", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "dq_recurring_execution"
        constraints = [
            models.UniqueConstraint(fields=["task_key", "run_at"], name="dq_recurring_run_once")
        ]

    def __str__(self) -> str:
        return f"{self.task_key} at {self.run_at.isoformat()}"

    @classmethod
    def record(
        cls, task_key: str, run_at: datetime, enqueue: Callable[[], int], *, using: str
    ) -> int | None:
        """Enqueue the run of ``task_key`` at ``run_at`` unless someone already did.
        ``enqueue()`` returns the job id. Returns it, or None if the run was taken."""
        with database(using).atomic():
            try:
                with database(using).atomic():
                    execution = cls.objects.using(using).create(task_key=task_key, run_at=run_at)
            except IntegrityError:
                return None
            execution.job_id = enqueue()
            execution.save(using=using, update_fields=["job"])
        RecurringTask.objects.using(using).filter(key=task_key).update(last_run_at=run_at)
        return execution.job_id
