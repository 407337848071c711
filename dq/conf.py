"""dq's settings: defaults in one place, and the parsing of a backend's OPTIONS (that of
its recurring tasks in ``dq.schedules``; what a setting got wrong in ``dq.problems``).

Options are read from ``settings.TASKS[alias]["OPTIONS"]`` once, when first asked
for, and again whenever ``override_settings`` changes TASKS or DATABASES.
"""

import functools
import importlib.util
import ipaddress
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Self, cast

from django.conf import settings
from django.core.signals import setting_changed
from django.db import DEFAULT_DB_ALIAS
from django.dispatch import receiver
from django.utils.module_loading import import_string

from .exceptions import ConfigurationError
from .problems import Problem, number_problem, parse_section
from .queues import ALL_QUEUES, QueueSelector
from .schedules import RecurringConfig, parse_recurring

DEFAULT_WORKER_THREADS = 5
# Worker processes with no settings: one per CPU this process may run on, at most this
# many (each holds a few database connections). Measured: on 2 CPUs, 2 processes drain
# twice as fast as 1, and 3 or 4 no faster (docs/benchmarks.md).
MAX_DEFAULT_WORKER_PROCESSES = 4
# Jobs a worker may claim ahead of its free threads, when it ends jobs fast enough to
# start them within moments (dq.processes.worker.CLAIM_AHEAD).
DEFAULT_WORKER_PREFETCH = 100
DEFAULT_DISPATCHER_BATCH_SIZE = 500
DEFAULT_DISPATCHER_POLLING_INTERVAL = 1.0
DEFAULT_SHUTDOWN_TIMEOUT = 10.0
DEFAULT_HEARTBEAT_INTERVAL = 5.0
DEFAULT_ALIVE_THRESHOLD = 30.0
DEFAULT_MAINTENANCE_INTERVAL = 10.0
DEFAULT_MAX_INTERRUPTIONS = 3
DEFAULT_CONCURRENCY_DURATION = 15 * 60.0
DEFAULT_KEEP_FINISHED = 24 * 3600.0
DEFAULT_PRUNE_BATCH_SIZE = 1000
DEFAULT_METRICS_ADDRESS = "127.0.0.1"
# What a metrics port needs installed, and the sentence that says how to get it.
METRICS_LIBRARY = "prometheus_client"
METRICS_INSTALL = 'pip install "dq[metrics]"'


BACKOFF_BASE = 2.0  # seconds before the first retry
BACKOFF_CAP = 3600.0
BACKOFF_JITTER = 0.25


def default_worker_processes() -> int:
    """How many worker processes ``dq_work`` starts with no settings."""
    return max(1, min(len(os.sched_getaffinity(0)), MAX_DEFAULT_WORKER_PROCESSES))


def exponential_backoff(failures: int) -> float:
    """Seconds before retrying after ``failures`` failed attempts: 2, 4, 8, ... up to an hour,
    each spread by +/-25% so that jobs failing together do not retry together."""
    delay: float = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (failures - 1))
    return delay * random.uniform(1 - BACKOFF_JITTER, 1 + BACKOFF_JITTER)


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    queues: tuple[str, ...] = (ALL_QUEUES,)
    threads: int = DEFAULT_WORKER_THREADS
    processes: int = field(default_factory=default_worker_processes)
    prefetch: int = DEFAULT_WORKER_PREFETCH
    # None: the database vendor's default (fast where no notifications exist).
    polling_interval: float | None = None
    # Recycling: exit gracefully (and be replaced) after this many jobs, or above this
    # resident memory in MiB. None: never.
    max_jobs: int | None = None
    max_memory: float | None = None


@dataclass(frozen=True, slots=True)
class DispatcherConfig:
    processes: int = 1
    batch_size: int = DEFAULT_DISPATCHER_BATCH_SIZE
    polling_interval: float = DEFAULT_DISPATCHER_POLLING_INTERVAL


