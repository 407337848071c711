"""MySQL 8.0+ and MariaDB 10.6+: polling, the server's clock, lock conflicts to retry, a
session ended with KILL; claims and ends as ``Database`` makes them (SKIP LOCKED, no
RETURNING).

Django runs MySQL connections at READ COMMITTED unless a project sets another
``isolation_level``: no gap locks, so a claim locks the ready rows it takes and nothing
around them. Neither database has LISTEN/NOTIFY: idle workers poll.
"""

import time
from datetime import UTC, datetime

from django.conf import settings
from django.db import DatabaseError

from .base import Database

# ER_LOCK_WAIT_TIMEOUT, ER_LOCK_DEADLOCK, ER_LOCK_NOWAIT (MySQL), ER_CHECKREAD (MariaDB:
# "Record has changed since last read", under innodb_snapshot_isolation).
_LOCK_CONFLICTS = {1205, 1213, 3572, 1020}


class MySQLDatabase(Database):
    # Measured (docs/benchmarks.md, "Pickup"): an idle worker's poll is one indexed read.
    polling_interval = 0.1

    def now(self) -> datetime:
        """The server's clock, in UTC (``NOW()`` is in the session's time zone)."""
        if not settings.USE_TZ:
            return super().now()
        with self.connection.cursor() as cursor:
            cursor.execute("SELECT UTC_TIMESTAMP(6)")
            value: datetime = cursor.fetchone()[0]
        return value.replace(tzinfo=UTC)

    def lock_conflict(self, error: DatabaseError) -> bool:
        """A lock wait that timed out (``innodb_lock_wait_timeout``) or a deadlock: InnoDB
        rolled back the statement or the whole transaction; dq runs it all again."""
        return _error_code(error) in _LOCK_CONFLICTS

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


def _error_code(error: DatabaseError) -> object:
    """The server's error number of a MySQL error (the driver's first argument)."""
    args = getattr(error.__cause__, "args", None)
    return args[0] if args else None
