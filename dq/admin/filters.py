"""List filters that stay cheap on a million jobs: their choices come from bounded queries,
and each filter matches an index of the jobs table."""

from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

from django.contrib import admin
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.utils import timezone

from ..models import Batch, Job
from ..stats import RECENT_JOBS, STATE_BY_NAME, STATES, known_queues, recent_tasks, shown_config

if TYPE_CHECKING:
    from .base import DQModelAdmin


class StateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(
        self, request: HttpRequest, model_admin: "admin.ModelAdmin[Any]"
    ) -> list[tuple[str, str]]:
        return [(state.name, state.label) for state in STATES]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        state = STATE_BY_NAME.get(self.value() or "")  # no choice ("") names no state
        return queryset.filter(status=state.status) if state else queryset


class QueueFilter(admin.SimpleListFilter):
    title = "queue"
    parameter_name = "queue"
    lookup = "queue_name"

    def lookups(
        self, request: HttpRequest, model_admin: "admin.ModelAdmin[Any]"
    ) -> list[tuple[str, str]]:
        # dq's filters are only on dq's admins.
        names = known_queues(using=cast("DQModelAdmin[Any]", model_admin).db)
        if (value := self.value()) and value not in names:
            names.append(value)
        return [(name, name) for name in names]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(**{self.lookup: self.value()}) if self.value() else queryset


class JobQueueFilter(QueueFilter):
    """The queue of an execution's job."""

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if not self.value():
            return queryset
        # Naming the jobs' status lets the jobs' (status, queue_name) index find them.
        return queryset.filter(job__queue_name=self.value(), job__status=queryset.model.status)


class TaskFilter(admin.SimpleListFilter):
    """Tasks of the latest jobs; any task path works in the URL (``?task=...``)."""

    title = "task"
    parameter_name = "task"
    lookup = "task_path"

    def lookups(
        self, request: HttpRequest, model_admin: "admin.ModelAdmin[Any]"
    ) -> list[tuple[str, str]]:
        # dq's filters are only on dq's admins.
        paths = recent_tasks(using=cast("DQModelAdmin[Any]", model_admin).db)
        if (value := self.value()) and value not in paths:
            paths.append(value)
        return [(path, path) for path in paths]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(**{self.lookup: self.value()}) if self.value() else queryset


class JobTaskFilter(TaskFilter):
    lookup = "job__task_path"


class YesNoFilter(admin.SimpleListFilter):
    """Yes: the rows matching ``yes``; no: those matching ``no``."""

    yes_label = "Yes"
    no_label = "No"
    yes = Q()
    no = Q()

    def lookups(
        self, request: HttpRequest, model_admin: "admin.ModelAdmin[Any]"
    ) -> list[tuple[str, str]]:
        return [("yes", self.yes_label), ("no", self.no_label)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        condition = {"yes": self.yes, "no": self.no}.get(self.value() or "")
        return queryset.filter(condition) if condition is not None else queryset


class RetriedFilter(YesNoFilter):
    title = "retried"
    parameter_name = "retried"
    yes_label = "Yes: more than one attempt"
    yes = Q(attempt_count__gt=1)
    no = Q(attempt_count__lte=1)


class BatchFilter(admin.SimpleListFilter):
    """Batches of the latest jobs; any batch id works in the URL (``?batch=...``), as the
    links of a batch's page have it."""

    title = "batch"
    parameter_name = "batch"

    def lookups(
        self, request: HttpRequest, model_admin: "admin.ModelAdmin[Any]"
    ) -> list[tuple[str, str]]:
        using = cast("DQModelAdmin[Any]", model_admin).db  # dq's filters are only on dq's admins
        latest = Job.objects.using(using).order_by("-pk").values_list("batch_id", flat=True)
        ids = {batch_id for batch_id in latest[:RECENT_JOBS] if batch_id is not None}
        if value := self.value():
            ids.add(value)
        named = {batch.pk: str(batch) for batch in Batch.objects.using(using).filter(pk__in=ids)}
        return sorted(((pk, named.get(pk, f"batch {pk}")) for pk in ids), key=lambda c: c[1])

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(batch_id=self.value()) if self.value() else queryset


class FinishedFilter(YesNoFilter):
    """Batches whose jobs have all ended, or not (dq_batch_finished_at)."""

    title = "finished"
    parameter_name = "finished"
    yes_label = "Yes: every job ended"
    no_label = "No: jobs pending"
    yes = Q(finished_at__isnull=False)
    no = Q(finished_at__isnull=True)


class HeartbeatFilter(admin.SimpleListFilter):
    """Alive or stale, by the alive threshold of dq's settings. ``heartbeat_at`` is the
    process's last heartbeat (annotated where the process is a relation)."""

    title = "heartbeat"
    parameter_name = "heartbeat"
    field = "last_heartbeat_at"

    def lookups(
        self, request: HttpRequest, model_admin: "admin.ModelAdmin[Any]"
    ) -> list[tuple[str, str]]:
        return [("alive", "Alive"), ("stale", "Stale")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() not in ("alive", "stale"):
            return queryset
        cutoff = timezone.now() - timedelta(seconds=shown_config().alive_threshold)
        if self.value() == "alive":
            return queryset.filter(**{f"{self.field}__gte": cutoff})
        return queryset.filter(
            Q(**{f"{self.field}__lt": cutoff}) | Q(**{f"{self.field}__isnull": True})
        )


class ClaimHeartbeatFilter(HeartbeatFilter):
    field = "heartbeat_at"
