from django.db import models


class Run(models.Model):
    """One execution of a test task, written by the task itself."""

    label = models.CharField(max_length=200)
    pid = models.IntegerField()
    at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.label} (pid {self.pid})"


class ChaosExecution(models.Model):
    """One execution of a chaos-run job, written by the task (tests/chaos)."""

    job_id = models.BigIntegerField(db_index=True)
    attempt = models.PositiveIntegerField()
    pid = models.IntegerField()

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"job {self.job_id} attempt {self.attempt} (pid {self.pid})"


class AtLeastOnceExecution(ChaosExecution):
    pass


class AtMostOnceExecution(ChaosExecution):
    pass


class ExactlyOnceExecution(ChaosExecution):
    """Written inside the job's transaction: it exists only if the job's success committed."""
