"""Processes: kind, host, pid, heartbeat, alive or stale, and what each worker runs now."""

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from ..models import Process
from ..stats import RUNNING_SHOWN, is_alive, processes_with_claims, shown_config
from .base import DQModelAdmin
from .display import age, alive_badge, job_link, moment
from .filters import HeartbeatFilter


@admin.register(Process)
class ProcessAdmin(DQModelAdmin[Process]):
    list_display = ["name", "kind", "hostname", "pid", "heartbeat", "running", "settings"]
    list_filter = [HeartbeatFilter, "kind", "hostname"]
    search_fields = ["name", "hostname", "=pid"]
    ordering = ["hostname", "pid"]
    fields = [
        "name",
        "kind",
        "hostname",
        "pid",
        "supervisor_name",
        "created_at",
        "heartbeat",
        "running",
        "settings",
    ]
    readonly_fields = ["supervisor_name", "heartbeat", "running", "settings"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Process]:
        return processes_with_claims(using=self.db)

    @admin.display(description="heartbeat", ordering="last_heartbeat_at")
    def heartbeat(self, process: Process) -> SafeString:
        alive = is_alive(process.last_heartbeat_at, shown_config().alive_threshold, timezone.now())
        return format_html("{} ago {}", age(process.last_heartbeat_at), alive_badge(alive))

    @admin.display(description="running now")
    def running(self, process: Process) -> SafeString | str:
        claims = process.claims.all()
        if not claims:
            return "-"
        shown = format_html_join(
            mark_safe("<br>"),  # a constant: the rows themselves are escaped
            "{} {} on {}, claimed {}",
            (
                (
                    job_link(claim.job_id),
                    claim.job.task_path,
                    claim.job.queue_name,
                    moment(claim.claimed_at),
                )
                for claim in claims[:RUNNING_SHOWN]
            ),
        )
        if len(claims) > RUNNING_SHOWN:
            return format_html("{}<br>and {} more", shown, len(claims) - RUNNING_SHOWN)
        return shown

    @admin.display(description="settings")
    def settings(self, process: Process) -> str:
        return (
            "; ".join(
                f"{key}: {', '.join(map(str, value)) if isinstance(value, list) else value}"
                for key, value in sorted(process.metadata.items())
            )
            or "-"
        )

    @admin.display(description="supervisor")
    def supervisor_name(self, process: Process) -> str:
        if process.supervisor_id is None:
            return "-"
        supervisor = Process.objects.using(self.db).filter(pk=process.supervisor_id).first()
        return str(supervisor) if supervisor else f"process {process.supervisor_id} (gone)"
