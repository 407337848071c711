from django.utils import timezone

from ..models import Process, ScheduledExecution
from .base import Role


class Dispatcher(Role):
    """Moves scheduled jobs that are due (deferred, or backing off) to ready, in batches."""

    kind = Process.Kind.DISPATCHER

    def metadata(self):
        return {"batch_size": self.config.dispatcher.batch_size}

    def poll(self):
        batch_size = self.config.dispatcher.batch_size
        interval = self.config.dispatcher.polling_interval
        if ScheduledExecution.dispatch_due(batch_size, using=self.database) == batch_size:
            return 0
        next_due_at = ScheduledExecution.next_due_at(using=self.database)
        if next_due_at is None:
            return interval
        return min(interval, max(0.0, (next_due_at - timezone.now()).total_seconds()))
