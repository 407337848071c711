import os
import secrets
import socket
from collections.abc import Collection
from datetime import timedelta
from pathlib import Path
from typing import Any, Self

from django.db import models
from django.db.models import Exists, OuterRef
from django.db.models.functions import Now

from ..db import database
from ..exceptions import ProcessMissingError, ProcessPrunedError
from .claimed import ClaimedExecution
from .fields import ExactCharField


def process_start_ticks(pid: int) -> int | None:
    """When process ``pid`` of this host started, in clock ticks after boot (Linux's
    /proc/PID/stat), or None: no such process, a zombie, or no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after the name, which may hold ")"
    if fields[0] == "Z":
        return None
    return int(fields[19])  # the 22nd field, starttime


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Process(models.Model):
    """A running dq process, known by its heartbeat."""

    class Kind(models.TextChoices):
        SUPERVISOR = "supervisor"
        WORKER = "worker"
        DISPATCHER = "dispatcher"
        SCHEDULER = "scheduler"

    kind = models.CharField(max_length=20, choices=Kind)
    name = ExactCharField(max_length=100, unique=True)
    pid = models.IntegerField()
    # When ``pid`` started (process_start_ticks): a later process given the same pid has
    # another. None where the host has no /proc.
    pid_start_ticks = models.BigIntegerField(null=True, blank=True)
    hostname = models.CharField(max_length=255)
    supervisor = models.ForeignKey(
        "self",
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        null=True,
        blank=True,
        related_name="supervisees",
    )
    metadata = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)
    last_heartbeat_at = models.DateTimeField()

    class Meta:
        db_table = "dq_process"
        verbose_name_plural = "processes"
        indexes = [models.Index(fields=["last_heartbeat_at"], name="dq_process_heartbeat")]

    def __str__(self) -> str:
        return f"{self.name} (pid {self.pid} on {self.hostname})"

    @classmethod
    def register(
        cls,
        kind: str,
        *,
        supervisor: Self | None = None,
        metadata: dict[str, Any] | None = None,
        using: str,
    ) -> Self:
        return cls.objects.using(using).create(
            kind=kind,
            name=f"{kind}-{secrets.token_hex(6)}",
            pid=os.getpid(),
            pid_start_ticks=process_start_ticks(os.getpid()),
            hostname=socket.gethostname(),
            supervisor=supervisor,
            metadata=metadata or {},
            last_heartbeat_at=database(using).now(),
        )

    def heartbeat(self, *, using: str) -> bool:
        """Record that the process is alive. False if its row is gone (it was pruned)."""
        updated = type(self).objects.using(using).filter(pk=self.pk).update(last_heartbeat_at=Now())
        return updated == 1

    def runs_here(self) -> bool:
        """Whether this process is running on this host now: its pid is alive, and is the
        process that registered (not a later one given the same pid)."""
        if self.hostname != socket.gethostname():
            return False
        if self.pid_start_ticks is None:
            return pid_alive(self.pid)
        return process_start_ticks(self.pid) == self.pid_start_ticks

    def deregister(
        self,
        exception_class: type[BaseException],
        message: str,
        *,
        running: Collection[int] = (),
        using: str,
    ) -> None:
        """End the claims this process still holds (those of runs that started, its claim
        ids in ``running`` included, are interrupted; the others go back to ready), then
        delete it."""
        ClaimedExecution.interrupt(
            ClaimedExecution.objects.filter(process_id=self.pk),
            exception_class,
            message,
            running=running,
            using=using,
        )
        type(self).objects.using(using).filter(pk=self.pk).delete()

    @classmethod
    def prune(
        cls, alive_threshold: float, *, supervisor: Self | None = None, using: str
    ) -> list[Self]:
        """Deregister processes of any host whose heartbeat is older than ``alive_threshold``
        seconds, interrupting their jobs; not ``supervisor`` nor its children, which it
        reaps itself, nor a process seen running on this host (its heartbeat is late: the
        database was busy). Returns the processes pruned."""
        cutoff = database(using).now() - timedelta(seconds=alive_threshold)
        stale = cls.objects.using(using).filter(last_heartbeat_at__lt=cutoff)
        if supervisor is not None:
            stale = stale.exclude(pk=supervisor.pk).exclude(supervisor=supervisor)
        pruned = [process for process in stale if not process.runs_here()]
        for process in pruned:
            process.deregister(
                ProcessPrunedError,
                f"{process} sent no heartbeat since {process.last_heartbeat_at.isoformat()}",
                using=using,
            )
        return pruned

    @classmethod
    def recover_orphaned_claims(cls, *, running: Collection[int] = (), using: str) -> int:
        """Interrupt claims whose process row no longer exists (those in ``running`` as runs
        that started, see ClaimedExecution.interrupt). Returns how many."""
        orphaned = ClaimedExecution.objects.filter(
            ~Exists(cls.objects.using(using).filter(pk=OuterRef("process_id")))
        )
        return ClaimedExecution.interrupt(
            orphaned,
            ProcessMissingError,
            "the process that claimed the job is gone",
            running=running,
            using=using,
        )
