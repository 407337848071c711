"""What the queues overview and ``dq_status`` show, read in a few bounded queries: jobs per
queue and state, the oldest ready job, jobs ended per minute, processes and their heartbeats.

Nothing here scans the whole jobs table: counts of finished jobs are capped, and the lists
of queue and task names come from the jobs in flight and the latest jobs.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count, Min, Prefetch, QuerySet
from django.tasks import DEFAULT_TASK_BACKEND_ALIAS
from django.utils import timezone

from . import conf
from .db import database
from .models import ClaimedExecution, Job, Pause, Process, ReadyExecution


@dataclass(frozen=True, slots=True)
class State:
    """A state a job can be in, as the admin names it (``?state=name``). Jobs of an open
    state are still in the queue and counted exactly (bounded by the work in flight); those
    of a closed state pile up, so their counts are capped."""

    name: str
    label: str
    status: str
    open: bool = True


STATES = (
    State("ready", "Ready", Job.Status.READY),
    State("scheduled", "Scheduled", Job.Status.SCHEDULED),
    State("blocked", "Blocked", Job.Status.BLOCKED),
    State("running", "Running", Job.Status.RUNNING),
    State("failed", "Failed", Job.Status.FAILED),
    State("finished", "Finished", Job.Status.SUCCESSFUL, open=False),
    State("cancelled", "Cancelled", Job.Status.CANCELLED, open=False),
)
STATE_BY_NAME = {state.name: state for state in STATES}
STATE_BY_STATUS = {state.status: state for state in STATES}
OPEN_STATES = tuple(state for state in STATES if state.open)
CLOSED_STATES = tuple(state for state in STATES if not state.open)

CLOSED_COUNT_CAP = 10_000  # jobs counted per queue in a closed state
RECENT_JOBS = 1_000  # the latest jobs whose queue and task names the filters offer
RUNNING_SHOWN = 5  # jobs named per process as "running now"; the rest are counted
ACTIVITY_MINUTES = 60


def backend_alias() -> str:
    """The dq backend the admin and ``dq_status`` show: the default task backend if it is
    dq's, else the first dq backend in TASKS."""
    aliases = sorted(settings.TASKS, key=lambda alias: alias != DEFAULT_TASK_BACKEND_ALIAS)
    return next(
        (alias for alias in aliases if conf.is_dq_backend(alias)), DEFAULT_TASK_BACKEND_ALIAS
    )


def shown_config() -> conf.Configuration:
    """The Configuration of the backend the admin and ``dq_status`` show (its database,
    alive threshold)."""
    return conf.load(backend_alias())


@dataclass(slots=True)
class Minute:
    start: datetime  # aware
    finished: int = 0
    failed: int = 0


@dataclass(slots=True)
class QueueSummary:
    name: str
    counts: dict[str, int] = field(default_factory=dict)  # state name -> jobs
    capped: set[str] = field(default_factory=set)  # states with more jobs than CLOSED_COUNT_CAP
    paused: bool = False
    oldest_ready_at: datetime | None = None
    activity: list[Minute] = field(default_factory=list)  # Minute per minute of the last hour

    def oldest_ready_age(self, now: datetime) -> timedelta | None:
        return None if self.oldest_ready_at is None else now - self.oldest_ready_at


def activity_minutes(now: datetime) -> list[datetime]:
    """The starts of the last ACTIVITY_MINUTES minutes, oldest first, the current one last."""
    current = now.replace(second=0, microsecond=0)
    return [current - timedelta(minutes=ACTIVITY_MINUTES - 1 - i) for i in range(ACTIVITY_MINUTES)]


def activity(*, using: str, now: datetime) -> dict[str, list[Minute]]:
    """Jobs finished and failed per minute over the last hour: {queue: [Minute, ...]}."""
    starts = activity_minutes(now)
    ended = database(using).ended_per_minute(starts[0])
    per_queue: dict[str, dict[datetime, Minute]] = {}
    for queue, status, minute, jobs in ended:
        minutes = per_queue.setdefault(queue, {start: Minute(start) for start in starts})
        bucket = minutes.get(minute)
        if bucket is None:
            continue  # finished "in the future": a clock ahead of ours
        if status == Job.Status.SUCCESSFUL:
            bucket.finished += jobs
        else:
            bucket.failed += jobs
    return {queue: list(minutes.values()) for queue, minutes in per_queue.items()}