@dataclass(frozen=True, slots=True)
class Configuration:
    """Everything ``dq_work`` and the recovery of interrupted jobs need to know."""

    backend: str
    database: str = DEFAULT_DB_ALIAS
    workers: tuple[WorkerConfig, ...] = (WorkerConfig(),)
    dispatcher: DispatcherConfig = field(default_factory=DispatcherConfig)
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    alive_threshold: float = DEFAULT_ALIVE_THRESHOLD
    maintenance_interval: float = DEFAULT_MAINTENANCE_INTERVAL
    max_interruptions: int = DEFAULT_MAX_INTERRUPTIONS
    # Finished (successful or cancelled) jobs are deleted this long after they ended;
    # failed ones too if keep_failed is a number. None: kept.
    keep_finished: float | None = DEFAULT_KEEP_FINISHED
    keep_failed: float | None = None
    # Recurring tasks: key -> RecurringConfig; the scheduler runs if there are any.
    recurring: dict[str, "RecurringConfig"] = field(default_factory=dict)
    scheduler: bool = True
    # The supervisor serves Prometheus metrics at http://metrics_address:metrics_port/metrics
    # (dq.processes.metrics). None: no metrics, and prometheus_client is never imported.
    metrics_port: int | None = None
    metrics_address: str = DEFAULT_METRICS_ADDRESS

    def with_worker_overrides(
        self,
        *,
        queues: tuple[str, ...] | None = None,
        threads: int | None = None,
        processes: int | None = None,
    ) -> Self:
        """One worker group built from the first, with command-line overrides applied."""
        if queues is None and threads is None and processes is None:
            return self
        base = self.workers[0] if self.workers else WorkerConfig()
        problems: list[Problem] = []
        if threads is not None:
            _check_positive(threads, "--threads", problems, integer=True)
        if processes is not None:
            _check_positive(processes, "--processes", problems, integer=True)
        if queues is not None:
            _check_selectors(queues, "--queues", problems)
        if problems:
            raise ConfigurationError("; ".join(p.message for p in problems))
        changes: dict[str, Any] = {"queues": queues, "threads": threads, "processes": processes}
        worker = replace(base, **{k: v for k, v in changes.items() if v is not None})
        return replace(self, workers=(worker,))

    def with_metrics_port(self, port: int | None) -> Self:
        """This configuration with ``dq_work --metrics-port`` applied (None: as it is)."""
        if port is None:
            return self
        problems: list[Problem] = []
        _check_metrics_port(port, "--metrics-port", problems)
        if problems:
            raise ConfigurationError("; ".join(p.message for p in problems))
        return replace(self, metrics_port=port)


_TOP_LEVEL_KEYS = {
    "database",
    "workers",
    "dispatchers",
    "shutdown_timeout",
    "heartbeat_interval",
    "alive_threshold",
    "maintenance_interval",
    "max_interruptions",
    "keep_finished",
    "keep_failed",
    "recurring",
    "scheduler",
    "metrics_port",
    "metrics_address",
}
_WORKER_KEYS = {
    "queues",
    "threads",
    "processes",
    "prefetch",
    "polling_interval",
    "max_jobs",
    "max_memory",
}
_DISPATCHER_KEYS = {"processes", "batch_size", "polling_interval"}


def parse_queues(value: str | Iterable[str]) -> tuple[str, ...]:
    """``"a,b,mail*"`` or ``["a", "b"]`` -> a tuple of queue selectors, order kept."""
    if isinstance(value, str):
        value = value.split(",")
    return tuple(name.strip() for name in value)


# The backend dq provides; a TASKS alias whose BACKEND is it (or a subclass) is dq's.
BACKEND_PATH = "dq.backend.DQBackend"


def is_dq_backend(alias: str) -> bool:
    """Whether TASKS[alias] is a dq backend (its class loaded by path, as Django does)."""
    # The stubs' plugin types TASKS by the checking settings' value; BACKEND is a dotted path.
    backend_class = import_string(cast(str, settings.TASKS[alias]["BACKEND"]))
    return any(
        f"{klass.__module__}.{klass.__qualname__}" == BACKEND_PATH
        for klass in backend_class.__mro__
    )


def backend_options(alias: str) -> object:
    return settings.TASKS.get(alias, {}).get("OPTIONS", {}) or {}


