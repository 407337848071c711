"""dq in the Django admin: every job's state, failures retried or discarded, queues paused
and resumed, processes and their heartbeats. Nobody adds or edits jobs by hand."""

from . import executions, jobs, processes, queues, recurring

__all__ = ["executions", "jobs", "processes", "queues", "recurring"]
