"""dq's work that depends on the database, in SQL any database Django supports understands.

A ``Database`` is bound to one database alias and works on that alias's connection in the
calling thread. This class does each piece of work a statement at a time, in one
transaction; a subclass per database (``dq.db.sqlite``, ``dq.db.postgresql``) overrides
what its database does better. Rows of jobs come back as ``Returned``: ``claim_id`` then
every column of the job, as the database returned them (the models turn them into jobs).
"""

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, NamedTuple

from django.conf import settings
from django.db import DatabaseError, NotSupportedError, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.utils import CursorWrapper
from django.utils import timezone

from ..queues import QueueSelector
from ..serialization import attempt_record

# The tables dq's own statements read and write (the models' db_table).
JOBS = "dq_job"
READY = "dq_ready_execution"
CLAIMED = "dq_claimed_execution"
SCHEDULED = "dq_scheduled_execution"
PAUSES = "dq_pause"
# The ready rows a claim may take: of its backend, its queues (``where``, a selector's
# SQL over r.queue_name, to format in) and no paused queue. Parameters: the backend, then
# the selector's.
WAITING = f"""FROM {READY} r WHERE r.backend = %s AND {{where}}
AND NOT EXISTS (SELECT 1 FROM {PAUSES} p WHERE p.queue_name = r.queue_name)"""

# A column of jobs to insert: (column, SQL type, value) when every job has the same value,
# (column, SQL type, [value per job]) otherwise; values prepared for the database.
Column = tuple[str, str, Any]


@dataclass(frozen=True, slots=True)
class Claim:
    """What a worker claims: up to ``limit`` jobs of backend alias ``backend`` in the queues
    ``selector`` names, for the process ``process_id``."""

    selector: QueueSelector
    limit: int
    backend: str
    process_id: int


@dataclass(frozen=True, slots=True)
class End:
    """A successful run to record: what it returned and when it started."""

    return_value: Any
    started_at: datetime


class Returned(NamedTuple):
    """Rows of jobs a statement returned: ``claim_id`` then the job's columns."""

    columns: list[str]
    rows: list[tuple[Any, ...]]


NOTHING = Returned(["claim_id"], [])


class Flushed(NamedTuple):
    """What a worker's ``flush`` wrote: the claim ids whose start and whose end it
    recorded, and the jobs it claimed."""

    started: set[int]
    ended: set[int]
    claimed: Returned