def load(alias: str) -> Configuration:
    """The Configuration of backend ``alias``; ConfigurationError if OPTIONS are invalid."""
    config, problems = parsed(alias)
    if problems:
        details = "\n".join(f"  {p.id}: {p.message}" for p in problems)
        raise ConfigurationError(f"Invalid OPTIONS for dq backend {alias!r}:\n{details}")
    return config


def max_interruptions(alias: str) -> int:
    """How often backend ``alias`` re-runs an interrupted at_least_once job; the default
    when its OPTIONS cannot be read (recovery must never stop on bad settings)."""
    config, problems = parsed(alias)
    return DEFAULT_MAX_INTERRUPTIONS if problems else config.max_interruptions


@functools.cache
def parsed(alias: str) -> tuple[Configuration, list[Problem]]:
    """``parse`` of backend ``alias``'s OPTIONS, once per settings: read again after
    ``override_settings`` changes TASKS or DATABASES."""
    return parse(alias, backend_options(alias))


@receiver(setting_changed)
def _forget_parsed(*, setting: str, **kwargs: object) -> None:
    if setting in ("TASKS", "DATABASES", "TIME_ZONE"):
        parsed.cache_clear()


def parse(alias: str, options: object) -> tuple[Configuration, list[Problem]]:
    """Return (Configuration, problems); the Configuration is only meaningful without problems."""
    problems: list[Problem] = []
    if not isinstance(options, dict):
        return Configuration(backend=alias), [Problem("dq.E002", "OPTIONS must be a dict.")]
    for key in sorted(set(options) - _TOP_LEVEL_KEYS):
        problems.append(
            Problem(
                "dq.E001", f"Unknown option {key!r}; known: {', '.join(sorted(_TOP_LEVEL_KEYS))}."
            )
        )

    database = options.get("database", DEFAULT_DB_ALIAS)
    if not isinstance(database, str) or database not in settings.DATABASES:
        problems.append(
            Problem("dq.E003", f"OPTIONS['database'] is {database!r}, which is not in DATABASES.")
        )

    workers = _parse_workers(options.get("workers"), problems)
    dispatcher = parse_section(
        options.get("dispatchers", {}), DispatcherConfig, _DISPATCHER_KEYS, "dispatchers", problems
    )
    if dispatcher is not None:
        _check_positive(dispatcher.batch_size, "dispatchers.batch_size", problems, integer=True)
        _check_positive(dispatcher.polling_interval, "dispatchers.polling_interval", problems)
        _check_positive(
            dispatcher.processes, "dispatchers.processes", problems, integer=True, zero=True
        )

    numbers: dict[str, Any] = {}
    default: float | None  # the defaults below: numbers, then a number or None
    for key, default, integer in (
        ("shutdown_timeout", DEFAULT_SHUTDOWN_TIMEOUT, False),
        ("heartbeat_interval", DEFAULT_HEARTBEAT_INTERVAL, False),
        ("alive_threshold", DEFAULT_ALIVE_THRESHOLD, False),
        ("maintenance_interval", DEFAULT_MAINTENANCE_INTERVAL, False),
        ("max_interruptions", DEFAULT_MAX_INTERRUPTIONS, True),
    ):
        numbers[key] = options.get(key, default)
        _check_positive(
            numbers[key], key, problems, integer=integer, zero=key == "max_interruptions"
        )
    for key, default in (("keep_finished", DEFAULT_KEEP_FINISHED), ("keep_failed", None)):
        numbers[key] = options.get(key, default)
        if numbers[key] is not None:
            _check_positive(numbers[key], key, problems)
    recurring = parse_recurring(options.get("recurring", {}), problems)
    scheduler = options.get("scheduler", True)
    if not isinstance(scheduler, bool):
        problems.append(Problem("dq.E002", f"scheduler must be True or False, not {scheduler!r}."))
    metrics_port = options.get("metrics_port")
    if metrics_port is not None:
        _check_metrics_port(metrics_port, "metrics_port", problems)
    metrics_address = options.get("metrics_address", DEFAULT_METRICS_ADDRESS)
    _check_address(metrics_address, problems)
    if not problems and numbers["alive_threshold"] <= numbers["heartbeat_interval"]:
        problems.append(
            Problem(
                "dq.E002",
                "alive_threshold must be larger than heartbeat_interval, or live processes "
                "would be pruned.",
            )
        )
    if problems:
        return Configuration(backend=alias), problems
    assert dispatcher is not None  # None only with a problem, returned above
    return (
        Configuration(
            backend=alias,
            database=database,
            workers=workers,
            dispatcher=dispatcher,
            recurring=recurring,
            scheduler=scheduler,
            metrics_port=metrics_port,
            metrics_address=metrics_address,
            **numbers,
        ),
        problems,
    )


