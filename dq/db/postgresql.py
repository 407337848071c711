"""PostgreSQL: a worker's claims (SKIP LOCKED), starts and ends in one statement, an
enqueue in one, each prepared once per connection; LISTEN/NOTIFY wakes idle workers; the
server's clock."""

import functools
import json
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Self, cast

from django.db import DatabaseError, connections
from django.db.backends.utils import CursorWrapper

from .base import (
    CLAIMED,
    JOBS,
    NOTHING,
    PAUSES,
    READY,
    SCHEDULED,
    Claim,
    Column,
    Database,
    End,
    Flushed,
    Listener,
    Returned,
)

if TYPE_CHECKING:
    import psycopg
    from django.db.backends.postgresql.base import DatabaseWrapper
    from psycopg.abc import Params, Query

    class PostgreSQLWrapper(DatabaseWrapper):
        """Django's wrapper on psycopg 3 (which dq's statements need) with what django-stubs
        leaves out: its psycopg connection (once connected), and its wrapping of cursors."""

        connection: psycopg.Connection[Any]

        def get_new_connection(self, conn_params: Any) -> psycopg.Connection[Any]: ...
        def _prepare_cursor(self, cursor: psycopg.Cursor[Any]) -> CursorWrapper: ...


CHANNEL = "dq_ready"
_MAX_PAYLOAD = 7000  # PostgreSQL's limit is 8000 bytes; an empty payload means "any queue".
# serialization_failure, deadlock_detected, lock_not_available (lock_timeout).
_LOCK_CONFLICTS = {"40001", "40P01", "55P03"}

# Claiming: pick ready jobs (SKIP LOCKED: never wait for another claim) and move each from
# ready to claimed; its run has not started. Parameters: backend, the selector's,
# process_id, now. The limit is part of the text, not a parameter: a prepared statement is
# planned once, and with an unknown limit PostgreSQL plans for a tenth of the table (hash
# joins over whole tables) instead of the few rows a claim takes.
_CLAIM = f"""
picked AS (
    SELECT r.id, r.job_id FROM {READY} r
    WHERE r.backend = %s AND {{where}}
      AND NOT EXISTS (SELECT 1 FROM {PAUSES} p WHERE p.queue_name = r.queue_name)
    ORDER BY r.priority DESC, r.job_id
    LIMIT {{limit:d}}
    FOR UPDATE SKIP LOCKED
), removed AS (
    DELETE FROM {READY} r USING picked WHERE r.id = picked.id
    RETURNING r.job_id
), claimed AS (
    INSERT INTO {CLAIMED} (job_id, process_id, claimed_at)
    SELECT job_id, %s, %s FROM removed
    RETURNING id, job_id
)"""
_CLAIMED = f"SELECT claimed.id, 'c', j.* FROM claimed JOIN {JOBS} j ON j.id = claimed.job_id"

# Recording starts: each claim not started yet records when its run started, and its job
# is running with one attempt more; a start counts as recorded where the claim is there
# (recorded before, if a reply was lost). Parameters: claim ids, start times.
_START = f"""
held AS (
    SELECT id FROM {CLAIMED} WHERE id = ANY(%s::bigint[])
), starting AS (
    UPDATE {CLAIMED} c SET started_at = v.started_at
    FROM unnest(%s::bigint[], %s::timestamptz[]) AS v(claim_id, started_at)
    WHERE c.id = v.claim_id AND c.started_at IS NULL
    RETURNING c.id, c.job_id, c.started_at
), started AS (
    UPDATE {JOBS} j
    SET status = 'running',
        attempt_count = j.attempt_count + 1,
        started_at = COALESCE(j.started_at, starting.started_at),
        last_attempted_at = starting.started_at
    FROM starting
    WHERE j.id = starting.job_id
)"""
_STARTED = f"SELECT id, 's', (NULL::{JOBS}).* FROM held"

# Recording successful runs: each claim is deleted, and its job records the attempt, its
# return value and its end (and its start, if that was not recorded); a job that keeps no
# unique key after it ends (no unique_for) gives it up. Parameters: claim ids, return
# values (JSON text, or NULL), start times, now, worker id.
_END = f"""
ending AS (
    DELETE FROM {CLAIMED} c
    USING unnest(%s::bigint[], %s::text[], %s::timestamptz[])
        AS v(claim_id, return_value, started_at)
    WHERE c.id = v.claim_id
    RETURNING v.claim_id, v.return_value, v.started_at, c.job_id,
        (c.started_at IS NULL)::int AS unrecorded
), finish AS (
    SELECT %s::timestamptz AS now, %s::text AS worker_id
), ended AS (
    UPDATE {JOBS} j
    SET status = 'successful',
        finished_at = finish.now,
        return_value = ending.return_value::jsonb,
        attempts = j.attempts || jsonb_build_array(jsonb_build_object(
            'worker_id', finish.worker_id,
            'started_at', ending.started_at,
            'finished_at', finish.now,
            'error', NULL
        )),
        attempt_count = j.attempt_count + ending.unrecorded,
        started_at = COALESCE(j.started_at, ending.started_at),
        last_attempted_at = ending.started_at,
        unique_key = CASE WHEN j.unique_for IS NULL THEN NULL ELSE j.unique_key END
    FROM ending, finish
    WHERE j.id = ending.job_id
    RETURNING ending.claim_id
)"""
_ENDED = f"SELECT claim_id, 'e', (NULL::{JOBS}).* FROM ended"

