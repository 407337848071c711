from datetime import timedelta

from django.db import IntegrityError, models
from django.db.models import F
from django.utils import timezone

from .. import db as vendor


class Semaphore(models.Model):
    """The free slots of one concurrency key: at most ``limit`` of its jobs ready or running."""

    key = models.CharField(max_length=255, unique=True)
    value = models.IntegerField()  # slots free now
    limit = models.PositiveIntegerField()
    duration = models.FloatField()  # seconds a slot may be held before it is recounted
    # After this, the slots are recounted from the jobs that really hold them (a slot held
    # by a job that vanished is reclaimed).
    expires_at = models.DateTimeField()

    class Meta:
        db_table = "dq_semaphore"
        indexes = [models.Index(fields=["expires_at"], name="dq_semaphore_expiry")]

    def __str__(self):
        return f"{self.key}: {self.value} of {self.limit} free"

    @classmethod
    def acquire(cls, key, limit, duration, *, using):
        """Take a slot of ``key`` in the current transaction. False if none is free."""
        expires_at = timezone.now() + timedelta(seconds=duration)
        semaphores = cls.objects.using(using).filter(key=key, value__gt=0)
        taken = {"value": F("value") - 1, "expires_at": expires_at, "duration": duration}
        if semaphores.update(**taken):
            return True
        # None looked free. Lock the row before saying so: a release committing now is
        # waited for (and its slot taken), and a later one waits for this transaction, so
        # that it sees the blocked job this one inserts (else that job waits for expiry).
        if cls.objects.using(using).select_for_update().filter(key=key).values_list("pk"):
            return bool(semaphores.update(**taken))
        try:
            with vendor.atomic(using):
                cls.objects.using(using).create(
                    key=key, value=limit - 1, limit=limit, duration=duration, expires_at=expires_at
                )
            return True
        except IntegrityError:
            # Someone created it meanwhile: it is committed now, so try its slots once more.
            return bool(semaphores.update(**taken))

    @classmethod
    def take_over_limit(cls, key, *, using):
        """Take a slot of ``key`` even if none is free; the next release pays it back."""
        cls.objects.using(using).filter(key=key).update(value=F("value") - 1)

    @classmethod
    def release(cls, key, *, using):
        """Give back a slot of ``key``, then let the next blocked job of that key take it."""
        from .blocked import BlockedExecution

        cls.objects.using(using).filter(key=key, value__lt=F("limit")).update(value=F("value") + 1)
        BlockedExecution.release_next(key, using=using)

    @classmethod
    def reclaim_expired(cls, *, using):
        """Recount the slots of expired semaphores from the jobs that hold them (ready or
        running), and release blocked jobs into what is free. Returns the jobs released."""
        from .blocked import BlockedExecution
        from .job import Job

        released = 0
        now = timezone.now()
        for key in (
            cls.objects.using(using).filter(expires_at__lt=now).values_list("key", flat=True)
        ):
            with vendor.atomic(using):
                semaphore = cls.objects.using(using).select_for_update().filter(key=key).first()
                if semaphore is None or semaphore.expires_at >= now:
                    continue
                holders = (
                    Job.objects.using(using)
                    .filter(concurrency_key=key, status__in=[Job.Status.READY, Job.Status.RUNNING])
                    .count()
                )
                if (
                    not holders
                    and not BlockedExecution.objects.using(using)
                    .filter(concurrency_key=key)
                    .exists()
                ):
                    semaphore.delete(using=using)
                    continue
                semaphore.value = max(0, semaphore.limit - holders)
                semaphore.expires_at = now + timedelta(seconds=semaphore.duration)
                semaphore.save(using=using, update_fields=["value", "expires_at"])
                while BlockedExecution.release_next(key, using=using):
                    released += 1
        return released
