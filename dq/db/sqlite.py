"""SQLite: one writer at a time, polling, this host's clock; claims and ends in a few
statements with RETURNING.

SQLite serialises writers. dq's transactions take the write lock when they begin (``BEGIN
IMMEDIATE``), whatever the project's ``transaction_mode``, and do as little as they can
while they hold it: what PostgreSQL does in one statement takes three here (SQLite has no
statements that modify data inside a WITH), each returning the rows the next one needs.
"""

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from django.db import DatabaseError, transaction

from ..queues import QueueSelector
from ..serialization import attempt_record
from .base import CLAIMED, JOBS, NOTHING, PAUSES, READY, Database, Returned, led_by_claims

if TYPE_CHECKING:
    from django.db.backends.sqlite3.base import DatabaseWrapper

    class SQLiteWrapper(DatabaseWrapper):
        """Django's SQLite wrapper with what django-stubs leaves out."""

        # OPTIONS["transaction_mode"], upper-cased, read on connecting: how BEGIN begins.
        transaction_mode: str | None


_LOCK_CODES = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}

_WAITING = f"""
FROM {READY} r
WHERE r.backend = %s AND {{where}}
  AND NOT EXISTS (SELECT 1 FROM {PAUSES} p WHERE p.queue_name = r.queue_name)"""
_ANY_READY = f"SELECT 1 {_WAITING} LIMIT 1"
_TAKE_READY = f"""
DELETE FROM {READY} WHERE id IN (
    SELECT r.id {_WAITING}
    ORDER BY r.priority DESC, r.job_id
    LIMIT {{limit:d}}
)
RETURNING job_id"""
_INSERT_CLAIMS = f"""
INSERT INTO {CLAIMED} (job_id, process_id, claimed_at)
SELECT value, %s, %s FROM json_each(%s)
RETURNING id, job_id"""
_START = f"""
UPDATE {JOBS}
SET status = 'running',
    attempt_count = attempt_count + 1,
    started_at = COALESCE(started_at, %s),
    last_attempted_at = %s
WHERE id IN (SELECT value FROM json_each(%s))
RETURNING *"""
_END_CLAIMS = f"""
DELETE FROM {CLAIMED} WHERE id IN (SELECT value FROM json_each(%s))
RETURNING id, job_id, claimed_at"""
# Each ended run as a JSON object: its job, the attempt to append, its return value
# (JSON text, or null).
_END = f"""
UPDATE {JOBS}
SET status = 'successful',
    finished_at = %s,
    return_value = ended.return_value,
    attempts = json_insert({JOBS}.attempts, '$[#]', json(ended.attempt)),
    unique_key = CASE WHEN {JOBS}.unique_for IS NULL THEN NULL ELSE {JOBS}.unique_key END
FROM (
    SELECT json_extract(value, '$.job') AS job_id,
           json_extract(value, '$.attempt') AS attempt,
           json_extract(value, '$.return_value') AS return_value
    FROM json_each(%s)
) AS ended
WHERE {JOBS}.id = ended.job_id
RETURNING *"""


class SQLiteDatabase(Database):
    @contextlib.contextmanager
    def atomic(self, *, savepoint: bool = True) -> Iterator[None]:
        """Takes the write lock when it begins (``BEGIN IMMEDIATE``), whatever the
        project's ``transaction_mode``: a transaction that reads and then writes would
        otherwise fail at once with "database is locked" when another writer came first,
        instead of waiting for the lock."""
        # database() gives this class the connections of SQLite only.
        wrapper = cast("SQLiteWrapper", self.connection)
        if wrapper.in_atomic_block:
            with transaction.atomic(using=self.alias, savepoint=savepoint):
                yield
            return
        wrapper.ensure_connection()  # transaction_mode is read from settings on connecting
        mode = wrapper.transaction_mode
        wrapper.transaction_mode = "IMMEDIATE"
        try:
            with transaction.atomic(using=self.alias, savepoint=savepoint):
                wrapper.transaction_mode = mode  # begun: what runs inside is the project's
                yield
        finally:
            wrapper.transaction_mode = mode

    def lock_conflict(self, error: DatabaseError) -> bool:
        """SQLite's "database is locked" (SQLITE_BUSY) and "database table is locked"."""
        cause = error.__cause__
        return (
            isinstance(cause, sqlite3.Error)
            and getattr(cause, "sqlite_errorcode", 0) & 0xFF in _LOCK_CODES
        )

    def claim(
        self,
        selector: QueueSelector,
        limit: int,
        *,
        backend: str,
        process_id: int,
        now: datetime,
    ) -> Returned:
        where, params = selector.sql("r.queue_name")
        with self.cursor() as cursor:
            if not self.connection.in_atomic_block:
                # An empty poll must not queue for the write lock every writer needs.
                cursor.execute(_ANY_READY.format(where=where), [backend, *params])
                if cursor.fetchone() is None:
                    return NOTHING
            # Inside a transaction (a batch's ends) no savepoint: an error ends it all.
            with self.atomic(savepoint=False):
                cursor.execute(_TAKE_READY.format(where=where, limit=limit), [backend, *params])
                taken = [job_id for (job_id,) in cursor.fetchall()]
                if not taken:
                    return NOTHING
                job_ids = json.dumps(taken)
                now_value = self.connection.ops.adapt_datetimefield_value(now)
                cursor.execute(_INSERT_CLAIMS, [process_id, now_value, job_ids])
                claim_of = {job_id: claim_id for claim_id, job_id in cursor.fetchall()}
                cursor.execute(_START, [now_value, now_value, job_ids])
                return led_by_claims(cursor, claim_of)

    def finish(self, return_values: dict[int, Any], *, worker_id: str, now: datetime) -> Returned:
        with self.atomic(savepoint=False), self.cursor() as cursor:
            cursor.execute(_END_CLAIMS, [json.dumps(list(return_values))])
            ended = cursor.fetchall()
            if not ended:
                return NOTHING
            runs = [
                {
                    "job": job_id,
                    "attempt": json.dumps(
                        attempt_record(worker_id, self._datetime(claimed_at), now)
                    ),
                    "return_value": _json_text(return_values[claim_id]),
                }
                for claim_id, job_id, claimed_at in ended
            ]
            cursor.execute(
                _END, [self.connection.ops.adapt_datetimefield_value(now), json.dumps(runs)]
            )
            return led_by_claims(cursor, {job_id: claim_id for claim_id, job_id, _ in ended})


def _json_text(value: Any) -> str | None:
    """A return value as the JSON text the column stores; None (SQL NULL) for None."""
    return None if value is None else json.dumps(value)