class Listener:
    """A connection of its own on which a worker waits to be woken: ``fileno()`` turns
    readable when jobs became ready; ``drain()`` returns the queues notified (an empty
    name means any queue)."""

    def fileno(self) -> int:
        raise NotImplementedError

    def drain(self) -> set[str]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class Database:
    """Any database: polling, this host's clock, claims and ends in a few statements."""

    # How often an idle worker polls for ready jobs (seconds).
    polling_interval: ClassVar[float] = 0.1
    # Whether listen() can wake idle workers when jobs become ready.
    notifies: ClassVar[bool] = False

    def __init__(self, alias: str) -> None:
        self.alias = alias

    @property
    def connection(self) -> BaseDatabaseWrapper:
        return connections[self.alias]

    # --- transactions and sessions ------------------------------------------------------

    @contextlib.contextmanager
    def atomic(self, *, savepoint: bool = True) -> Iterator[None]:
        """A transaction of dq's own (``transaction.atomic``); inside another one a
        savepoint (or, with ``savepoint=False``, part of it)."""
        with transaction.atomic(using=self.alias, savepoint=savepoint):
            yield

    def cursor(self) -> CursorWrapper:
        """The cursor dq runs its own statements with."""
        return self.connection.cursor()

    def now(self) -> datetime:
        """The time by the database's clock: heartbeats of every host are written and
        compared by this one clock. Here: this host's."""
        return timezone.now()

    def lock_conflict(self, error: DatabaseError) -> bool:
        """Whether ``error`` is a lock wait that timed out, a deadlock or a serialization
        failure: its transaction is rolled back and may succeed if run again."""
        return False

    def session_id(self) -> int | None:
        """The database session of this thread's connection, if another connection can
        end it (``terminate_session``)."""
        return None

    def terminate_session(self, session: int) -> None:
        """End another connection's session, rolling back its transaction."""
        raise NotSupportedError(f"{type(self).__name__} cannot end another session.")

    # --- what the admin's overview and dq_status read -------------------------------------

    def ended_per_minute(self, since: datetime) -> list[tuple[str, str, datetime, int]]:
        """Jobs that ended successful or failed at ``since`` or later, counted per queue,
        status and minute: (queue, status, the minute's start, jobs). A minute is cut from
        the stored time (UTC where USE_TZ is set, which needs no time zone tables) by
        ``_minute_text``, and the jobs are found by their finish time's index."""
        adapt = self.connection.ops.adapt_datetimefield_value
        with self.cursor() as cursor:
            cursor.execute(
                f"SELECT queue_name, status, {self._minute_text('finished_at')}, COUNT(*) "
                f"FROM {JOBS}{self._by_finish_time()} WHERE finished_at >= %s "
                "AND status IN ('successful', 'failed') GROUP BY 1, 2, 3",
                [adapt(since)],
            )
            rows = cursor.fetchall()
        zone = UTC if settings.USE_TZ else None
        return [
            (queue, status, datetime.fromisoformat(f"{minute}:00").replace(tzinfo=zone), jobs)
            for queue, status, minute, jobs in rows
        ]

    def _minute_text(self, column: str) -> str:
        """SQL of ``column``'s minute as text, "YYYY-MM-DD HH:MM" (ISO 8601's own order)."""
        return f"SUBSTR(CAST({column} AS CHAR(30)), 1, 16)"

    def _by_finish_time(self) -> str:
        """What, after the jobs table's name, makes the planner read it by finish time."""
        return ""

    # --- wake-ups -------------------------------------------------------------------------

    def notify_ready(self, queues: set[str]) -> None:
        """Wake idle workers of ``queues`` when the current transaction commits."""

    def listen(self) -> Listener:
        raise NotSupportedError(f"{type(self).__name__} cannot wake idle workers.")

    # --- the job flow ---------------------------------------------------------------------

    def claim(self, claim: Claim, *, now: datetime) -> Returned:
        """Claim up to ``claim.limit`` ready jobs of backend alias ``claim.backend`` in the
        queues ``claim.selector`` names and not paused, highest priority first, for process
        ``claim.process_id``: move each from ready to claimed. Their runs have not started:
        ``flush`` records a start. Four statements: lock the ready rows to take (passing
        over those another claim locked), delete them, insert their claims, read the
        claimed jobs; no RETURNING needed."""
        where, params = claim.selector.sql("r.queue_name")
        if not self._any_ready(claim):
            return NOTHING
        with self.atomic(savepoint=False), self.cursor() as cursor:
            cursor.execute(
                f"SELECT r.id, r.job_id {WAITING.format(where=where)} "
                f"ORDER BY r.priority DESC, r.job_id "
                f"{self.connection.ops.limit_offset_sql(0, claim.limit)}{self._skip_locked()}",
                [claim.backend, *params],
            )
            picked = cursor.fetchall()
            if not picked:
                return NOTHING
            job_ids = [job_id for _, job_id in picked]
            self._delete_by_id(cursor, READY, [pk for pk, _ in picked])
            claimed_at = self.connection.ops.adapt_datetimefield_value(now)
            cursor.execute(
                f"INSERT INTO {CLAIMED} (job_id, process_id, claimed_at) VALUES "
                + ", ".join(["(%s, %s, %s)"] * len(job_ids)),
                [value for job_id in job_ids for value in (job_id, claim.process_id, claimed_at)],
            )
            # The claimed jobs with their claim ids: a job has one claim at most.
            cursor.execute(
                f"SELECT c.id AS claim_id, j.* FROM {CLAIMED} c JOIN {JOBS} j ON j.id = c.job_id "
                f"WHERE c.job_id IN ({_marks(job_ids)}) ORDER BY j.id",
                job_ids,
            )
            columns = [column[0] for column in cursor.description]
            return Returned(columns, list(cursor.fetchall()))

    def _any_ready(self, claim: Claim) -> bool:
        """Outside a transaction, whether ``claim`` may find a job, by a read that locks
        nothing: an idle worker's poll is then one statement, not a transaction (on SQLite,
        not a wait for the write lock every writer needs). Inside one (a flush), True."""
        if self.connection.in_atomic_block:
            return True
        where, params = claim.selector.sql("r.queue_name")
        with self.cursor() as cursor:
            cursor.execute(
                f"SELECT 1 {WAITING.format(where=where)} "
                f"{self.connection.ops.limit_offset_sql(0, 1)}",
                [claim.backend, *params],
            )
            return cursor.fetchone() is not None

    def flush(
        self,
        *,
        starts: dict[int, datetime],
        ends: dict[int, End],
        claim: Claim | None,
        worker_id: str,
        now: datetime,
    ) -> Flushed:
        """Write what a worker has to write, in one transaction: the ``starts`` of runs
        (claim id -> when it started), the ``ends`` of successful runs (claim id -> its
        ``End``), and a ``claim`` of more jobs. A run's end also records its start when
        that was not recorded yet. Claims already gone (taken over) match nothing, and are
        missing from what comes back; a start recorded before counts as recorded."""
        if not (starts or ends):
            return Flushed(set(), set(), self.claim(claim, now=now) if claim else NOTHING)
        with self.atomic(savepoint=False):
            ended = self._end(ends, worker_id=worker_id, now=now) if ends else set()
            started = self._start(starts) if starts else set()
            claimed = self.claim(claim, now=now) if claim else NOTHING
        return Flushed(started, ended, claimed)

    def _start(self, starts: dict[int, datetime]) -> set[int]:
        adapt = self.connection.ops.adapt_datetimefield_value
        with self.cursor() as cursor:
            found = self._lock_claims(cursor, list(starts))
            first = [(claim_id, job_id) for claim_id, job_id, at in found if at is None]
            if first:
                by_claim = _case([(c, adapt(starts[c])) for c, _ in first])
                by_job = _case([(j, adapt(starts[c])) for c, j in first])
                claims, jobs = [c for c, _ in first], [j for _, j in first]
                cursor.execute(
                    f"UPDATE {CLAIMED} SET started_at = {by_claim.sql} "
                    f"WHERE id IN ({_marks(claims)})",
                    [*by_claim.params, *claims],
                )
                cursor.execute(
                    f"UPDATE {JOBS} SET status = 'running', attempt_count = attempt_count + 1, "
                    f"started_at = COALESCE(started_at, {by_job.sql}), "
                    f"last_attempted_at = {by_job.sql} WHERE id IN ({_marks(jobs)})",
                    [*by_job.params, *by_job.params, *jobs],
                )
        return {claim_id for claim_id, _, _ in found}

    def _end(self, ends: dict[int, End], *, worker_id: str, now: datetime) -> set[int]:
        ops = self.connection.ops
        with self.cursor() as cursor:
            ended = self._lock_claims(cursor, list(ends))
            if not ended:
                return set()
            self._delete_by_id(cursor, CLAIMED, [row[0] for row in ended])
            job_ids = [job_id for _, job_id, _ in ended]
            cursor.execute(
                f"SELECT id, attempts FROM {JOBS} WHERE id IN ({_marks(job_ids)})", job_ids
            )
            attempts = {job_id: _json(value) for job_id, value in cursor.fetchall()}
            runs = [(job_id, ends[claim_id], recorded) for claim_id, job_id, recorded in ended]
            history = _case(
                [
                    (
                        j,
                        ops.adapt_json_value(
                            [*attempts[j], attempt_record(worker_id, e.started_at, now)], None
                        ),
                    )
                    for j, e, _ in runs
                ]
            )
            value = _case([(j, ops.adapt_json_value(e.return_value, None)) for j, e, _ in runs])
            counted = _case([(j, 0 if recorded is not None else 1) for j, _, recorded in runs])
            began = _case([(j, ops.adapt_datetimefield_value(e.started_at)) for j, e, _ in runs])
            cursor.execute(
                f"UPDATE {JOBS} SET status = 'successful', finished_at = %s, "
                f"attempts = {history.sql}, return_value = {value.sql}, "
                f"attempt_count = attempt_count + {counted.sql}, "
                f"started_at = COALESCE(started_at, {began.sql}), last_attempted_at = {began.sql}, "
                "unique_key = CASE WHEN unique_for IS NULL THEN NULL ELSE unique_key END "
                f"WHERE id IN ({_marks(job_ids)})",
                [
                    ops.adapt_datetimefield_value(now),
                    *history.params,
                    *value.params,
                    *counted.params,
                    *began.params,
                    *began.params,
                    *job_ids,
                ],
            )
        return {claim_id for claim_id, _, _ in ended}

    def insert_jobs(
        self,
        shared: Sequence[Column],
        varying: Sequence[Column],
        *,
        count: int,
        now: datetime,
        ready_queues: set[str],
    ) -> list[int]:
        """Insert ``count`` jobs and their ready or scheduled rows, and wake the workers of
        ``ready_queues``. ``shared`` are the columns every job has the same value in,
        ``varying`` the others with a value per job. Returns the new jobs' ids, in the
        order of the values given."""
        columns = [column for column, _, _ in shared] + [column for column, _, _ in varying]
        rows = [
            [value for _, _, value in shared] + [values[n] for _, _, values in varying]
            for n in range(count)
        ]
        at = {column: position for position, column in enumerate(columns)}
        with self.atomic(savepoint=False), self.cursor() as cursor:
            ids = self._insert_rows(cursor, JOBS, columns, rows)
            created_at = self.connection.ops.adapt_datetimefield_value(now)
            ready = [
                [pk, row[at["backend"]], row[at["queue_name"]], row[at["priority"]], created_at]
                for pk, row in zip(ids, rows, strict=True)
                if row[at["status"]] == "ready"
            ]
            scheduled = [
                [pk, row[at["queue_name"]], row[at["priority"]], row[at["scheduled_at"]]]
                for pk, row in zip(ids, rows, strict=True)
                if row[at["status"]] == "scheduled"
            ]
            if ready:
                columns = ["job_id", "backend", "queue_name", "priority", "created_at"]
                self._insert_rows(cursor, READY, columns, ready, returning=False)
                self.notify_ready(ready_queues)
            if scheduled:
                columns = ["job_id", "queue_name", "priority", "scheduled_at"]
                self._insert_rows(cursor, SCHEDULED, columns, scheduled, returning=False)
        return ids

    # --- helpers --------------------------------------------------------------------------

    def lockable(self, *relations: str) -> tuple[str, ...]:
        """What to give ``select_for_update(of=...)`` to lock ``relations`` of a join:
        themselves where the database can name them; nothing where it locks every table a
        query joins (MySQL), which is those."""
        return relations if self.connection.features.has_select_for_update_of else ()

    def _lock_claims(self, cursor: CursorWrapper, claim_ids: list[int]) -> list[tuple[Any, ...]]:
        """Lock the claims of ``claim_ids`` that are still there, in id order: their rows
        ``(id, job_id, started_at)``."""
        cursor.execute(
            f"SELECT id, job_id, started_at FROM {CLAIMED} WHERE id IN ({_marks(claim_ids)}) "
            f"ORDER BY id{self._locking()}",
            claim_ids,
        )
        return list(cursor.fetchall())

    def _delete_by_id(self, cursor: CursorWrapper, table: str, ids: list[int]) -> None:
        """Delete the rows of ``table`` whose ids are ``ids`` (locked already)."""
        cursor.execute(f"DELETE FROM {table} WHERE id IN ({_marks(ids)})", ids)

    def _skip_locked(self) -> str:
        """Lock the rows read, passing over those locked by others (where the database can)."""
        features = self.connection.features
        if not features.has_select_for_update_skip_locked:
            return ""
        return " " + self.connection.ops.for_update_sql(skip_locked=True)

    def _locking(self) -> str:
        """Lock the rows read until the transaction ends (where the database can)."""
        if not self.connection.features.has_select_for_update:
            return ""
        return " " + self.connection.ops.for_update_sql()

    def _datetime(self, value: Any) -> datetime:
        """A datetime column's value as the database driver returned it, as an aware
        datetime (SQLite and MySQL return text or naive values)."""
        convert: Callable[..., datetime] | None = getattr(
            self.connection.ops, "convert_datetimefield_value", None
        )
        return convert(value, None, self.connection) if convert else value

    def _jobs(self, cursor: CursorWrapper, claim_of: dict[int, int]) -> Returned:
        """The jobs of ``claim_of`` (job id -> claim id), each row led by its claim id."""
        job_ids = list(claim_of)
        cursor.execute(f"SELECT * FROM {JOBS} WHERE id IN ({_marks(job_ids)}) ORDER BY id", job_ids)
        return led_by_claims(cursor, claim_of)

    def _insert_rows(
        self,
        cursor: CursorWrapper,
        table: str,
        columns: list[str],
        rows: list[list[Any]],
        *,
        returning: bool = True,
    ) -> list[int]:
        """Insert ``rows`` into ``table`` in as few statements as the database's limit on
        parameters allows; the new ids in the order of the rows if ``returning``."""
        quoted = ", ".join(self.connection.ops.quote_name(column) for column in columns)
        size = max(1, (self.connection.features.max_query_params or 10**6) // len(columns))
        can_return = self.connection.features.can_return_rows_from_bulk_insert
        # Without RETURNING, one row a statement: each new id is the last one inserted.
        per_statement = size if can_return or not returning else 1
        ids = []
        for start in range(0, len(rows), per_statement):
            batch = rows[start : start + per_statement]
            values = ", ".join(["(" + ", ".join(["%s"] * len(columns)) + ")"] * len(batch))
            sql = f"INSERT INTO {table} ({quoted}) VALUES {values}"
            params = [value for row in batch for value in row]
            if returning and can_return:
                cursor.execute(f"{sql} RETURNING id", params)
                ids += [pk for (pk,) in cursor.fetchall()]
            else:
                cursor.execute(sql, params)
                if returning:
                    ids.append(self.connection.ops.last_insert_id(cursor, table, "id"))
        return ids


class Case(NamedTuple):
    """``CASE id WHEN ... THEN ... END``: a value per row of one UPDATE, and its params."""

    sql: str
    params: list[Any]


def _case(values: Sequence[tuple[int, Any]]) -> Case:
    """The CASE giving each id (``(id, value)`` pairs) its own value."""
    return Case(
        f"CASE id {' '.join(['WHEN %s THEN %s'] * len(values))} END",
        [item for pair in values for item in pair],
    )


def _marks(values: Sequence[Any]) -> str:
    return ", ".join(["%s"] * len(values))


def _json(value: Any) -> Any:
    """A JSON column's value as the driver returned it (text, or already decoded)."""
    return json.loads(value) if isinstance(value, str | bytes) else value


def led_by_claims(cursor: CursorWrapper, claim_of: dict[int, int]) -> Returned:
    """The rows of a query of whole jobs, each led by the claim id of its job."""
    columns = [column[0] for column in cursor.description]
    at_id = columns.index("id")
    rows = [(claim_of[row[at_id]], *row) for row in cursor.fetchall()]
    return Returned(["claim_id", *columns], rows)
