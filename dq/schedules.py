"""Recurring tasks' settings (``OPTIONS["recurring"]``): each a task on a cron schedule,
read and checked."""

import zoneinfo
from dataclasses import dataclass, field
from typing import Any

from croniter import croniter

from .problems import Problem, parse_section


@dataclass(frozen=True, slots=True)
class RecurringConfig:
    """A recurring task: the task's dotted path, its schedule and how each run is enqueued."""

    task: str
    schedule: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    queue_name: str | None = None
    priority: int | None = None
    description: str = ""
    timezone: str | None = None  # None: settings.TIME_ZONE


_RECURRING_KEYS = {
    "task",
    "schedule",
    "args",
    "kwargs",
    "queue_name",
    "priority",
    "description",
    "timezone",
}


def parse_recurring(value: object, problems: list[Problem]) -> dict[str, RecurringConfig]:
    if not isinstance(value, dict):
        problems.append(Problem("dq.E002", "OPTIONS['recurring'] must be a dict of key -> task."))
        return {}
    recurring = {}
    for key, section in value.items():
        where = f"recurring[{key!r}]"
        if not isinstance(section, dict) or not {"task", "schedule"} <= set(section):
            problems.append(
                Problem("dq.E006", f"{where} must be a dict with 'task' and 'schedule'.")
            )
            continue
        entry = parse_section(section, RecurringConfig, _RECURRING_KEYS, where, problems)
        if entry is None:
            continue
        if (
            not isinstance(entry.schedule, str)
            # Five fields or an alias such as "@hourly"; not croniter's seconds or years.
            or len(entry.schedule.split()) != (1 if entry.schedule.startswith("@") else 5)
            or not croniter.is_valid(entry.schedule)
        ):
            problems.append(
                Problem(
                    "dq.E006",
                    f"{where}: schedule {entry.schedule!r} is not a valid cron expression "
                    "(five fields, e.g. '0 3 * * *', or an alias such as '@hourly').",
                )
            )
        if not isinstance(entry.args, list) or not isinstance(entry.kwargs, dict):
            # The fields hold the settings' values, not checked yet.
            problems.append(Problem("dq.E002", f"{where}: args must be a list, kwargs a dict."))  # type: ignore[unreachable]
        if entry.timezone is not None:
            try:
                zoneinfo.ZoneInfo(entry.timezone)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
                problems.append(
                    Problem("dq.E006", f"{where}: unknown timezone {entry.timezone!r}.")
                )
        recurring[key] = entry
    return recurring
