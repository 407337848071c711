"""One list per execution state that needs a person's eye: failed, claimed (running) and
scheduled jobs. Each row links to its job's page, where everything about the job is."""

from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.db.models import OuterRef, QuerySet, Subquery
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.text import Truncator

from ..models import (
    BlockedExecution,
    ClaimedExecution,
    FailedExecution,
    Process,
    ScheduledExecution,
)
from ..stats import is_alive, shown_config
from .base import DQModelAdmin, JobActionsMixin
from .display import (
    age,
    alive_badge,
    breakable,
    job_link,
    moment,
    process_link,
    waiting_for,
)
from .filters import ClaimHeartbeatFilter, JobQueueFilter, JobTaskFilter, QueueFilter

if TYPE_CHECKING:
    from datetime import datetime
    from typing import TypedDict

    from django_stubs_ext import WithAnnotations

    class ClaimAnnotations(TypedDict):
        """What ClaimedExecutionAdmin reads beside each claim, of its process (None if gone)."""

        process_name: str | None
        process_pid: int | None
        process_host: str | None
        heartbeat_at: datetime | None

    Claim = WithAnnotations[ClaimedExecution, ClaimAnnotations]


HOLDERS_SHOWN = 3  # the jobs holding a key's slots a blocked row names

# The job columns the lists show; its large JSON columns stay unread.
JOB_COLUMNS = [
    "job__task_path",
    "job__queue_name",
    "job__priority",
    "job__attempt_count",
    "job__max_attempts",
]


class ExecutionAdmin[
    ExecutionT: FailedExecution | ClaimedExecution | ScheduledExecution | BlockedExecution
](JobActionsMixin[ExecutionT], DQModelAdmin[ExecutionT]):
    """A list of one execution table; a row's page is its job's page."""

    list_display_links = None
    job_columns = JOB_COLUMNS

    def get_queryset(self, request: HttpRequest) -> QuerySet[ExecutionT]:
        fields = [f.name for f in self.model._meta.concrete_fields]
        return super().get_queryset(request).select_related("job").only(*fields, *self.job_columns)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        execution = self.get_object(request, object_id)
        if execution is None or not self.has_view_permission(request, execution):
            return super().change_view(request, object_id, form_url, extra_context)
        return redirect("admin:dq_job_change", execution.job_id)

    @admin.display(description="job", ordering="job_id")
    def job_id_link(self, execution: ExecutionT) -> SafeString:
        return job_link(execution.job_id)

    @admin.display(description="task")
    def task(self, execution: ExecutionT) -> SafeString:
        return breakable(execution.job.task_path)

    @admin.display(description="queue")
    def queue(self, execution: ExecutionT) -> SafeString:
        return breakable(execution.job.queue_name)

    @admin.display(description="queue", ordering="queue_name")
    def own_queue(self, execution: ScheduledExecution | BlockedExecution) -> SafeString:
        """The queue a waiting execution copies from its job."""
        return breakable(execution.queue_name)


@admin.register(FailedExecution)
class FailedExecutionAdmin(ExecutionAdmin[FailedExecution]):
    list_display = ["job_id_link", "task", "queue", "error", "attempts", "failed"]
    list_filter = [JobQueueFilter, JobTaskFilter, "exception_class_path"]
    search_fields = ["=job__id", "job__task_path", "exception_class_path"]
    search_help_text = "A job id, part of a task path, or an exception class."
    ordering = ["-id"]
    sortable_by = ["job_id_link", "failed"]
    actions = ["retry_jobs", "discard_jobs"]
    # The actions each row offers as buttons, by label (the form of each: failedexecution's
    # change_list.html).
    row_actions = {"retry_jobs": "Retry", "discard_jobs": "Discard"}

    def allowed_row_actions(self, request: HttpRequest) -> list[tuple[str, str]]:
        """The row actions the user may run (each action's own permission): name, label."""
        allowed = self.get_actions(request)
        return [(name, label) for name, label in self.row_actions.items() if name in allowed]

    def get_list_display(self, request: HttpRequest) -> list[Any]:
        allowed = self.allowed_row_actions(request)
        if not allowed:
            return list(self.list_display)

        @admin.display(description="actions")
        def buttons(failed: FailedExecution) -> SafeString:
            return format_html_join(
                "",
                '<button type="submit" form="dq-row-{}" name="_selected_action" value="{}" '
                'class="dq-row-button dq-{}" title="{} job {}">{}</button>',
                (
                    (name, failed.pk, label.lower(), label, failed.job_id, label)
                    for name, label in allowed
                ),
            )

        return [*self.list_display, buttons]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        row_actions = [name for name, _ in self.allowed_row_actions(request)]
        return super().changelist_view(
            request, {**(extra_context or {}), "row_actions": row_actions}
        )

    @admin.display(description="error")
    def error(self, failed: FailedExecution) -> SafeString:
        return format_html(
            '<span class="dq-error-class">{}</span>'
            '<span class="dq-error-message">{}</span>'
            '<details class="dq-details"><summary>traceback</summary>'
            '<pre class="dq-traceback">{}</pre></details>',
            failed.exception_class_path,
            Truncator(failed.message).chars(300),
            failed.traceback,
        )

    @admin.display(description="failed", ordering="failed_at")
    def failed(self, failed: FailedExecution) -> SafeString | str:
        return moment(failed.failed_at)

    @admin.display(description="attempts")
    def attempts(self, failed: FailedExecution) -> int:
        return failed.job.attempt_count


