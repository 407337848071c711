"""What every dq admin page shares: read-only, on dq's database, cheap to count, and actions
that only staff with dq's permissions can run."""

from typing import TYPE_CHECKING, Any, cast

from django.contrib import admin, messages
from django.contrib.admin import ActionLocation
from django.contrib.admin.models import CHANGE, DELETION, LogEntry
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Model, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.defaultfilters import pluralize
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.text import capfirst

from ..exceptions import TransitionNotAllowed
from ..models import BlockedExecution, FailedExecution, Job, ScheduledExecution
from ..models.paging import pk_batches
from ..stats import shown_config
from .display import state_badge

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser

BATCH_SIZE = 500  # jobs changed per transaction by an action on "all matching"
NAMED_IN_MESSAGES = 5  # jobs an action names when it could not change them

# What the user needs for each of the actions below (Job's Meta.permissions).
PERMISSIONS = {
    "view": "dq.view_job",
    "retry": "dq.retry_job",
    "discard": "dq.discard_job",
    "run_now": "dq.run_job_now",
    "cancel": "dq.cancel_job",
    "pause": "dq.pause_queue",
}

# django-stubs' ModelAdmin and Paginator are generic; Django's are not subscriptable.
if TYPE_CHECKING:
    _ModelAdmin = admin.ModelAdmin
    _Paginator = Paginator[Model]
else:

    class _ModelAdmin[ModelT: Model](admin.ModelAdmin):
        pass

    _Paginator = Paginator


class CappedCountPaginator(_Paginator):
    """Counts at most ``cap`` rows: a bounded index scan, however large the table. Beyond it
    the list says "10,000+" and the pages stop there; filters narrow it down."""

    cap = 10_000

    capped = False  # whether there are more rows than ``count`` says
    object_list: QuerySet[Model]  # the admin pages a changelist's queryset

    @cached_property
    def count(self) -> int:
        counted = self.object_list.order_by().values("pk")[: self.cap + 1].count()
        self.capped = counted > self.cap
        return min(counted, self.cap)


class DQModelAdmin[ModelT: Model](_ModelAdmin[ModelT]):
    """Read-only: nobody adds, edits or deletes dq's rows by hand. Seeing any of them takes
    ``dq.view_job``; each action takes its own permission."""

    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = CappedCountPaginator
    list_per_page = 50

    class Media:
        css = {"all": ["dq/admin.css"]}
        js = ["dq/live.js"]

    @property
    def db(self) -> str:
        return shown_config().database

    def get_queryset(self, request: HttpRequest) -> QuerySet[ModelT]:
        return super().get_queryset(request).using(self.db)

    def has_add_permission(self, request: HttpRequest, obj: ModelT | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: ModelT | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: ModelT | None = None) -> bool:
        return False

    def has_view_permission(self, request: HttpRequest, obj: ModelT | None = None) -> bool:
        return request.user.has_perm(PERMISSIONS["view"])

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(PERMISSIONS["retry"])

    def has_discard_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(PERMISSIONS["discard"])

    def has_run_now_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(PERMISSIONS["run_now"])

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(PERMISSIONS["cancel"])

    def has_pause_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(PERMISSIONS["pause"])

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        self.refuse_forbidden_action(request, ActionLocation.CHANGE_LIST)
        return super().changelist_view(request, extra_context)

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        self.refuse_forbidden_action(request, ActionLocation.CHANGE_FORM)
        return super().changeform_view(request, object_id, form_url, extra_context)

    def page_buttons(self, request: HttpRequest, obj: ModelT) -> list[dict[str, str]]:
        """The actions an object's page offers as buttons (``action``, ``label``), of those
        the user may run; the page has no drop-down of actions."""
        return []

    def page_context(self, request: HttpRequest, obj: ModelT) -> dict[str, object]:
        """What an object's page shows beside its fields: its buttons (page_buttons)."""
        return {"page_buttons": self.page_buttons(request, obj)}

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: ModelT | None = None,
    ) -> HttpResponse:
        context.update(self.page_context(request, obj) if obj is not None else {})
        context["action_form"] = None
        return super().render_change_form(request, context, add, change, form_url, obj)

    def refuse_forbidden_action(self, request: HttpRequest, location: ActionLocation) -> None:
        """403 for a POST of an action the user may not run (Django would only say "No
        action selected", or ignore it when the user may run none)."""
        if request.method != "POST":
            return
        prefix = "" if location == ActionLocation.CHANGE_LIST else f"{location.value}-"
        allowed = self.get_actions(request, action_location=location)
        for name in request.POST.getlist(f"{prefix}action"):
            guarded = getattr(getattr(type(self), name, None), "allowed_permissions", None)
            if guarded and name not in allowed:
                raise PermissionDenied


# The type checker sees the admin JobActionsMixin is mixed into; Python, a bare mixin.
if TYPE_CHECKING:
    _MixedInto = DQModelAdmin
