from .claimed import ClaimedExecution
from .failed import FailedExecution
from .job import Job
from .pause import Pause
from .process import Process
from .ready import ReadyExecution
from .scheduled import ScheduledExecution

__all__ = [
    "ClaimedExecution",
    "FailedExecution",
    "Job",
    "Pause",
    "Process",
    "ReadyExecution",
    "ScheduledExecution",
]
