"""Every database without special support, and SQLite before 3.35: the ORM paths,
polling, no notifications.

SQLite serialises writers; with ``transaction_mode = IMMEDIATE`` every dq
transaction takes the write lock at BEGIN, so two claims never interleave.
"""

import sqlite3

from django.db import connections
from django.utils import timezone

DEFAULT_POLLING_INTERVAL = 0.1
_SQLITE_LOCK_CODES = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}

Listener = None

# No statement of these: the ORM paths do their work.
FINISH_STATEMENT = None
finish_and_claim_statement = None
enqueue_statement = None
claim_in_transaction = None
finish_in_transaction = None


def claim_statement(selector, limit):
    return None


def notify_ready(connection, queues):
    pass


def session_id(alias):
    return None


def terminate_session(alias, session):
    pass


def lock_conflict(error):
    """Whether the DatabaseError ``error`` is a lock wait that timed out, a deadlock or a
    serialization failure: its transaction is rolled back and may succeed if run again.
    SQLite's "database is locked" (SQLITE_BUSY) and "database table is locked"."""
    cause = error.__cause__
    if isinstance(cause, sqlite3.Error):
        return getattr(cause, "sqlite_errorcode", 0) & 0xFF in _SQLITE_LOCK_CODES
    return False


def database_now(connection):
    return timezone.now()  # an embedded database runs on this host, with this clock


def cursor(alias):
    return connections[alias].cursor()
