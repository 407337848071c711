from datetime import timedelta

from django.db import IntegrityError, models
from django.db.models import F
from django.utils import timezone

from ..db import database
from .fields import ExactCharField


class Semaphore(models.Model):
    """The free slots of one concurrency key: at most ``limit`` of its jobs ready or running."""

    key = ExactCharField(max_length=255, unique=True)
    value = models.IntegerField()  # slots free now
    limit = models.PositiveIntegerField()
    duration = models.FloatField()  # seconds a slot may be held before it is recounted
    # After this, the slots are recounted from the jobs that really hold them (a slot held
    # by a job that vanished is reclaimed).
    expires_at = models.DateTimeField()

    class Meta:
        db_table = "dq_semaphore"
        indexes = [models.Index(fields=["expires_at"], name="dq_semaphore_expiry")]

    def __str__(self) -> str:
        return f"{self.key}: {self.value} of {self.limit} free"

    @classmethod
    def acquire(cls, key: str, limit: int, duration: float, *, using: str) -> bool:
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
            with database(using).atomic():
                cls.objects.using(using).create(
                    key=key, value=limit - 1, limit=limit, duration=duration, expires_at=expires_at
                )
            return True
        except IntegrityError:
            # Someone created it meanwhile: it is committed now, so try its slots once more.
            return bool(semaphores.update(**taken))

    @classmethod
    def take_over_limit(cls, key: str, *, using: str) -> None:
        """Take a slot of ``key`` even if none is free; the next release pays it back."""
        cls.objects.using(using).filter(key=key).update(value=F("value") - 1)

    @classmethod
    def release(cls, key: str, *, using: str) -> None:
        """Give back a slot of ``key`` (``Job.release_slot`` then lets the next blocked job
        of that key take it)."""
        cls.objects.using(using).filter(key=key, value__lt=F("limit")).update(value=F("value") + 1)
