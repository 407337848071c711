"""System checks for dq backends; run by ``manage.py check`` and before ``dq_work`` starts."""

from django.apps import apps
from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning
from django.tasks.backends.base import BaseTaskBackend

from . import conf
from .serialization import load_task


def check_backend(backend: BaseTaskBackend) -> list[CheckMessage]:
    where = f"TASKS[{backend.alias!r}]"
    config, problems = conf.parse(backend.alias, backend.options)
    messages: list[CheckMessage] = [
        Error(problem.message, obj=where, id=problem.id) for problem in problems
    ]
    if not apps.is_installed("dq"):
        messages.append(
            Error(
                "dq.backend.DQBackend needs 'dq' in INSTALLED_APPS (its tables come from there).",
                obj=where,
                id="dq.E005",
            )
        )
    for key, entry in config.recurring.items():
        try:
            load_task(entry.task)
        except ImportError as error:
            messages.append(Error(f"recurring[{key!r}]: {error}", obj=where, id="dq.E007"))
    if not problems:
        database = settings.DATABASES[config.database]
        mode = database.get("OPTIONS", {}).get("transaction_mode") or ""
        immediate = mode.upper() == "IMMEDIATE"
        if database["ENGINE"] == "django.db.backends.sqlite3" and not immediate:
            messages.append(
                Warning(
                    f"DATABASES[{config.database!r}] is SQLite without "
                    "OPTIONS['transaction_mode'] = 'IMMEDIATE': dq works, but the project's "
                    "own transactions that read before they write can fail with 'database is "
                    "locked' while dq's processes write.",
                    hint="Add 'transaction_mode': 'IMMEDIATE', a 'timeout' of 20 seconds and "
                    '"init_command": "PRAGMA journal_mode=WAL;" to the database\'s OPTIONS '
                    "(see dq's README, SQLite).",
                    obj=where,
                    id="dq.W001",
                )
            )
    return messages