def _parse_workers(value: object, problems: list[Problem]) -> tuple[WorkerConfig, ...]:
    if value is None:
        return (WorkerConfig(),)
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list | tuple):
        problems.append(Problem("dq.E002", "OPTIONS['workers'] must be a list of dicts."))
        return ()
    workers = []
    for index, section in enumerate(value):
        worker = parse_section(section, WorkerConfig, _WORKER_KEYS, f"workers[{index}]", problems)
        if worker is not None:
            queues: object = worker.queues  # as the settings gave it, not checked yet
            if not isinstance(queues, str) and not (
                isinstance(queues, list | tuple) and all(isinstance(q, str) for q in queues)
            ):
                message = f"workers[{index}].queues must be a list of names, not {queues!r}."
                problems.append(Problem("dq.E002", message))
                continue
            worker = replace(worker, queues=parse_queues(queues))
            _check_worker(worker, f"workers[{index}]", problems)
            workers.append(worker)
    return tuple(workers)


def _check_worker(worker: WorkerConfig, where: str, problems: list[Problem]) -> None:
    _check_positive(worker.threads, f"{where}.threads", problems, integer=True)
    _check_positive(worker.processes, f"{where}.processes", problems, integer=True, zero=True)
    _check_positive(worker.prefetch, f"{where}.prefetch", problems, integer=True, zero=True)
    if worker.polling_interval is not None:
        _check_positive(worker.polling_interval, f"{where}.polling_interval", problems)
    if worker.max_jobs is not None:
        _check_positive(worker.max_jobs, f"{where}.max_jobs", problems, integer=True)
    if worker.max_memory is not None:
        _check_positive(worker.max_memory, f"{where}.max_memory", problems)
    _check_selectors(worker.queues, f"{where}.queues", problems)


def _check_selectors(selectors: Sequence[str], where: str, problems: list[Problem]) -> None:
    if not selectors:
        problems.append(Problem("dq.E004", f"{where} is empty; use ['*'] for every queue."))
    bad = [repr(s) for s in dict.fromkeys(selectors) if not QueueSelector.is_valid(s)]
    if bad:
        what = "is not a queue selector" if len(bad) == 1 else "are not queue selectors"
        problems.append(
            Problem(
                "dq.E004",
                f"{where}: {', '.join(bad)} {what}; a queue selector is a name, '*', or a "
                "prefix ending in '*' such as 'mail*'.",
            )
        )


def _check_positive(
    value: object, name: str, problems: list[Problem], *, integer: bool = False, zero: bool = False
) -> None:
    if problem := number_problem(value, name, integer=integer, zero=zero):
        problems.append(Problem("dq.E002", problem))


def _check_metrics_port(value: object, name: str, problems: list[Problem]) -> None:
    """A metrics port is a TCP port, and needs prometheus_client installed (looked for,
    not imported: it must first read the directory the supervisor gives it)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        problems.append(
            Problem("dq.E008", f"{name} must be a TCP port (1 to 65535), not {value!r}.")
        )
    elif importlib.util.find_spec(METRICS_LIBRARY) is None:
        problems.append(
            Problem(
                "dq.E008",
                f"{name} is set, but {METRICS_LIBRARY} is not installed: {METRICS_INSTALL}.",
            )
        )


def _check_address(value: object, problems: list[Problem]) -> None:
    try:
        ipaddress.ip_address(value if isinstance(value, str) else "")
    except ValueError:
        problems.append(
            Problem(
                "dq.E008",
                f'metrics_address must be an IP address to listen on (such as "127.0.0.1", '
                f'or "0.0.0.0" for every interface), not {value!r}.',
            )
        )
