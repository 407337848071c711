"""Batches: newest first, each with a progress bar, its counts, times and callbacks; a
batch's page links its jobs, and its failed jobs are retried in one action, which
re-opens the batch if it had finished."""

from urllib.parse import urlencode

from django.contrib import admin, messages
from django.contrib.admin import ActionLocation
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from ..models import Batch, Job
from .base import DQModelAdmin, JobActionsMixin, jobs_count, retried_message
from .display import batch_progress, breakable, job_link, moment, pretty_json
from .filters import FinishedFilter

QUIET_ZERO = mark_safe('<span class="dq-zero">0</span>')

# What the list and a batch's page both show of a batch.
FACTS = [
    "progress",
    "total_jobs",
    "pending_jobs",
    "succeeded_jobs",
    "failed_jobs",
    "cancelled_jobs",
    "created",
    "finished",
]


def batch_jobs_url(batch: Batch, state: str | None = None) -> str:
    """The job list filtered to the batch's jobs (in ``state``, given)."""
    query = {"batch": batch.pk, **({"state": state} if state else {})}
    return f"{reverse('admin:dq_job_changelist')}?{urlencode(query)}"


def counted_jobs(batch: Batch, count: int, state: str | None = None) -> SafeString:
    """A count of the batch's jobs, linking to them; a quiet 0."""
    if not count:
        return QUIET_ZERO
    return format_html('<a href="{}">{}</a>', batch_jobs_url(batch, state), count)


def callback_lines(batch: Batch, *, with_tasks: bool) -> SafeString | str:
    """Each callback of the batch with its job, "not yet" enqueued, or the error that kept
    it from being enqueued; ``with_tasks`` (a batch's page), as ``on_KIND TASK (queue,
    priority): JOB``, else (the list) as ``KIND JOB``."""
    lines = []
    for kind in Batch.Callback:
        callback = batch.callbacks.get(kind.value)
        if callback is None:
            continue
        job = batch.callback_jobs.get(kind.value)
        if isinstance(job, int):
            outcome = job_link(job)
        elif job is None:
            outcome = format_html('<span class="dq-zero">{}</span>', "not yet")
        else:
            outcome = format_html('<span class="dq-error-message">{}</span>', job)
        if with_tasks:
            lines.append(
                format_html(
                    "on_{} {} (queue {}, priority {}): {}",
                    kind.value,
                    breakable(callback["task"]),
                    callback["queue_name"],
                    callback["priority"],
                    outcome,
                )
            )
        else:
            lines.append(format_html("{} {}", kind.value, outcome))
    if not lines:
        return "-"
    return format_html_join(mark_safe("<br>"), "{}", ((line,) for line in lines))


@admin.register(Batch)
class BatchAdmin(JobActionsMixin[Batch], DQModelAdmin[Batch]):
    list_display = ["name", *FACTS, "callbacks_and_jobs"]
    list_filter = [FinishedFilter]
    search_fields = ["description", "=id"]
    search_help_text = "Part of a description, or a batch id."
    ordering = ["-created_at"]
    sortable_by = ()  # newest first, always
    actions = ["retry_failed_jobs"]
    readonly_fields = ["jobs", *FACTS, "callbacks_in_full", "arguments"]
    fieldsets = [
        ("Batch", {"fields": ["description", "id", "backend", "jobs"]}),
        (
            "Progress",
            {
                "fields": [
                    "progress",
                    ("total_jobs", "pending_jobs"),
                    ("succeeded_jobs", "failed_jobs", "cancelled_jobs"),
                ]
            },
        ),
        ("Times", {"fields": [("created", "finished")]}),
        ("Callbacks", {"fields": ["callbacks_in_full", "arguments"]}),
    ]

    def jobs_of(self, queryset: QuerySet[Batch]) -> QuerySet[Job]:
        return Job.objects.using(self.db).filter(batch_id__in=queryset.values("pk"))

    @admin.display(description="batch")
    def name(self, batch: Batch) -> str:
        return str(batch)

    @admin.display(description="progress")
    def progress(self, batch: Batch) -> SafeString:
        return batch_progress(batch)

    @admin.display(description="jobs")
    def jobs(self, batch: Batch) -> SafeString:
        return format_html('<a href="{}">{}</a>', batch_jobs_url(batch), jobs_count(batch.total))

    @admin.display(description="total")
    def total_jobs(self, batch: Batch) -> SafeString:
        return counted_jobs(batch, batch.total)

    @admin.display(description="pending")
    def pending_jobs(self, batch: Batch) -> SafeString | int:
        """Pending jobs are in several states: a count, no link."""
        return batch.pending or QUIET_ZERO

    @admin.display(description="succeeded")
    def succeeded_jobs(self, batch: Batch) -> SafeString:
        return counted_jobs(batch, batch.succeeded, "finished")

    @admin.display(description="failed")
    def failed_jobs(self, batch: Batch) -> SafeString:
        return counted_jobs(batch, batch.failed, "failed")

    @admin.display(description="cancelled")
    def cancelled_jobs(self, batch: Batch) -> SafeString:
        return counted_jobs(batch, batch.cancelled, "cancelled")

    @admin.display(description="created", ordering="created_at")
    def created(self, batch: Batch) -> SafeString | str:
        return moment(batch.created_at)

    @admin.display(description="finished")
    def finished(self, batch: Batch) -> SafeString | str:
        if batch.finished_at is None:
            return format_html('<span class="dq-state dq-state-running">{}</span>', "running")
        return moment(batch.finished_at)

    @admin.display(description="callbacks")
    def callbacks_and_jobs(self, batch: Batch) -> SafeString | str:
        return callback_lines(batch, with_tasks=False)

    @admin.display(description="callbacks")
    def callbacks_in_full(self, batch: Batch) -> SafeString | str:
        return callback_lines(batch, with_tasks=True)

    @admin.display(description="callbacks' keyword arguments")
    def arguments(self, batch: Batch) -> SafeString:
        return pretty_json(batch.kwargs)

    @admin.action(
        description="Retry the failed jobs of the selected batches",
        permissions=["retry"],
        location=[ActionLocation.CHANGE_LIST, ActionLocation.CHANGE_FORM],
    )
    def retry_failed_jobs(self, request: HttpRequest, queryset: QuerySet[Batch]) -> None:
        finished = list(
            queryset.filter(finished_at__isnull=False, failed__gt=0).values_list("pk", flat=True)
        )
        retried = self.retry_failed(request, self.jobs_of(queryset))
        if not retried:
            self.message_user(
                request, "No failed job in the selected batches: nothing retried.", messages.WARNING
            )
            return
        reopened = (
            Batch.objects.using(self.db).filter(pk__in=finished, finished_at__isnull=True).count()
        )
        said = retried_message(retried)
        if reopened:
            said += f" Re-opened {reopened} finished batch{'es' if reopened > 1 else ''}."
        self.message_user(request, said, messages.SUCCESS)

    def page_buttons(self, request: HttpRequest, obj: Batch) -> list[dict[str, str]]:
        actions = self.get_actions(request, action_location=ActionLocation.CHANGE_FORM)
        if obj.failed and "retry_failed_jobs" in actions:
            return [{"action": "retry_failed_jobs", "label": "Retry failed jobs"}]
        return []
