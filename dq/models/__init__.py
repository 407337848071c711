from .batch import Batch
from .blocked import BlockedExecution
from .claimed import ClaimedExecution, runs_interrupted
from .failed import FailedExecution
from .job import Job
from .pause import Pause, Queue
from .process import Process
from .ready import ReadyExecution
from .recurring import RecurringExecution, RecurringTask
from .scheduled import ScheduledExecution
from .semaphore import Semaphore

__all__ = [
    "Batch",
    "BlockedExecution",
    "ClaimedExecution",
    "FailedExecution",
    "Job",
    "Pause",
    "Process",
    "Queue",
    "ReadyExecution",
    "RecurringExecution",
    "RecurringTask",
    "ScheduledExecution",
    "Semaphore",
    "runs_interrupted",
]
