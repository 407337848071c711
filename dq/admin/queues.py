"""The queues overview (the admin index's "Queues"): per queue, jobs in each state, paused
or not, the oldest ready job, jobs ended per minute over the last hour; and processes.
Pausing and resuming a queue happen here."""

from typing import TYPE_CHECKING, cast
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.contrib.admin.models import ADDITION, DELETION, LogEntry
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from ..models import Pause
from ..models.pause import Queue
from ..stats import (
    RUNNING_SHOWN,
    STATES,
    is_alive,
    processes_with_claims,
    queue_summaries,
    shown_config,
    total_activity,
)
from .base import DQModelAdmin
from .charts import activity_svg

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser

# django-stubs allow None (a CharField may have no max_length); queue_name's is 100.
QUEUE_NAME_MAX_LENGTH = cast(int, Pause._meta.get_field("queue_name").max_length)


@admin.register(Queue)
class QueueAdmin(DQModelAdmin[Queue]):
    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [
            path("", view(self.overview_view), name="dq_queue_changelist"),
            path("pause/", view(require_POST(self.pause_view)), name="dq_queue_pause"),
            path("resume/", view(require_POST(self.resume_view)), name="dq_queue_resume"),
        ]

    def overview_view(self, request: HttpRequest) -> TemplateResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        now = timezone.now()
        config = shown_config()
        queues = queue_summaries(using=self.db, now=now)
        jobs_url = reverse("admin:dq_job_changelist")
        rows = []
        for queue in queues:
            rows.append(
                {
                    "queue": queue,
                    "url": f"{jobs_url}?{urlencode({'queue': queue.name})}",
                    "cells": [
                        {
                            "count": queue.counts[state.name],
                            "more": state.name in queue.capped,
                            "url": jobs_url
                            + "?"
                            + urlencode({"state": state.name, "queue": queue.name}),
                        }
                        for state in STATES
                    ],
                    "oldest_ready_age": queue.oldest_ready_age(now),
                    "sparkline": activity_svg(queue.activity, width=120, height=28, axis=False),
                    "finished_last_hour": sum(minute.finished for minute in queue.activity),
                    "failed_last_hour": sum(minute.failed for minute in queue.activity),
                }
            )
        processes = [
            {
                "process": process,
                "alive": is_alive(process.last_heartbeat_at, config.alive_threshold, now),
                "claims": process.claims.all()[:RUNNING_SHOWN],
                "more": max(0, len(process.claims.all()) - RUNNING_SHOWN),
            }
            for process in processes_with_claims(using=self.db)
        ]
        context = {
            **self.admin_site.each_context(request),
            "title": "Queues",
            "opts": self.opts,
            "states": STATES,
            "rows": rows,
            "totals": [
                {
                    "count": sum(queue.counts[state.name] for queue in queues),
                    "more": any(state.name in queue.capped for queue in queues),
                }
                for state in STATES
            ],
            "chart": activity_svg(total_activity({q.name: q.activity for q in queues}, now)),
            "processes": processes,
            "alive_threshold": config.alive_threshold,
            "can_pause": self.has_pause_permission(request),
            "now": now,
            "media": self.media,
        }
        return TemplateResponse(request, "admin/dq/queue/overview.html", context)

    def pause_view(self, request: HttpRequest) -> HttpResponseRedirect:
        queue_name = self.queue_name_from(request)
        if queue_name is None:
            return HttpResponseRedirect(reverse("admin:dq_queue_changelist"))
        pause = Pause.pause(queue_name, using=self.db)
        self.log_queue(request, pause, ADDITION, f"Paused queue {queue_name}.")
        self.message_user(
            request,
            f"Queue {queue_name} is paused: no worker claims its jobs until it is resumed.",
            messages.SUCCESS,
        )
        return HttpResponseRedirect(reverse("admin:dq_queue_changelist"))

    def resume_view(self, request: HttpRequest) -> HttpResponseRedirect:
        queue_name = self.queue_name_from(request)
        if queue_name is not None:
            pause = Pause.objects.using(self.db).filter(queue_name=queue_name).first()
            if pause is None:
                self.message_user(request, f"Queue {queue_name} is not paused.", messages.WARNING)
            else:
                Pause.resume(queue_name, using=self.db)
                self.log_queue(request, pause, DELETION, f"Resumed queue {queue_name}.")
                self.message_user(request, f"Queue {queue_name} is resumed.", messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:dq_queue_changelist"))

    def queue_name_from(self, request: HttpRequest) -> str | None:
        if not self.has_pause_permission(request):
            raise PermissionDenied
        name = request.POST.get("queue", "").strip()
        if not name or len(name) > QUEUE_NAME_MAX_LENGTH:
            self.message_user(
                request,
                f"A queue name is 1 to {QUEUE_NAME_MAX_LENGTH} characters long.",
                messages.ERROR,
            )
            return None
        return name

    def log_queue(self, request: HttpRequest, pause: Pause, action_flag: int, message: str) -> None:
        LogEntry.objects.log_actions(
            user_id=cast("AbstractBaseUser", request.user).pk,  # admin: logged-in staff
            queryset=[pause],
            action_flag=action_flag,
            change_message=message,
            single_object=True,
        )
