from django.db import models

from .. import db as vendor


class Pause(models.Model):
    """A paused queue: no worker claims its jobs until the row is deleted."""

    queue_name = models.CharField(max_length=100, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "dq_pause"

    def __str__(self):
        return f"{self.queue_name} (paused)"

    @classmethod
    def pause(cls, queue_name, *, using):
        cls.objects.using(using).get_or_create(queue_name=queue_name)

    @classmethod
    def resume(cls, queue_name, *, using):
        """Resume a paused queue; idle workers see it at their next poll."""
        cls.objects.using(using).filter(queue_name=queue_name).delete()
        vendor.notify_ready(using, {queue_name})
