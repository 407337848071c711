from django.core.exceptions import ImproperlyConfigured


class DQError(Exception):
    """Base class for dq's exceptions. Do not raise directly."""


class JobInterrupted(DQError):
    """A job's run started and did not finish. Do not raise directly."""


class ProcessExitError(JobInterrupted):
    """The worker running the job exited before the job finished."""


class ProcessPrunedError(JobInterrupted):
    """The worker running the job stopped sending heartbeats and was pruned."""


class ShutdownTimeoutError(JobInterrupted):
    """The job was still running when its worker's shutdown timeout ran out."""


class ConfigurationError(ImproperlyConfigured):
    """The dq backend's OPTIONS are invalid."""


class ProcessMissingError(JobInterrupted):
    """The job was claimed by a process that no longer exists."""


class ClaimLostError(JobInterrupted):
    """The job's claim committed, but the worker that made it never learned of it (the
    database's reply was lost with the connection), so nothing ran it."""


class TransitionNotAllowed(DQError):
    """A job is not in a state that allows the change asked for."""


class JobTimeoutError(JobInterrupted):
    """The job ran longer than its task's timeout."""


class TransactionRolledBackError(JobInterrupted):
    """The exactly_once job's transaction was rolled back before it committed (a lock wait
    timed out, a deadlock, a lost connection): nothing of the run took effect."""


class ExactlyOnceViolation(DQError):
    """An exactly_once task wrote outside the transaction that makes it exactly once."""
