"""PostgreSQL: one-statement claims with SKIP LOCKED and finishes, LISTEN/NOTIFY wake-ups."""

import functools

from django.db import connections

from ..conf import ALL_QUEUES

# Idle workers are woken by NOTIFY; polling is only the fallback.
DEFAULT_POLLING_INTERVAL = 2.0
CHANNEL = "dq_ready"
_MAX_PAYLOAD = 7000  # PostgreSQL's limit is 8000 bytes; an empty payload means "any queue".

# Claiming: pick ready jobs (SKIP LOCKED: never wait for another claim), move each from
# ready to claimed, and start its attempt.
_CLAIM_CTES = """
picked AS (
    SELECT r.id, r.job_id FROM dq_ready_execution r
    WHERE r.backend = %(backend)s AND {where}
      AND NOT EXISTS (SELECT 1 FROM dq_pause p WHERE p.queue_name = r.queue_name)
    ORDER BY r.priority DESC, r.job_id
    LIMIT {limit:d}
    FOR UPDATE SKIP LOCKED
), removed AS (
    DELETE FROM dq_ready_execution r USING picked WHERE r.id = picked.id
    RETURNING r.job_id
), claimed AS (
    INSERT INTO dq_claimed_execution (job_id, process_id, claimed_at)
    SELECT job_id, %(process_id)s, %(now)s FROM removed
    RETURNING id, job_id
)"""
_START = """
UPDATE dq_job j
SET status = 'running',
    attempt_count = j.attempt_count + 1,
    started_at = COALESCE(j.started_at, %(now)s),
    last_attempted_at = %(now)s
FROM claimed
WHERE j.id = claimed.job_id
RETURNING claimed.id AS claim_id, j.*"""

# Finishing successful runs of one worker: each claim is deleted, and its job records the
# attempt (started when claimed), its return value and its end; a job that keeps no
# unique key after it ends (no unique_for) gives it up. Claims already gone (taken over)
# match nothing.
_FINISH_CTES = """
ended AS (
    DELETE FROM dq_claimed_execution c
    USING unnest(%(claim_ids)s::bigint[], %(return_values)s::text[]) AS v(claim_id, return_value)
    WHERE c.id = v.claim_id
    RETURNING v.claim_id, v.return_value, c.job_id, c.claimed_at
)"""
_END = """
UPDATE dq_job j
SET status = 'successful',
    finished_at = %(now)s,
    return_value = ended.return_value::jsonb,
    attempts = j.attempts || jsonb_build_array(jsonb_build_object(
        'worker_id', %(worker_id)s::text,
        'started_at', ended.claimed_at,
        'finished_at', %(now)s::timestamptz,
        'error', NULL
    )),
    unique_key = CASE WHEN j.unique_for IS NULL THEN NULL ELSE j.unique_key END
FROM ended
WHERE j.id = ended.job_id
RETURNING ended.claim_id, j.*"""


