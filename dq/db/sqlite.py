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

from ..serialization import attempt_record
from .base import CLAIMED, JOBS, NOTHING, READY, WAITING, Claim, Database, End, Returned

if TYPE_CHECKING:
    from django.db.backends.sqlite3.base import DatabaseWrapper

    class SQLiteWrapper(DatabaseWrapper):
        """Django's SQLite wrapper with what django-stubs leaves out."""

        # OPTIONS["transaction_mode"], upper-cased, read on connecting: how BEGIN begins.
        transaction_mode: str | None


_LOCK_CODES = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}

_TAKE_READY = f"""
DELETE FROM {READY} WHERE id IN (
    SELECT r.id {WAITING}
    ORDER BY r.priority DESC, r.job_id
    LIMIT {{limit:d}}
)
RETURNING job_id"""
_INSERT_CLAIMS = f"""
INSERT INTO {CLAIMED} (job_id, process_id, claimed_at)
SELECT value, %s, %s FROM json_each(%s)
RETURNING id, job_id"""
# Starts and ends as JSON arrays of objects, one per run (SQLite binds no arrays).
_HELD = f"SELECT id FROM {CLAIMED} WHERE id IN (SELECT value FROM json_each(%s))"
_START_CLAIMS = f"""
UPDATE {CLAIMED}
SET started_at = run.started_at
FROM (
    SELECT json_extract(value, '$.claim') AS claim_id,
           json_extract(value, '$.started_at') AS started_at
    FROM json_each(%s)
) AS run
WHERE {CLAIMED}.id = run.claim_id AND {CLAIMED}.started_at IS NULL
RETURNING id, job_id, started_at"""
_START = f"""
UPDATE {JOBS}
SET status = 'running',
    attempt_count = attempt_count + 1,
    started_at = COALESCE({JOBS}.started_at, run.started_at),
    last_attempted_at = run.started_at
FROM (
    SELECT json_extract(value, '$[0]') AS job_id, json_extract(value, '$[1]') AS started_at
    FROM json_each(%s)
) AS run
WHERE {JOBS}.id = run.job_id"""
_END_CLAIMS = f"""
DELETE FROM {CLAIMED} WHERE id IN (SELECT value FROM json_each(%s))
RETURNING id, job_id, started_at"""
# Each ended run as a JSON object: its job, the attempt to append, its return value
# (JSON text, or null), when it started and whether that was recorded.
_END = f"""
UPDATE {JOBS}
SET status = 'successful',
    finished_at = %s,
    return_value = ended.return_value,
    attempts = json_insert({JOBS}.attempts, '$[#]', json(ended.attempt)),
    attempt_count = attempt_count + ended.unrecorded,
    started_at = COALESCE({JOBS}.started_at, ended.started_at),
    last_attempted_at = ended.started_at,
    unique_key = CASE WHEN {JOBS}.unique_for IS NULL THEN NULL ELSE {JOBS}.unique_key END
FROM (
    SELECT json_extract(value, '$.job') AS job_id,
           json_extract(value, '$.attempt') AS attempt,
           json_extract(value, '$.return_value') AS return_value,
           json_extract(value, '$.started_at') AS started_at,
           json_extract(value, '$.unrecorded') AS unrecorded
    FROM json_each(%s)
) AS ended
WHERE {JOBS}.id = ended.job_id"""


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

    def _minute_text(self, column: str) -> str:
        return f"SUBSTR({column}, 1, 16)"  # stored as "YYYY-MM-DD HH:MM:SS[.ffffff]"

    def _by_finish_time(self) -> str:
        # Without it SQLite reads every job by status (all but the last hour's ended long
        # ago): 1.0 s instead of 0.1 s with 1,000,000 finished jobs, 70,000 of them this hour.
        return " INDEXED BY dq_job_finished_at"

    def lock_conflict(self, error: DatabaseError) -> bool:
        """SQLite's "database is locked" (SQLITE_BUSY) and "database table is locked"."""
        cause = error.__cause__
        return (
            isinstance(cause, sqlite3.Error)
            and getattr(cause, "sqlite_errorcode", 0) & 0xFF in _LOCK_CODES
        )

    def claim(self, claim: Claim, *, now: datetime) -> Returned:
        where, params = claim.selector.sql("r.queue_name")
        if not self._any_ready(claim):
            return NOTHING
        # Inside a transaction (a flush) no savepoint: an error ends it all.
        with self.cursor() as cursor, self.atomic(savepoint=False):
            cursor.execute(
                _TAKE_READY.format(where=where, limit=claim.limit), [claim.backend, *params]
            )
            taken = [job_id for (job_id,) in cursor.fetchall()]
            if not taken:
                return NOTHING
            now_value = self.connection.ops.adapt_datetimefield_value(now)
            cursor.execute(_INSERT_CLAIMS, [claim.process_id, now_value, json.dumps(taken)])
            return self._jobs(cursor, {job_id: claim_id for claim_id, job_id in cursor.fetchall()})

    def _start(self, starts: dict[int, datetime]) -> set[int]:
        adapt = self._datetime_text
        runs = [{"claim": claim_id, "started_at": adapt(at)} for claim_id, at in starts.items()]
        with self.cursor() as cursor:
            cursor.execute(_HELD, [json.dumps(list(starts))])
            held = {claim_id for (claim_id,) in cursor.fetchall()}
            cursor.execute(_START_CLAIMS, [json.dumps(runs)])
            started = cursor.fetchall()
            if started:
                jobs = [[job_id, adapt(starts[claim_id])] for claim_id, job_id, _ in started]
                cursor.execute(_START, [json.dumps(jobs)])
        return held

    def _end(self, ends: dict[int, End], *, worker_id: str, now: datetime) -> set[int]:
        adapt = self._datetime_text
        with self.cursor() as cursor:
            cursor.execute(_END_CLAIMS, [json.dumps(list(ends))])
            ended = cursor.fetchall()
            if not ended:
                return set()
            runs = [
                {
                    "job": job_id,
                    "attempt": json.dumps(
                        attempt_record(worker_id, ends[claim_id].started_at, now)
                    ),
                    "return_value": _json_text(ends[claim_id].return_value),
                    "started_at": adapt(ends[claim_id].started_at),
                    "unrecorded": int(recorded_start is None),
                }
                for claim_id, job_id, recorded_start in ended
            ]
            cursor.execute(_END, [adapt(now), json.dumps(runs)])
        return {claim_id for claim_id, _, _ in ended}

    def _datetime_text(self, value: datetime) -> str:
        """A datetime as the text SQLite stores (what its driver's adapter writes), for
        values sent inside JSON."""
        return str(self.connection.ops.adapt_datetimefield_value(value))


def _json_text(value: Any) -> str | None:
    """A return value as the JSON text the column stores; None (SQL NULL) for None."""
    return None if value is None else json.dumps(value)
