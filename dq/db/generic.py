"""Every database without special support, and SQLite before 3.35: the ORM paths,
polling, no notifications.

SQLite serialises writers; with ``transaction_mode = IMMEDIATE`` every dq
transaction takes the write lock at BEGIN, so two claims never interleave.
"""

from django.db import connections
from django.utils import timezone

DEFAULT_POLLING_INTERVAL = 0.1

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


def database_now(connection):
    return timezone.now()  # an embedded database runs on this host, with this clock


def cursor(alias):
    return connections[alias].cursor()
