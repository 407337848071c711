"""Recurring tasks: schedule, last and next run, recent jobs, and "run now"."""

from django.contrib import admin, messages
from django.contrib.admin import ActionLocation
from django.contrib.admin.models import CHANGE, LogEntry
from django.utils import timezone
from django.utils.html import format_html_join
from django.utils.safestring import mark_safe

from ..models import RecurringExecution, RecurringTask
from .base import DQModelAdmin
from .display import job_link, moment

RECENT_RUNS = 5


@admin.register(RecurringTask)
class RecurringTaskAdmin(DQModelAdmin):
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
    def last_run(self, task):
        return moment(task.last_run_at) if task.last_run_at else "-"

    @admin.display(description="next run")
    def next_run(self, task):
        return moment(task.next_run_at(timezone.now()))

    @admin.display(description="recent jobs")
    def runs(self, task):
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
            ((job_link(run.job_id), moment(run.run_at)) for run in executions),
        )

    @admin.action(
        description="Run the selected recurring tasks now",
        permissions=["run_now"],
        location=[ActionLocation.CHANGE_LIST, ActionLocation.CHANGE_FORM],
    )
    def run_now(self, request, queryset):
        enqueued = []
        for task in queryset:
            job_id = task.enqueue_run(timezone.now(), using=self.db)
            if job_id is not None:
                enqueued.append(f"{task.key} as job {job_id}")
                LogEntry.objects.log_actions(
                    user_id=request.user.pk,
                    queryset=[task],
                    action_flag=CHANGE,
                    change_message=f"Run now: enqueued job {job_id}.",
                )
        self.message_user(request, f"Enqueued {', '.join(enqueued)}.", messages.SUCCESS)