def total_activity(per_queue: Mapping[str, Iterable[Minute]], now: datetime) -> list[Minute]:
    """The per-minute activity of all queues together."""
    minutes = [Minute(start) for start in activity_minutes(now)]
    for queue_minutes in per_queue.values():
        for total, minute in zip(minutes, queue_minutes, strict=True):
            total.finished += minute.finished
            total.failed += minute.failed
    return minutes


def known_queues(*, using: str) -> list[str]:
    """Queue names worth offering: those with jobs in an open state (waiting, running or
    failed), paused ones, and those of the latest jobs."""
    names = set(
        Job.objects.using(using)
        .filter(status__in=[state.status for state in OPEN_STATES])
        .values_list("queue_name", flat=True)
        .distinct()
        .order_by()
    )
    names.update(Pause.objects.using(using).values_list("queue_name", flat=True))
    names.update(
        Job.objects.using(using).order_by("-pk").values_list("queue_name", flat=True)[:RECENT_JOBS]
    )
    return sorted(names)


def recent_tasks(*, using: str) -> list[str]:
    """Task paths of the latest jobs, sorted."""
    latest = Job.objects.using(using).order_by("-pk").values_list("task_path", flat=True)
    return sorted(set(latest[:RECENT_JOBS]))


def queue_summaries(*, using: str, now: datetime | None = None) -> list[QueueSummary]:
    """One QueueSummary per known queue, by name."""
    now = now or timezone.now()
    counts = open_counts(using=using)
    per_minute = activity(using=using, now=now)
    paused = set(Pause.objects.using(using).values_list("queue_name", flat=True))
    oldest_ready = oldest_ready_times(using=using)
    names = set(known_queues(using=using)) | set(per_minute)
    queues = {name: QueueSummary(name) for name in sorted(names)}
    for queue in queues.values():
        queue.counts = {state.name: 0 for state in STATES}
        queue.paused = queue.name in paused
        queue.oldest_ready_at = oldest_ready.get(queue.name)
        queue.activity = per_minute.get(queue.name) or [
            Minute(start) for start in activity_minutes(now)
        ]
        for state in CLOSED_STATES:
            counted = (
                Job.objects.using(using)
                .filter(status=state.status, queue_name=queue.name)
                .values("pk")[: CLOSED_COUNT_CAP + 1]
                .count()
            )
            queue.counts[state.name] = min(counted, CLOSED_COUNT_CAP)
            if counted > CLOSED_COUNT_CAP:
                queue.capped.add(state.name)
    for (name, state_name), jobs in counts.items():
        queues[name].counts[state_name] = jobs
    return list(queues.values())


def open_counts(*, using: str) -> dict[tuple[str, str], int]:
    """Jobs in an open state per (queue, state name), in one query bounded by the work in
    flight; pairs without jobs are left out."""
    counts = (
        Job.objects.using(using)
        .filter(status__in=[state.status for state in OPEN_STATES])
        .values_list("queue_name", "status")
        .annotate(jobs=Count("pk"))
        .order_by()
    )
    return {(queue, STATE_BY_STATUS[status].name): jobs for queue, status, jobs in counts}


def oldest_ready_times(*, using: str) -> dict[str, datetime]:
    """When the oldest ready job of each queue with ready jobs became ready."""
    return dict(
        ReadyExecution.objects.using(using)
        .values_list("queue_name")
        .annotate(oldest=Min("created_at"))
        .order_by()
    )


def live_process_counts(*, using: str, alive_threshold: float) -> dict[str, int]:
    """Processes per kind whose heartbeat is at most ``alive_threshold`` seconds old."""
    since = timezone.now() - timedelta(seconds=alive_threshold)
    return dict(
        Process.objects.using(using)
        .filter(last_heartbeat_at__gte=since)
        .values_list("kind")
        .annotate(processes=Count("pk"))
        .order_by()
    )


def is_alive(last_heartbeat_at: datetime | None, alive_threshold: float, now: datetime) -> bool:
    return last_heartbeat_at is not None and (now - last_heartbeat_at).total_seconds() <= (
        alive_threshold
    )


def processes_with_claims(*, using: str) -> QuerySet[Process]:
    """Every process, with ``claims`` (their jobs loaded) prefetched: what each one runs."""
    claims = (
        ClaimedExecution.objects.using(using)
        .select_related("job")
        .only("process_id", "claimed_at", "job__task_path", "job__queue_name")
        .order_by("claimed_at")
    )
    return (
        Process.objects.using(using)
        .prefetch_related(Prefetch("claims", queryset=claims))
        .order_by("hostname", "pid")
    )
