"""dq in the Django admin: every job's state, failures retried or discarded, queues paused
and resumed, batches and their progress, processes and their heartbeats. Nobody adds or
edits jobs by hand."""

from types import MethodType
from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from . import batches, executions, jobs, processes, queues, recurring

__all__ = ["batches", "executions", "jobs", "processes", "queues", "recurring"]

# dq's pages in the order staff use them (the admin sorts models by name): the overview
# first, then the jobs and what needs a person, then the rest.
PAGE_ORDER = [
    "Queue",
    "Job",
    "FailedExecution",
    "ClaimedExecution",
    "ScheduledExecution",
    "BlockedExecution",
    "Batch",
    "RecurringTask",
    "Process",
]


def _in_dq_order(site: admin.AdminSite) -> None:
    """Make ``site`` (the one dq registers on) list dq's pages in PAGE_ORDER, on the index
    and in the menu; other apps keep the site's own order."""
    alphabetical = site.get_app_list

    def get_app_list(
        self: admin.AdminSite, request: HttpRequest, app_label: str | None = None
    ) -> list[Any]:
        app_list = alphabetical(request, app_label)
        for app in app_list:
            if app["app_label"] == "dq":
                app["models"].sort(
                    key=lambda model: (
                        PAGE_ORDER.index(model["object_name"])
                        if model["object_name"] in PAGE_ORDER
                        else len(PAGE_ORDER)
                    )
                )
        return app_list

    site.get_app_list = MethodType(get_app_list, site)  # type: ignore[method-assign]


_in_dq_order(admin.site)
