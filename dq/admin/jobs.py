"""Jobs: the list (filter by state, queue, task, retried, batch; newest first) and a job's
page with its arguments, batch, state, times, workers and attempt history."""

from typing import TYPE_CHECKING, cast

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.db.models import QuerySet, TextField
from django.db.models.functions import Cast, Left
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from ..models import (
    BlockedExecution,
    ClaimedExecution,
    FailedExecution,
    Job,
    Process,
    ScheduledExecution,
)
from ..stats import is_alive, shown_config
from .base import DQModelAdmin, JobActionsMixin
from .display import (
    age,
    alive_badge,
    arguments_preview,
    batch_link,
    batch_progress,
    breakable,
    duration,
    job_link,
    moment,
    pretty_json,
    process_link,
    run_time,
    state_badge,
    waiting_for,
)
from .filters import BatchFilter, QueueFilter, RetriedFilter, StateFilter, TaskFilter

if TYPE_CHECKING:
    from django.contrib.admin.options import _FieldsetSpec
    from django.utils.datastructures import _ListOrTuple

# Large JSON columns the list never reads whole.
LIST_DEFERRED = ["args", "kwargs", "attempts", "return_value", "backoff"]
ARGUMENTS_READ = 80  # characters of each of a job's args and kwargs the list reads


class JobChangeList(ChangeList):
    def get_queryset(
        self, request: HttpRequest, exclude_parameters: list[str | None] | None = None
    ) -> QuerySet[Job]:
        # The arguments' first characters only, cut by the database: a preview per row.
        jobs: QuerySet[Job] = super().get_queryset(request, exclude_parameters)
        return jobs.defer(*LIST_DEFERRED).annotate(
            args_head=Left(Cast("args", TextField()), ARGUMENTS_READ),
            kwargs_head=Left(Cast("kwargs", TextField()), ARGUMENTS_READ),
        )

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        if self.result_count == 0:
            # Counted nothing: a search that matched no row need not scan again to show it.
            self.result_list = self.queryset.none()


