"""Vendor SQL behind one small interface; everything else in dq is ORM.

Each vendor module provides:

- ``DEFAULT_POLLING_INTERVAL``: how often an idle worker polls (seconds);
- ``claim_statement(selector, limit)``: (sql, params) of one statement that claims
  up to ``limit`` ready jobs, or None to use the ORM path in ``ReadyExecution.claim``;
- ``FINISH_STATEMENT``: one statement that records successful runs (parameters
  claim_ids, return_values as JSON text, worker_id, now; rows: ``claim_id`` then
  every column of the job), or None to use the ORM path in
  ``ClaimedExecution.finish_many``;
- ``finish_and_claim_statement(selector, limit)`` or None: (sql, params) of one statement
  that does both (``ClaimedExecution.finish_and_claim``);
- ``enqueue_statement(shared, varying, *, count, now, ready_queues)`` or None: one
  statement that inserts jobs (the columns they share as one value each, the others
  as arrays) and places them (see ``Job._insert_placed``); None to insert and place
  them with the ORM;
- ``claim_in_transaction(connection, selector, limit, *, process_id, now)`` and
  ``finish_in_transaction(connection, return_values, *, attempt, now)``, or None:
  where a claim or an end is several statements, run in the caller's transaction;
  they return (columns, rows) as the statements above do (``dq.db.sqlite``);
- ``cursor(alias)``: the cursor dq runs its own statements with (on PostgreSQL one
  whose statements psycopg prepares);
- ``notify_ready(connection, queues)``: wake idle workers when the current
  transaction commits (a no-op where the database cannot);
- ``session_id(alias)``, ``terminate_session(alias, session)``: the database
  session of this thread's connection, and ending one from another connection
  (how a timed-out exactly_once run is rolled back), or None and a no-op;
- ``Listener(alias)`` or None: a dedicated connection whose ``fileno()`` a
  worker waits on, and whose ``drain()`` returns the queues notified.
"""

import contextlib
import sqlite3

from django.db import connections, transaction

from . import generic, postgresql, sqlite


def for_alias(alias):
    vendor = connections[alias].vendor
    if vendor == "postgresql":
        return postgresql
    if vendor == "sqlite" and sqlite3.sqlite_version_info >= sqlite.MINIMUM_VERSION:
        return sqlite
    return generic


def database_now(alias):
    """The database server's time: heartbeats of every host are written and compared by
    this one clock."""
    return for_alias(alias).database_now(connections[alias])


def notify_ready(alias, queues):
    for_alias(alias).notify_ready(connections[alias], queues)


@contextlib.contextmanager
def atomic(alias, *, savepoint=True):
    """A transaction of dq's own on ``alias`` (``transaction.atomic``). On SQLite it takes
    the write lock when it begins (``BEGIN IMMEDIATE``), whatever the project's
    ``transaction_mode``: a transaction that reads and then writes would otherwise fail
    at once with "database is locked" when another writer came first, instead of
    waiting for the lock. Inside another transaction it is a savepoint, as usual."""
    wrapper = connections[alias]
    if wrapper.vendor != "sqlite" or wrapper.in_atomic_block:
        with transaction.atomic(using=alias, savepoint=savepoint):
            yield
        return
    wrapper.ensure_connection()  # transaction_mode is read from settings on connecting
    mode = wrapper.transaction_mode
    wrapper.transaction_mode = "IMMEDIATE"
    try:
        with transaction.atomic(using=alias, savepoint=savepoint):
            wrapper.transaction_mode = mode  # begun: what runs inside is the project's
            yield
    finally:
        wrapper.transaction_mode = mode


def one_statement(alias):
    """The transaction for work that is one statement: in autocommit mode the statement is
    its own transaction, which spares the round trips of BEGIN and COMMIT; inside an
    atomic block (or without autocommit) it joins the transaction there is."""
    if connections[alias].get_autocommit():
        return contextlib.nullcontext()
    return transaction.atomic(using=alias, savepoint=False)
