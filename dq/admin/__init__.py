"""Read-only views of dq's tables; nobody adds or edits jobs by hand."""

from django.contrib import admin

from ..models import FailedExecution, Job, Pause, Process


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Job)
class JobAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "task_path",
        "queue_name",
        "priority",
        "status",
        "attempt_count",
        "enqueued_at",
        "finished_at",
    ]
    list_filter = ["status", "queue_name"]
    search_fields = ["=id", "task_path"]
    ordering = ["-id"]
    show_full_result_count = False


@admin.register(FailedExecution)
class FailedExecutionAdmin(ReadOnlyAdmin):
    list_display = ["job", "exception_class_path", "message", "failed_at"]
    list_select_related = ["job"]
    ordering = ["-id"]


@admin.register(Process)
class ProcessAdmin(ReadOnlyAdmin):
    list_display = ["name", "kind", "hostname", "pid", "last_heartbeat_at"]
    list_filter = ["kind", "hostname"]


@admin.register(Pause)
class PauseAdmin(admin.ModelAdmin):
    list_display = ["queue_name", "created_at"]