def _where(selector):
    """The claim's condition on the queue, and its parameters."""
    if selector == ALL_QUEUES:
        return "TRUE", {}
    if selector.endswith("*"):
        prefix = selector[:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return "r.queue_name LIKE %(queue)s", {"queue": prefix + "%"}
    return "r.queue_name = %(queue)s", {"queue": selector}


def claim_statement(selector, limit):
    """Claim up to ``limit`` ready jobs of the queues ``selector`` names, highest priority
    first.

    The limit is part of the text, not a parameter: a prepared statement is planned once,
    and with an unknown limit PostgreSQL plans for a tenth of the table (hash joins over
    whole tables) instead of the few rows a claim takes. The caller adds the parameters
    process_id, backend (the alias whose jobs it claims) and now. Rows: ``claim_id``
    then every column of the job.
    """
    where, params = _where(selector)
    return f"WITH {_CLAIM_CTES.format(where=where, limit=limit)}{_START}", params


# Successful runs of one worker, ended in one statement. Parameters: claim_ids,
# return_values (JSON text, or NULL), worker_id, now. Rows: ``claim_id`` then every
# column of the job.
FINISH_STATEMENT = f"WITH {_FINISH_CTES}{_END}"


def finish_and_claim_statement(selector, limit):
    """What FINISH_STATEMENT does and what ``claim_statement(selector, limit)`` does, in one
    statement. Rows: those of both, the finished jobs with the claim ids given, the
    claimed ones with new claim ids."""
    where, params = _where(selector)
    return (
        f"WITH {_FINISH_CTES}, finished AS ({_END}), "
        f"{_CLAIM_CTES.format(where=where, limit=limit)}, "
        f"started AS ({_START})\nSELECT * FROM finished UNION ALL SELECT * FROM started",
        params,
    )


# Claims and ends are one statement each here.
claim_in_transaction = None
finish_in_transaction = None


def enqueue_statement(shared, varying, *, count, now, ready_queues):
    """One statement that inserts ``count`` jobs, creates their ready or scheduled rows
    and, if any is ready, wakes the workers of ``ready_queues``.

    ``shared``: ``(column, SQL type, value)`` of the columns every job has the same value
    in; ``varying``: ``(column, SQL type, values)`` of the others, one value per job (sent
    as arrays). Rows: the new jobs' ids, in the order of the values given.
    """
    columns = [column for column, _, _ in shared] + [column for column, _, _ in varying]
    select = [f"%s::{sql_type}" for _, sql_type, _ in shared]
    params = [value for _, _, value in shared]
    source = ""
    if varying:
        names = [f"v{n}" for n in range(len(varying))]
        select += [f"v.{name}" for name in names]
        arrays = ", ".join(f"%s::{sql_type}[]" for _, sql_type, _ in varying)
        source = f" FROM unnest({arrays}) WITH ORDINALITY AS v({', '.join(names)}, n) ORDER BY v.n"
        params += [values for _, _, values in varying]
    elif count > 1:  # jobs alike in every column
        source = f" FROM generate_series(1, {count:d})"
    notify, notify_params = "", []
    if ready_queues:
        notify = "LEFT JOIN (SELECT pg_notify(%s, %s)) AS notified ON TRUE"
        notify_params = [CHANNEL, _payload(ready_queues)]
    sql = f"""
WITH job AS (
    INSERT INTO dq_job ({", ".join(f'"{column}"' for column in columns)})
    SELECT {", ".join(select)}{source}
    RETURNING id, status, backend, queue_name, priority, scheduled_at
), ready AS (
    INSERT INTO dq_ready_execution (job_id, backend, queue_name, priority, created_at)
    SELECT id, backend, queue_name, priority, %s FROM job WHERE status = 'ready'
), scheduled AS (
    INSERT INTO dq_scheduled_execution (job_id, queue_name, priority, scheduled_at)
    SELECT id, queue_name, priority, scheduled_at FROM job WHERE status = 'scheduled'
)
SELECT job.id FROM job {notify} ORDER BY job.id
"""
    return sql, [*params, now, *notify_params]


# A prepare threshold no statement reaches by being run often: only those run with
# prepare=True are prepared.
_NEVER_BY_COUNT = 2**31 - 1


@functools.cache
def _preparing_cursor_class():
    """Imported on first use: a project on SQLite need not have psycopg installed."""
    from django.db.backends.postgresql.base import ServerBindingCursor

    class PreparingCursor(ServerBindingCursor):
        """Binds parameters on the server and prepares each statement it runs: psycopg
        keeps the plan on the connection, so a statement run again is not planned again."""

        def execute(self, query, params=None, *, prepare=True, binary=None):
            return super().execute(query, params, prepare=prepare, binary=binary)

    return PreparingCursor


def cursor(alias):
    """A Django cursor for dq's claims, ends and enqueues. Planning them costs about as
    much as running them, so they are prepared, once per connection; unless the project
    turned prepared statements off with ``OPTIONS["prepare_threshold"] = None`` (as
    behind a connection pooler that cannot keep them)."""
    wrapper = connections[alias]
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


def database_now(connection):
    with connection.cursor() as cursor:
        cursor.execute("SELECT CURRENT_TIMESTAMP")
        return cursor.fetchone()[0]


def _payload(queues):
    payload = ",".join(sorted(queues))
    return "" if len(payload) > _MAX_PAYLOAD else payload


def notify_ready(connection, queues):
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, _payload(queues)])


# serialization_failure, deadlock_detected, lock_not_available (lock_timeout).
_LOCK_CONFLICTS = {"40001", "40P01", "55P03"}


def lock_conflict(error):
    """Whether the DatabaseError ``error`` is a lock wait that timed out, a deadlock or a
    serialization failure: its transaction is rolled back and may succeed if run again."""
    return getattr(error.__cause__, "sqlstate", None) in _LOCK_CONFLICTS


def session_id(alias):
    """The server process id of this thread's connection to ``alias``."""
    return connections[alias].connection.info.backend_pid


def terminate_session(alias, session):
    """End another connection's session, rolling back its transaction; waits up to 5 s."""
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s, 5000)", [session])


class Listener:
    """A connection of its own, in autocommit, LISTENing for ready jobs."""

    def __init__(self, alias):
        wrapper = connections[alias]
        self.connection = wrapper.get_new_connection(wrapper.get_connection_params())
        self.connection.autocommit = True
        self.connection.execute(f"LISTEN {CHANNEL}")

    def fileno(self):
        return self.connection.fileno()

    def drain(self):
        """The queues notified since the last drain; an empty name means any queue."""
        queues = set()
        for notify in self.connection.notifies(timeout=0):
            queues.update(notify.payload.split(","))
        return queues

    def close(self):
        self.connection.close()
