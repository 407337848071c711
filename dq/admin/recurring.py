"""Recurring tasks: schedule, last and next run, recent jobs, and "run now"."""

from typing import TYPE_CHECKING, cast

from django.contrib import admin, messages
from django.contrib.admin import ActionLocation
from django.contrib.admin.models import CHANGE, LogEntry
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html_join
from django.utils.safestring import SafeString, mark_safe

from ..models import RecurringExecution, RecurringTask
from .base import DQModelAdmin
from .display import job_link, moment

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser

RECENT_RUNS = 5


@admin.register(RecurringTask)
class RecurringTaskAdmin(DQModelAdmin[RecurringTask]):
    list_display = ["key", "task_path", "schedule", "timezone", "last_run", "next_run", "runs"]
    search_fields = ["key", "task_path"]
    ordering = ["key"]
    fields = [
        "key",
        "description",
        "task_path",
        "schedule",
        "timezone",
        "args",
        "kwargs",
        "queue_name",
        "priority",
        "last_run",
        "next_run",
        "runs",
    ]
    readonly_fields = ["last_run", "next_run", "runs"]
    actions = ["run_now"]

    @admin.display(description="last run", ordering="last_run_at")
    def last_run(self, task: RecurringTask) -> SafeString | str:
        return moment(task.last_run_at) if task.last_run_at else "-"

    @admin.display(description="next run")
    def next_run(self, task: RecurringTask) -> SafeString | str:
        return moment(task.next_run_at(timezone.now()))

    @admin.display(description="recent jobs")
    def runs(self, task: RecurringTask) -> SafeString | str:
        executions = (
            RecurringExecution.objects.using(self.db)
            .filter(task_key=task.key, job__isnull=False)
            .order_by("-run_at")[:RECENT_RUNS]
        )
        if not executions:
            return "-"
        return format_html_join(
            mark_safe("<br>"),  # a constant: the rows themselves are escaped
            "{} run of {}",
            # job__isnull=False: every run here has its job.
            ((job_link(cast(int, run.job_id)), moment(run.run_at)) for run in executions),
        )

    @admin.action(
        description="Run the selected recurring tasks now",
        permissions=["run_now"],
        location=[ActionLocation.CHANGE_LIST, ActionLocation.CHANGE_FORM],
    )
    def run_now(self, request: HttpRequest, queryset: QuerySet[RecurringTask]) -> None:
        enqueued: list[str] = []
        for task in queryset:
            job_id = task.enqueue_run(timezone.now(), using=self.db)
            if job_id is not None:
                enqueued.append(f"{task.key} as job {job_id}")
                LogEntry.objects.log_actions(
                    user_id=cast("AbstractBaseUser", request.user).pk,  # admin: logged-in staff
                    queryset=[task],
                    action_flag=CHANGE,
                    change_message=f"Run now: enqueued job {job_id}.",
                )
        self.message_user(request, f"Enqueued {', '.join(enqueued)}.", messages.SUCCESS)