@admin.register(ClaimedExecution)
class ClaimedExecutionAdmin(ExecutionAdmin[ClaimedExecution]):
    """Running jobs, with the process that holds each and whether its heartbeat is stale."""

    list_display = [
        "job_id_link",
        "task",
        "queue",
        "held_by",
        "host",
        "claimed",
        "heartbeat",
    ]
    list_filter = [ClaimHeartbeatFilter, JobQueueFilter, JobTaskFilter]
    search_fields = ["=job__id", "job__task_path"]
    search_help_text = "A job id, or part of a task path."
    ordering = ["claimed_at"]
    sortable_by = ["claimed"]
    actions = None

    def get_queryset(self, request: HttpRequest) -> "QuerySet[Claim]":
        # A claim can outlive its process row (pruned): read the process beside each claim,
        # never join it away.
        process = Process.objects.using(self.db).filter(pk=OuterRef("process_id"))
        return (
            super()
            .get_queryset(request)
            .annotate(
                process_name=Subquery(process.values("name")[:1]),
                process_pid=Subquery(process.values("pid")[:1]),
                process_host=Subquery(process.values("hostname")[:1]),
                heartbeat_at=Subquery(process.values("last_heartbeat_at")[:1]),
            )
        )

    @admin.display(description="process")
    def held_by(self, claim: "Claim") -> SafeString | str:
        if claim.process_name is None:
            return f"process {claim.process_id} (gone)"
        return format_html(
            "{} (pid {})", process_link(claim.process_id, claim.process_name), claim.process_pid
        )

    @admin.display(description="host")
    def host(self, claim: "Claim") -> str:
        return claim.process_host or "-"

    @admin.display(description="claimed", ordering="claimed_at")
    def claimed(self, claim: ClaimedExecution) -> SafeString | str:
        return moment(claim.claimed_at)

    @admin.display(description="heartbeat")
    def heartbeat(self, claim: "Claim") -> SafeString:
        alive = is_alive(claim.heartbeat_at, shown_config().alive_threshold, timezone.now())
        if claim.heartbeat_at is None:
            return alive_badge(False)
        return format_html("{} ago {}", age(claim.heartbeat_at), alive_badge(alive))


@admin.register(ScheduledExecution)
class ScheduledExecutionAdmin(ExecutionAdmin[ScheduledExecution]):
    """Jobs waiting for their time: deferred with run_after, or backing off before a retry."""

    list_display = ["job_id_link", "task", "own_queue", "priority", "runs_at", "why"]
    list_filter = [QueueFilter, JobTaskFilter]
    search_fields = ["=job__id", "job__task_path"]
    search_help_text = "A job id, or part of a task path."
    ordering = ["scheduled_at", "-priority"]
    sortable_by = ["runs_at"]
    actions = ["run_jobs_now", "discard_jobs"]

    @admin.display(description="runs at", ordering="scheduled_at")
    def runs_at(self, scheduled: ScheduledExecution) -> SafeString | str:
        return moment(scheduled.scheduled_at)

    @admin.display(description="waiting for")
    def why(self, scheduled: ScheduledExecution) -> str:
        job = scheduled.job
        if job.attempt_count:
            return f"retry: attempt {job.attempt_count + 1} of at most {job.max_attempts}"
        return "its run_after time"


@admin.register(BlockedExecution)
class BlockedExecutionAdmin(ExecutionAdmin[BlockedExecution]):
    """Jobs waiting for a free slot of their concurrency key."""

    list_display = ["job_id_link", "task", "own_queue", "priority", "waiting_for", "since"]
    list_filter = [QueueFilter, JobTaskFilter]
    search_fields = ["=job__id", "job__task_path", "concurrency_key"]
    search_help_text = "A job id, part of a task path, or a concurrency key."
    ordering = ["concurrency_key", "-priority", "job_id"]
    sortable_by = ["waiting_for", "since"]
    actions = ["run_jobs_now", "discard_jobs"]
    job_columns = [*JOB_COLUMNS, "job__concurrency_limit"]

    @admin.display(description="waiting for", ordering="concurrency_key")
    def waiting_for(self, blocked: BlockedExecution) -> SafeString:
        return waiting_for(blocked, blocked.slot_holders(HOLDERS_SHOWN, using=self.db))

    @admin.display(description="blocked since", ordering="created_at")
    def since(self, blocked: BlockedExecution) -> SafeString | str:
        return moment(blocked.created_at)
