"""MySQL 8.0+ and MariaDB 10.6+: polling, the server's clock, lock conflicts to retry, a
session ended with KILL; claims and ends as ``Database`` makes them (SKIP LOCKED, no
RETURNING).

Django runs MySQL connections at READ COMMITTED unless a project sets another
``isolation_level``: no gap locks, so a claim locks the ready rows it takes and nothing
around them. Neither database has LISTEN/NOTIFY: idle workers poll.
"""

import json
import time
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import DatabaseError
from django.db.backends.utils import CursorWrapper

from .base import CLAIMED, Database

# Ids sent as one JSON array and joined as a table: one primary-key lookup per id. Given
# an IN list instead, MySQL scans a small table whole (a claimed or ready table holds a
# few hundred rows), and a locking scan waits for the rows other workers hold locked:
# two workers' flushes deadlocked so. Parameter: the ids, as JSON.
_IDS = "JSON_TABLE(%s, '$[*]' COLUMNS (id BIGINT PATH '$')) AS named"
# The lookup, even where the table's statistics say it is empty (a table just emptied
# can be joined by a scan of it).
_BY_ID = "FORCE INDEX (PRIMARY)"

# ER_LOCK_WAIT_TIMEOUT, ER_LOCK_DEADLOCK, ER_LOCK_NOWAIT (MySQL), ER_CHECKREAD (MariaDB:
# "Record has changed since last read", under innodb_snapshot_isolation).
_LOCK_CONFLICTS = {1205, 1213, 3572, 1020}


class MySQLDatabase(Database):
    # An idle worker's poll is one indexed read that locks nothing. At 0.1 s a job enqueued
    # on an idle queue started 47 ms (median) and 95 ms (95th percentile) later on MariaDB
    # 10.11, and an idle dq_work of two workers cost 1.6 % of a core and 28 statements a
    # second; 0.05 s halved the latency for twice the cost (./dev bench --db mysql).
    polling_interval = 0.1

    def now(self) -> datetime:
        """The server's clock, in UTC (``NOW()`` is in the session's time zone)."""
        if not settings.USE_TZ:
            return super().now()
        with self.connection.cursor() as cursor:
            cursor.execute("SELECT UTC_TIMESTAMP(6)")
            value: datetime = cursor.fetchone()[0]
        return value.replace(tzinfo=UTC)

    def _minute_text(self, column: str) -> str:
        return f"DATE_FORMAT({column}, '%%Y-%%m-%%d %%H:%%i')"  # %% : the driver's escape

    def lock_conflict(self, error: DatabaseError) -> bool:
        """A lock wait that timed out (``innodb_lock_wait_timeout``) or a deadlock: InnoDB
        rolled back the statement or the whole transaction; dq runs it all again."""
        return _error_code(error) in _LOCK_CONFLICTS

    def _lock_claims(self, cursor: CursorWrapper, claim_ids: list[int]) -> list[tuple[Any, ...]]:
        cursor.execute(
            f"SELECT c.id, c.job_id, c.started_at FROM {_IDS} "
            f"STRAIGHT_JOIN {CLAIMED} c {_BY_ID} ON c.id = named.id ORDER BY c.id FOR UPDATE",
            [_ids(claim_ids)],
        )
        return list(cursor.fetchall())

    def _delete_by_id(self, cursor: CursorWrapper, table: str, ids: list[int]) -> None:
        cursor.execute(
            f"DELETE t FROM {_IDS} STRAIGHT_JOIN {table} t {_BY_ID} ON t.id = named.id",
            [_ids(ids)],
        )

    def session_id(self) -> int:
        with self.connection.cursor() as cursor:
            cursor.execute("SELECT CONNECTION_ID()")
            session: int = cursor.fetchone()[0]
        return session

    def terminate_session(self, session: int) -> None:
        """``KILL`` ends the connection and rolls back its transaction; it returns before
        the rollback is done, so this waits up to 5 s for the session to be gone."""
        with self.connection.cursor() as cursor:
            try:
                cursor.execute("KILL %s", [session])
            except DatabaseError as error:
                if _error_code(error) != 1094:  # ER_NO_SUCH_THREAD: gone already
                    raise
                return
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline:
                cursor.execute(
                    "SELECT 1 FROM information_schema.PROCESSLIST WHERE ID = %s", [session]
                )
                if cursor.fetchone() is None:
                    return
                time.sleep(0.01)


def _ids(ids: list[int]) -> str:
    """The ids as JSON, in order: rows are locked in the order they are named."""
    return json.dumps(sorted(ids))


def _error_code(error: DatabaseError) -> object:
    """The server's error number of a MySQL error (the driver's first argument)."""
    args = getattr(error.__cause__, "args", None)
    return args[0] if args else None
