import time
from datetime import timedelta
from typing import Any

from django.utils import timezone

from ..conf import DEFAULT_PRUNE_BATCH_SIZE, Configuration
from ..models import Batch, BlockedExecution, Job, Process, RecurringExecution, ScheduledExecution
from .base import Role


class Dispatcher(Role):
    """Moves scheduled jobs that are due (deferred, or backing off) to ready, in batches;
    and, every maintenance interval, recounts expired concurrency slots and prunes
    finished jobs."""

    kind = Process.Kind.DISPATCHER

    def __init__(self, config: Configuration, **kwargs: int) -> None:
        super().__init__(config, **kwargs)
        self.next_maintenance = 0.0

    def metadata(self) -> dict[str, Any]:
        return {"batch_size": self.config.dispatcher.batch_size}

    def poll(self) -> float:
        if time.monotonic() >= self.next_maintenance:
            self.maintain()
            self.next_maintenance = time.monotonic() + self.config.maintenance_interval
        batch_size = self.config.dispatcher.batch_size
        interval = self.config.dispatcher.polling_interval
        if ScheduledExecution.dispatch_due(batch_size, using=self.database) == batch_size:
            return 0
        next_due_at = ScheduledExecution.next_due_at(using=self.database)
        if next_due_at is None:
            return interval
        return min(interval, max(0.0, (next_due_at - timezone.now()).total_seconds()))

    def maintain(self) -> None:
        BlockedExecution.reclaim_expired_slots(using=self.database)
        now = timezone.now()
        if self.config.keep_finished is not None:
            RecurringExecution.objects.using(self.database).filter(
                run_at__lt=now - timedelta(seconds=self.config.keep_finished)
            ).delete()
        for statuses, keep in (
            ([Job.Status.SUCCESSFUL, Job.Status.CANCELLED], self.config.keep_finished),
            ([Job.Status.FAILED], self.config.keep_failed),
        ):
            if keep is not None:
                Batch.prune(
                    backend=self.config.backend,
                    finished_before=now - timedelta(seconds=keep),
                    failed=Job.Status.FAILED in statuses,
                    using=self.database,
                )
                Job.prune(
                    backend=self.config.backend,
                    finished_before=now - timedelta(seconds=keep),
                    statuses=statuses,
                    batch_size=DEFAULT_PRUNE_BATCH_SIZE,
                    using=self.database,
                )