# A prepare threshold no statement reaches by being run often: only those run with
# prepare=True are prepared.
_NEVER_BY_COUNT = 2**31 - 1


class PostgreSQLDatabase(Database):
    # Idle workers are woken by NOTIFY; polling is only the fallback.
    polling_interval = 2.0
    notifies = True

    def cursor(self) -> CursorWrapper:
        """A cursor whose statements are prepared, once per connection: planning dq's
        claims, ends and enqueues costs about as much as running them. Unless the project
        turned prepared statements off with ``OPTIONS["prepare_threshold"] = None`` (as
        behind a connection pooler that cannot keep them)."""
        # database() gives this class the connections of PostgreSQL only.
        wrapper = cast("PostgreSQLWrapper", self.connection)
        wrapper.ensure_connection()
        options = wrapper.settings_dict["OPTIONS"]
        if "prepare_threshold" in options and options["prepare_threshold"] is None:
            return wrapper.cursor()
        if wrapper.connection.prepare_threshold is None:
            # Django's default, which turns psycopg's preparing off: on again, for the
            # statements asked to be prepared (Django's own cursors bind on the client, and
            # never prepare).
            wrapper.connection.prepare_threshold = _NEVER_BY_COUNT
        return wrapper._prepare_cursor(_preparing_cursor_class()(wrapper.connection))

    def now(self) -> datetime:
        with self.connection.cursor() as cursor:
            cursor.execute("SELECT CURRENT_TIMESTAMP")
            return cast(datetime, cursor.fetchone()[0])  # DB-API rows are untyped

    def _minute_text(self, column: str) -> str:
        # In the session's zone: UTC where USE_TZ is set (Django sets it so).
        return f"to_char({column}, 'YYYY-MM-DD HH24:MI')"

    def lock_conflict(self, error: DatabaseError) -> bool:
        return getattr(error.__cause__, "sqlstate", None) in _LOCK_CONFLICTS

    def session_id(self) -> int:
        """The server process id of this thread's connection."""
        # A connection of PostgreSQL, as in cursor().
        return cast("PostgreSQLWrapper", self.connection).connection.info.backend_pid

    def terminate_session(self, session: int) -> None:
        """Waits up to 5 s for the session to end."""
        with self.connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s, 5000)", [session])

    def notify_ready(self, queues: set[str]) -> None:
        with self.connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, _payload(queues)])

    def listen(self) -> Listener:
        return PostgreSQLListener(self.alias)

    def claim(self, claim: Claim, *, now: datetime) -> Returned:
        return self.flush(starts={}, ends={}, claim=claim, worker_id="", now=now).claimed

    def flush(
        self,
        *,
        starts: dict[int, datetime],
        ends: dict[int, End],
        claim: Claim | None,
        worker_id: str,
        now: datetime,
    ) -> Flushed:
        """One statement: the parts with something to do, each a few common table
        expressions, and one row back per claim started, claim ended and job claimed (the
        job's columns NULL but for the claimed)."""
        params: list[Any] = []
        if ends:
            as_text = [_json_text(end.return_value) for end in ends.values()]
            starts_of = [end.started_at for end in ends.values()]
            params += [list(ends), as_text, starts_of, now, worker_id]
        if starts:
            params += [list(starts), list(starts), list(starts.values())]
        where = None
        if claim:
            where, selector_params = claim.selector.sql("r.queue_name")
            params += [claim.backend, *selector_params, claim.process_id, now]
        if not params:
            return Flushed(set(), set(), NOTHING)
        claiming = (where, claim.limit) if claim and where is not None else None
        sql = flush_statement(ends=bool(ends), starts=bool(starts), claim=claiming)
        with self.cursor() as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
            columns = ["claim_id", "part", *(column[0] for column in cursor.description[2:])]
        started = {row[0] for row in rows if row[1] == "s"}
        ended = {row[0] for row in rows if row[1] == "e"}
        claimed = [(row[0], *row[2:]) for row in rows if row[1] == "c"]
        return Flushed(started, ended, Returned([columns[0], *columns[2:]], claimed))

    def insert_jobs(
        self,
        shared: Sequence[Column],
        varying: Sequence[Column],
        *,
        count: int,
        now: datetime,
        ready_queues: set[str],
    ) -> list[int]:
        """One statement: the columns every job shares are sent once each, cast to their
        SQL type without a length (a cast to varchar(N) cuts a longer value silently, where
        the column's own check raises); the others as arrays, unnested in order."""
        columns = [column for column, _, _ in shared] + [column for column, _, _ in varying]
        # A column every job leaves NULL is written NULL: a parameter less to send and bind.
        select = [
            f"NULL::{sql_type}" if value is None else f"%s::{sql_type}"
            for _, sql_type, value in shared
        ]
        params = [value for _, _, value in shared if value is not None]
        source = ""
        if varying:
            names = [f"v{n}" for n in range(len(varying))]
            select += [f"v.{name}" for name in names]
            arrays = ", ".join(f"%s::{sql_type}[]" for _, sql_type, _ in varying)
            source = (
                f" FROM unnest({arrays}) WITH ORDINALITY AS v({', '.join(names)}, n) ORDER BY v.n"
            )
            params += [values for _, _, values in varying]
        elif count > 1:  # jobs alike in every column
            source = f" FROM generate_series(1, {count:d})"
        notify, notify_params = "", []
        if ready_queues:
            notify = "LEFT JOIN (SELECT pg_notify(%s, %s)) AS notified ON TRUE"
            notify_params = [CHANNEL, _payload(ready_queues)]
        sql = f"""
WITH job AS (
    INSERT INTO {JOBS} ({", ".join(f'"{column}"' for column in columns)})
    SELECT {", ".join(select)}{source}
    RETURNING id, status, backend, queue_name, priority, scheduled_at
), ready AS (
    INSERT INTO {READY} (job_id, backend, queue_name, priority, created_at)
    SELECT id, backend, queue_name, priority, %s FROM job WHERE status = 'ready'
), scheduled AS (
    INSERT INTO {SCHEDULED} (job_id, queue_name, priority, scheduled_at)
    SELECT id, queue_name, priority, scheduled_at FROM job WHERE status = 'scheduled'
)
SELECT job.id FROM job {notify} ORDER BY job.id
"""
        with self.cursor() as cursor:
            cursor.execute(sql, [*params, now, *notify_params])
            return [pk for (pk,) in cursor.fetchall()]