@admin.register(Job)
class JobAdmin(JobActionsMixin[Job], DQModelAdmin[Job]):
    list_display = [
        "id",
        "task",
        "queue",
        "state",
        "arguments",
        "attempts_so_far",
        "enqueued",
        "finished",
        "ran_for",
    ]
    list_filter = [StateFilter, QueueFilter, TaskFilter, RetriedFilter, BatchFilter]
    search_fields = ["=id", "task_path"]
    search_help_text = "A job id, or part of a task path."
    ordering = ["-id"]
    sortable_by = ["id"]
    actions = ["retry_jobs", "run_jobs_now", "cancel_jobs", "discard_jobs"]
    readonly_fields = [
        "enqueued",
        "scheduled",
        "started",
        "last_attempted",
        "finished",
        "state",
        "positional_arguments",
        "keyword_arguments",
        "worker",
        "claim",
        "runs_at",
        "blocked_on",
        "failure",
        "attempts_made",
        "result",
        "in_batch",
        "in_chain",
    ]

    def get_changelist(self, request: HttpRequest, **kwargs: object) -> type[JobChangeList]:
        return JobChangeList

    def jobs_of(self, queryset: QuerySet[Job]) -> QuerySet[Job]:
        return queryset

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Job], search_term: str
    ) -> tuple[QuerySet[Job], bool]:
        """A number finds the job with that id; anything else, jobs whose task path has it."""
        term = search_term.strip()
        if not term:
            return queryset, False
        if term.isdigit() and len(term) < 19:
            return queryset.filter(pk=int(term)), False
        return queryset.filter(task_path__icontains=term), False

    def get_fieldsets(self, request: HttpRequest, obj: Job | None = None) -> "_FieldsetSpec":
        state: list[str | _ListOrTuple[str]] = ["state", "worker"]  # django-stubs' type of "fields"
        if obj is not None and obj.status == Job.Status.RUNNING:
            state.append("claim")
        if obj is not None and obj.status == Job.Status.SCHEDULED:
            state.append("runs_at")
        if obj is not None and obj.status == Job.Status.BLOCKED:
            state.append("blocked_on")
        if obj is not None and obj.status == Job.Status.FAILED:
            state.append("failure")
        task: list[str | _ListOrTuple[str]] = [
            "task_path",
            ("queue_name", "priority"),
            "positional_arguments",
            "keyword_arguments",
            ("backend", "delivery"),
        ]
        if obj is not None and obj.batch_id is not None:
            task.append("in_batch")
        if obj is not None and obj.chain:
            task.append("in_chain")
        return [
            ("Task", {"fields": task}),
            ("State", {"fields": state}),
            (
                "Times",
                {
                    "fields": [
                        ("enqueued", "scheduled"),
                        ("started", "last_attempted", "finished"),
                    ]
                },
            ),
            ("Attempts and result", {"fields": ["attempts_made", "result"]}),
        ]

    @admin.display(description="state", ordering="status")
    def state(self, job: Job) -> SafeString:
        return state_badge(job.status)

    @admin.display(description="task")
    def task(self, job: Job) -> SafeString:
        return breakable(job.task_path)

    @admin.display(description="queue")
    def queue(self, job: Job) -> SafeString:
        if job.priority:
            return format_html(
                '{} <span class="dq-ago">priority {}</span>',
                breakable(job.queue_name),
                job.priority,
            )
        return breakable(job.queue_name)

    @admin.display(description="arguments")
    def arguments(self, job: Job) -> SafeString:
        # The list annotates each job with the first characters of its arguments.
        heads = getattr(job, "args_head", None), getattr(job, "kwargs_head", None)
        preview = arguments_preview(*heads)
        return format_html('<span class="dq-args" title="{}">{}</span>', preview, preview)

    @admin.display(description="attempts")
    def attempts_so_far(self, job: Job) -> int:
        return job.attempt_count

    @admin.display(description="enqueued")
    def enqueued(self, job: Job) -> SafeString | str:
        return moment(job.enqueued_at)

    @admin.display(description="finished")
    def finished(self, job: Job) -> SafeString | str:
        return moment(job.finished_at)

    @admin.display(description="scheduled for")
    def scheduled(self, job: Job) -> SafeString | str:
        return moment(job.scheduled_at)

    @admin.display(description="first started")
    def started(self, job: Job) -> SafeString | str:
        return moment(job.started_at)

    @admin.display(description="last attempt started")
    def last_attempted(self, job: Job) -> SafeString | str:
        return moment(job.last_attempted_at)

    @admin.display(description="run time")
    def ran_for(self, job: Job) -> str:
        """How long its last attempt ran: so far, while it runs."""
        if job.last_attempted_at is None or job.status not in (
            Job.Status.SUCCESSFUL,
            Job.Status.FAILED,
            Job.Status.RUNNING,
        ):
            return "-"
        end = job.finished_at or timezone.now()
        return run_time((end - job.last_attempted_at).total_seconds())

    @admin.display(description="arguments")
    def positional_arguments(self, job: Job) -> SafeString:
        return pretty_json(job.args)

    @admin.display(description="keyword arguments")
    def keyword_arguments(self, job: Job) -> SafeString:
        return pretty_json(job.kwargs)

    @admin.display(description="result")
    def result(self, job: Job) -> SafeString | str:
        return pretty_json(job.return_value) if job.status == Job.Status.SUCCESSFUL else "-"

    @admin.display(description="batch")
    def in_batch(self, job: Job) -> SafeString | str:
        batch = job.batch
        if batch is None:
            return "-"
        return format_html("{} {}", batch_link(batch), batch_progress(batch))

    @admin.display(description="chain")
    def in_chain(self, job: Job) -> SafeString | str:
        """Its step of its chain, and what it did to the chain: stopped it (the steps not
        run), or was not run because an earlier step stopped it; else the steps to come."""
        chain = job.chain
        if not chain:
            return "-"
        place = f"step {chain['step']} of {chain['steps']}"
        if "stopped_by" in chain:
            return format_html(
                "{}, not run: the chain stopped at job {}", place, job_link(chain["stopped_by"])
            )
        if chain.get("not_run"):
            return format_html(
                "{}; it stopped the chain: not run {}",
                place,
                format_html_join(", ", "{}", ((job_link(pk),) for pk in chain["not_run"])),
            )
        if chain["next"]:
            return format_html(
                "{}, then {}",
                place,
                format_html_join(
                    ", ", "{}", ((breakable(step["task"]),) for step in chain["next"])
                ),
            )
        return place

    @admin.display(description="attempts")
    def attempts_made(self, job: Job) -> str:
        text = f"{job.attempt_count} of at most {job.max_attempts}"
        if job.interruption_count:
            text += f" ({job.interruption_count} interrupted)"
        return text

    @admin.display(description="worker")
    def worker(self, job: Job) -> SafeString | str:
        """The worker running the job now, else the one that ran its last attempt."""
        if job.status == Job.Status.RUNNING:
            claim = self.claim_of(job)
            if claim is not None:
                process = Process.objects.using(self.db).filter(pk=claim.process_id).first()
                if process is not None:
                    return process_link(process.pk, process.name)
                return f"process {claim.process_id} (gone)"
        if job.attempts:
            return cast(str, job.attempts[-1]["worker_id"])  # JSON: dq writes a string
        return "-"

    @admin.display(description="running on")
    def claim(self, job: Job) -> SafeString | str:
        claim = self.claim_of(job)
        if claim is None:
            return "-"
        process = Process.objects.using(self.db).filter(pk=claim.process_id).first()
        if process is None:
            return format_html(
                "process {}, which is gone (claimed {}) {}",
                claim.process_id,
                moment(claim.claimed_at),
                alive_badge(False),
            )
        alive = is_alive(process.last_heartbeat_at, shown_config().alive_threshold, timezone.now())
        return format_html(
            "{} (pid {} on {}), claimed {}; last heartbeat {} ago {}",
            process_link(process.pk, process.name),
            process.pid,
            process.hostname,
            moment(claim.claimed_at),
            age(process.last_heartbeat_at),
            alive_badge(alive),
        )

    @admin.display(description="runs at")
    def runs_at(self, job: Job) -> SafeString | str:
        scheduled = ScheduledExecution.objects.using(self.db).filter(job_id=job.pk).first()
        return moment(scheduled.scheduled_at) if scheduled else "-"

    @admin.display(description="waiting for")
    def blocked_on(self, job: Job) -> SafeString | str:
        blocked = BlockedExecution.objects.using(self.db).filter(job_id=job.pk).first()
        if blocked is None:
            return "-"
        return format_html("{}, since {}", waiting_for(blocked), moment(blocked.created_at))

    @admin.display(description="failure")
    def failure(self, job: Job) -> SafeString | str:
        failed = FailedExecution.objects.using(self.db).filter(job_id=job.pk).first()
        if failed is None:
            return "-"
        return format_html(
            '<strong>{}</strong>: {}<br>failed {}<pre class="dq-traceback">{}</pre>',
            failed.exception_class_path,
            failed.message,
            moment(failed.failed_at),
            failed.traceback,
        )

    def claim_of(self, job: Job) -> ClaimedExecution | None:
        return ClaimedExecution.objects.using(self.db).filter(job_id=job.pk).first()

    def page_buttons(self, request: HttpRequest, obj: Job) -> list[dict[str, str]]:
        """The actions that fit the job's state, of those the user may run."""
        fitting_by_status: dict[str, list[str]] = {
            Job.Status.FAILED: ["retry_jobs", "discard_jobs"],
            Job.Status.SCHEDULED: ["run_jobs_now", "cancel_jobs", "discard_jobs"],
            Job.Status.BLOCKED: ["run_jobs_now", "cancel_jobs", "discard_jobs"],
            Job.Status.READY: ["cancel_jobs", "discard_jobs"],
            Job.Status.RUNNING: ["cancel_jobs"],
        }
        labels = {
            "retry_jobs": "Retry",
            "run_jobs_now": "Run now",
            "cancel_jobs": "Cancel",
            "discard_jobs": "Discard",
        }
        actions = self.get_actions(request, action_location=admin.ActionLocation.CHANGE_FORM)
        return [
            {"action": name, "label": labels[name]}
            for name in fitting_by_status.get(obj.status, [])
            if name in actions
        ]

    def page_context(self, request: HttpRequest, obj: Job) -> dict[str, object]:
        """Its buttons, a note on what cannot be done while it runs, its attempts."""
        actions = self.get_actions(request, action_location=admin.ActionLocation.CHANGE_FORM)
        note = None
        if obj.status == Job.Status.RUNNING and "discard_jobs" in actions:
            note = "Running on a worker: it can be retried or discarded once it has ended."
        return {
            **super().page_context(request, obj),
            "job_note": note,
            "attempt_rows": attempt_rows(obj),
        }


def attempt_rows(job: Job) -> list[dict[str, object]]:
    """The job's ended attempts, oldest first, ready for the page's history table."""
    return [
        {
            "number": number,
            "worker_id": attempt["worker_id"],
            "started_at": moment(attempt["started_at"]) if attempt["started_at"] else "-",
            "finished_at": moment(attempt["finished_at"]),
            "duration": duration(attempt["started_at"], attempt["finished_at"]),
            "error": attempt["error"],
        }
        for number, attempt in enumerate(job.attempts, start=1)
    ]
