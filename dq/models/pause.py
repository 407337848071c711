from typing import Self

from django.db import models

from ..db import database
from .fields import ExactCharField


class Pause(models.Model):
    """A paused queue: no worker claims its jobs until the row is deleted."""

    queue_name = ExactCharField(max_length=100, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "dq_pause"

    def __str__(self) -> str:
        return f"{self.queue_name} (paused)"

    @classmethod
    def pause(cls, queue_name: str, *, using: str) -> Self:
        """Pause a queue (pausing a paused queue changes nothing); returns its Pause row."""
        return cls.objects.using(using).get_or_create(queue_name=queue_name)[0]

    @classmethod
    def resume(cls, queue_name: str, *, using: str) -> None:
        """Resume a paused queue; idle workers see it at their next poll."""
        cls.objects.using(using).filter(queue_name=queue_name).delete()
        database(using).notify_ready({queue_name})


class Queue(Pause):
    """The queues overview's entry in the admin. No table of its own: a queue is a name on
    jobs, and only a paused one has a row (its Pause)."""

    class Meta:
        proxy = True
        verbose_name = "queue"
        default_permissions = ()
