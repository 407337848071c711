"""Recurring tasks: schedule (in words too), last and next runs, recent jobs, and "run now"."""

import functools
import re
from typing import TYPE_CHECKING, cast
from zoneinfo import ZoneInfo

from cron_descriptor import Options, get_description
from django.contrib import admin, messages
from django.contrib.admin import ActionLocation
from django.contrib.admin.models import CHANGE, LogEntry
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from ..models import RecurringExecution, RecurringTask
from .base import DQModelAdmin
from .display import job_link, moment

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser

RECENT_RUNS = 5
NEXT_RUNS = 5  # the coming runs a task's page lists

# The aliases dq accepts (croniter's, in any case), as the five fields each stands for:
# cron-descriptor describes fields only.
CRON_ALIASES = {
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}

# A cron field cron-descriptor puts into the right words: numbers or names, "*", "?", ranges,
# steps and lists of them; or one of L, W and # alone ("L", "LW", "15W", "L5", "5#3"). Not
# croniter's random "R" fields, nor L or # in a list (it says "on day L and 15").
_LISTED = r"(?:\*|\?|(?:\d+|[A-Z]{3})(?:-(?:\d+|[A-Z]{3}))?)(?:/\d+)?"
DESCRIBED_FIELD = re.compile(rf"{_LISTED}(?:,{_LISTED})*|L|LW|\d+W|L\d|(?:\d|[A-Z]{{3}})#\d")


@functools.lru_cache(maxsize=256)
def schedule_in_words(schedule: str) -> str | None:
    """A cron schedule in words ("*/5 * * * *": "Every 5 minutes"), or None where
    cron-descriptor has none for it or would get it wrong."""
    fields = CRON_ALIASES.get(schedule.strip().lower(), schedule).upper().split()
    if len(fields) != 5 or not all(DESCRIBED_FIELD.fullmatch(field) for field in fields):
        return None
    try:
        return get_description(
            " ".join(fields), Options(locale_code="en_US", use_24hour_time_format=True)
        )
    except Exception:  # whatever it raises: the words help, they never make an error page
        return None


@admin.register(RecurringTask)
class RecurringTaskAdmin(DQModelAdmin[RecurringTask]):
    list_display = [
        "key",
        "task_path",
        "described_schedule",
        "timezone",
        "last_run",
        "next_run",
        "runs",
    ]
    search_fields = ["key", "task_path"]
    ordering = ["key"]
    fields = [
        "key",
        "description",
        "task_path",
        "described_schedule",
        "timezone",
        "args",
        "kwargs",
        "queue_name",
        "priority",
        "last_run",
        "next_runs",
        "runs",
    ]
    readonly_fields = ["described_schedule", "last_run", "next_runs", "runs"]
    actions = ["run_now"]

    @admin.display(description="schedule", ordering="schedule")
    def described_schedule(self, task: RecurringTask) -> SafeString:
        """The schedule in words with its cron; the cron alone where it has no words."""
        words = schedule_in_words(task.schedule)
        if words is None:
            return format_html("<code>{}</code>", task.schedule)
        return format_html("{} <code>{}</code>", words, task.schedule)

    @admin.display(description="last run", ordering="last_run_at")
    def last_run(self, task: RecurringTask) -> SafeString | str:
        return moment(task.last_run_at) if task.last_run_at else "-"

    @admin.display(description="next run")
    def next_run(self, task: RecurringTask) -> SafeString | str:
        return moment(task.next_run_at(timezone.now()))

    @admin.display(description="next runs")
    def next_runs(self, task: RecurringTask) -> SafeString:
        """The next NEXT_RUNS times the schedule comes due, to the second, in the task's own
        time zone, which it names."""
        now = timezone.now()
        runs = [task.next_run_at(now)]
        while len(runs) < NEXT_RUNS:
            runs.append(task.next_run_at(runs[-1]))
        with timezone.override(ZoneInfo(task.timezone)):
            times = format_html_join(
                mark_safe("<br>"),  # a constant: the times themselves are escaped
                "{}",
                ((moment(run, now),) for run in runs),
            )
        return format_html('{}<br><span class="dq-ago">times in {}</span>', times, task.timezone)

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
        if enqueued:
            self.message_user(request, f"Enqueued {', '.join(enqueued)}.", messages.SUCCESS)
        else:
            self.message_user(
                request, "Nothing enqueued: each run was enqueued already.", messages.WARNING
            )

    def page_buttons(self, request: HttpRequest, obj: RecurringTask) -> list[dict[str, str]]:
        actions = self.get_actions(request, action_location=ActionLocation.CHANGE_FORM)
        return [{"action": "run_now", "label": "Run now"}] if "run_now" in actions else []