@functools.cache
def flush_statement(*, ends: bool, starts: bool, claim: tuple[str, int] | None) -> str:
    """A flush's statement: its parts (ends, starts, a claim of ``(where, limit)``), each
    a few common table expressions, and their rows back. Its parameters: the ends' (claim
    ids, return values, start times, now, worker id), the starts' (claim ids twice, start
    times), the claim's (backend, the selector's, process id, now), in that order."""
    parts, selects = [], []
    if ends:
        parts.append(_END)
        selects.append(_ENDED)
    if starts:
        parts.append(_START)
        selects.append(_STARTED)
    if claim is not None:
        where, limit = claim
        parts.append(_CLAIM.format(where=where, limit=limit))
        selects.append(_CLAIMED)
    return f"WITH {', '.join(parts)}\n" + "\nUNION ALL ".join(selects)


def _json_text(value: Any) -> str | None:
    """A return value as JSON text; None (SQL NULL) for None."""
    return None if value is None else json.dumps(value)


def _payload(queues: set[str]) -> str:
    payload = ",".join(sorted(queues))
    return "" if len(payload) > _MAX_PAYLOAD else payload


@functools.cache
def _preparing_cursor_class() -> "type[psycopg.Cursor[Any]]":
    """Imported on first use: a project on SQLite need not have psycopg installed."""
    from django.db.backends.postgresql.base import ServerBindingCursor

    class PreparingCursor(ServerBindingCursor):
        """Binds parameters on the server and prepares each statement it runs: psycopg
        keeps the plan on the connection, so a statement run again is not planned again."""

        def execute(
            self,
            query: "Query",
            params: "Params | None" = None,
            *,
            prepare: bool | None = True,
            binary: bool | None = None,
        ) -> Self:
            # django-stubs declares ServerBindingCursor without its base, psycopg's Cursor.
            return super().execute(query, params, prepare=prepare, binary=binary)  # type: ignore[misc, no-any-return]

    return cast("type[psycopg.Cursor[Any]]", PreparingCursor)  # a psycopg Cursor, as above


class PostgreSQLListener(Listener):
    """A connection of its own, in autocommit, LISTENing for ready jobs."""

    def __init__(self, alias: str) -> None:
        wrapper = cast("PostgreSQLWrapper", connections[alias])  # made by PostgreSQLDatabase only
        self.connection = wrapper.get_new_connection(wrapper.get_connection_params())
        self.connection.autocommit = True
        self.connection.execute(f"LISTEN {CHANNEL}")

    def fileno(self) -> int:
        return self.connection.fileno()

    def drain(self) -> set[str]:
        queues = set()
        for notify in self.connection.notifies(timeout=0):
            queues.update(notify.payload.split(","))
        return queues

    def close(self) -> None:
        self.connection.close()