else:

    class _MixedInto[ModelT: Model]:
        pass


class JobActionsMixin[ModelT: Model](_MixedInto[ModelT]):
    """Retry, discard and run now, on the jobs behind a changelist's rows (``jobs_of``): a
    selection, all rows matching the filters ("select all"), or one job from its page.

    Each calls the model's batch transition, one transaction per BATCH_SIZE jobs, and logs
    every job it changed in the admin log.
    """

    def jobs_of(self, queryset: QuerySet[ModelT]) -> QuerySet[Job]:
        return Job.objects.using(self.db).filter(pk__in=queryset.values("job_id"))

    @admin.action(
        description="Cancel the selected jobs (a running one is asked to stop)",
        permissions=["cancel"],
        location=[ActionLocation.CHANGE_LIST, ActionLocation.CHANGE_FORM],
    )
    def cancel_jobs(self, request: HttpRequest, queryset: QuerySet[ModelT]) -> None:
        cancellable = self.jobs_of(queryset).filter(status__in=Job.CANCELLABLE)
        cancelled: list[int] = []
        asked: list[int] = []
        for batch in pk_batches(cancellable, BATCH_SIZE):
            for job_id in batch:
                try:
                    status = Job.cancel(job_id, using=self.db)
                except (TransitionNotAllowed, Job.DoesNotExist):
                    continue  # it ended meanwhile
                (asked if status == Job.Status.RUNNING else cancelled).append(job_id)
        for done, message in ((cancelled, "Cancelled."), (asked, "Cancellation requested.")):
            self.log_jobs(request, Job.objects.using(self.db).filter(pk__in=done), CHANGE, message)
        if cancelled or asked:
            self.message_user(
                request,
                f"Cancelled {jobs_count(len(cancelled))}; asked {jobs_count(len(asked))} "
                "running to stop.",
                messages.SUCCESS,
            )
        else:
            self.message_user(
                request, "No job that can be cancelled was selected.", messages.WARNING
            )

    @admin.action(
        description="Retry the selected failed jobs",
        permissions=["retry"],
        location=[ActionLocation.CHANGE_LIST, ActionLocation.CHANGE_FORM],
    )
    def retry_jobs(self, request: HttpRequest, queryset: QuerySet[ModelT]) -> None:
        if retried := self.retry_failed(request, self.jobs_of(queryset)):
            self.message_user(request, retried_message(retried), messages.SUCCESS)
        else:
            self.message_user(request, "No failed job selected: nothing retried.", messages.WARNING)

    def retry_failed(self, request: HttpRequest, jobs: QuerySet[Job]) -> int:
        """Retry the failed ones of ``jobs`` (re-opening their batches), logging each;
        returns how many."""
        failed = FailedExecution.objects.using(self.db).filter(job_id__in=jobs.values("pk"))
        retried = 0
        for ready in FailedExecution.retry_batches(failed, batch_size=BATCH_SIZE, using=self.db):
            self.log_jobs(request, ready, CHANGE, "Retried: back to ready.")
            retried += len(ready)
        return retried

    @admin.action(
        description="Discard the selected jobs",
        permissions=["discard"],
        location=[ActionLocation.CHANGE_LIST, ActionLocation.CHANGE_FORM],
    )
    def discard_jobs(self, request: HttpRequest, queryset: QuerySet[ModelT]) -> HttpResponse | None:
        if request.POST.get("confirm") != "yes":
            return self.confirm_discard(request, queryset)
        discarded = kept = 0
        named: list[Job] = []  # the first few jobs kept, to say why
        for gone, left in Job.discard_batches(
            self.jobs_of(queryset), batch_size=BATCH_SIZE, using=self.db
        ):
            self.log_jobs(request, gone, DELETION, "Discarded.")
            discarded, kept = discarded + len(gone), kept + len(left)
            named += left[: NAMED_IN_MESSAGES - len(named)]
        if discarded:
            self.message_user(request, f"Discarded {jobs_count(discarded)}.", messages.SUCCESS)
        for job in named:
            self.message_user(request, job.why_not_discarded(), messages.WARNING)
        if kept > len(named):
            self.message_user(
                request,
                f"{capfirst(jobs_count(kept - len(named)))} more not discarded.",
                messages.WARNING,
            )
        if discarded and request.POST.get(f"{ActionLocation.CHANGE_FORM.value}-action"):
            return HttpResponseRedirect(reverse("admin:dq_job_changelist"))
        return None

    @admin.action(
        description="Run the selected scheduled or blocked jobs now",
        permissions=["run_now"],
        location=[ActionLocation.CHANGE_LIST, ActionLocation.CHANGE_FORM],
    )
    def run_jobs_now(
        self, request: HttpRequest, queryset: QuerySet[ModelT]
    ) -> TemplateResponse | None:
        selected = self.jobs_of(queryset).values("pk")
        blocked = BlockedExecution.objects.using(self.db).filter(job_id__in=selected)
        if request.POST.get("confirm") != "yes" and blocked.exists():
            return self.confirm_run_over_limit(request, blocked)
        moved = 0
        for execution, state in ((ScheduledExecution, "scheduled"), (BlockedExecution, "blocked")):
            waiting = execution.objects.using(self.db).filter(job_id__in=selected)
            # Each class gets its own rows; mypy cannot pair the two unions' members.
            for jobs in execution.run_now_batches(
                waiting,  # type: ignore[arg-type]
                batch_size=BATCH_SIZE,
                using=self.db,
            ):
                self.log_jobs(request, jobs, CHANGE, f"Run now: moved from {state} to ready.")
                moved += len(jobs)
        if moved:
            self.message_user(
                request, f"{capfirst(jobs_count(moved))} ready to run now.", messages.SUCCESS
            )
        else:
            self.message_user(
                request,
                "No scheduled or blocked job selected: nothing to run now.",
                messages.WARNING,
            )
        return None

    def confirm_discard(self, request: HttpRequest, queryset: QuerySet[ModelT]) -> TemplateResponse:
        """Deleting jobs cannot be undone: a page names what would go first."""
        jobs = self.jobs_of(queryset)
        count = jobs.order_by().values("pk")[: CappedCountPaginator.cap + 1].count()
        shown = jobs.only("task_path", "status").order_by("-pk")[:NAMED_IN_MESSAGES]
        capped = count > CappedCountPaginator.cap
        count = min(count, CappedCountPaginator.cap)
        return self.confirm(
            request,
            action_label="Discard",
            question=f"Discard {count}{'+' if capped else ''} job{pluralize(count)}? A "
            "discarded job is deleted with its attempt history, and this cannot be undone. "
            "Running and finished jobs among them are kept.",
            jobs=[(job, state_badge(job.status)) for job in shown],
            more=count - len(shown),
            capped=capped,
            confirm_label="Yes, discard",
        )

    def confirm_run_over_limit(
        self, request: HttpRequest, blocked: QuerySet[BlockedExecution]
    ) -> TemplateResponse:
        """A blocked job run now takes a slot its concurrency key does not have: it runs
        beside the jobs that hold the key's slots, over the key's limit."""
        shown = list(blocked.select_related("job").order_by("-job_id")[:NAMED_IN_MESSAGES])
        count = blocked.order_by().values("pk")[: CappedCountPaginator.cap + 1].count()
        capped = count > CappedCountPaginator.cap
        count = min(count, CappedCountPaginator.cap)
        return self.confirm(
            request,
            action_label="Run now",
            question=f"Run {count}{'+' if capped else ''} blocked job{pluralize(count)} now, "
            f"over {'its' if count == 1 else 'their'} concurrency limit? A blocked job waits "
            "for a free slot of its concurrency key; run now, it runs beside the jobs that "
            "hold the key's slots, so more of them run at once than the limit allows. "
            "Scheduled jobs among the selection run now too.",
            jobs=[
                (
                    execution.job,
                    format_html(
                        "waits for a slot of <code>{}</code> (at most {} at once)",
                        execution.concurrency_key,
                        execution.job.concurrency_limit,
                    ),
                )
                for execution in shown
            ],
            more=count - len(shown),
            capped=capped,
            confirm_label="Yes, run over the limit",
        )

    def confirm(
        self,
        request: HttpRequest,
        *,
        action_label: str,
        question: str,
        jobs: list[tuple[Job, SafeString]],
        more: int,
        capped: bool,
        confirm_label: str,
    ) -> TemplateResponse:
        """A page that asks ``question`` about ``jobs`` (with ``more`` not shown) and posts
        the same action again with ``confirm=yes``."""
        context = {
            **self.admin_site.each_context(request),
            "title": f"{action_label}?",
            "opts": self.opts,
            "action_label": action_label,
            "question": question,
            "jobs": jobs,
            "more": more,
            "capped": capped,
            "confirm_label": confirm_label,
            "resend": [
                (name, value)
                for name, values in request.POST.lists()
                if name != "csrfmiddlewaretoken"
                for value in values
            ],
            "back_url": request.get_full_path(),
            "media": self.media,
        }
        return TemplateResponse(request, "admin/dq/action_confirmation.html", context)

    def log_jobs(
        self,
        request: HttpRequest,
        jobs: QuerySet[Job] | list[Job],
        action_flag: int,
        message: str,
    ) -> None:
        if jobs:
            LogEntry.objects.log_actions(
                user_id=cast("AbstractBaseUser", request.user).pk,  # admin: logged-in staff
                queryset=jobs,
                action_flag=action_flag,
                change_message=message,
            )


def jobs_count(count: int) -> str:
    return f"{count} job" if count == 1 else f"{count} jobs"


def retried_message(count: int) -> str:
    return f"Retried {jobs_count(count)}: ready to run again."
