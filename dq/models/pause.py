from django.db import models


class Pause(models.Model):
    """A paused queue: no worker claims its jobs until the row is deleted."""

    queue_name = models.CharField(max_length=100, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "dq_pause"

    def __str__(self):
        return f"{self.queue_name} (paused)"
