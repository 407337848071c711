"""SQLite: polling, this host's clock, and claims and ends in a few statements.

SQLite serialises writers; with ``transaction_mode = IMMEDIATE`` every dq
transaction takes the write lock at BEGIN, so two claims never interleave. What
PostgreSQL does in one statement takes three here (SQLite has no statements
that modify data inside a WITH), each returning the rows the next one needs, in
the caller's transaction: the fewer statements and the less Python run under
the write lock, the sooner the next writer has it. Requires SQLite 3.35
(RETURNING); ``dq.db.for_alias`` falls back to the ORM paths before that.
"""

import json

from ..conf import ALL_QUEUES
from .generic import (  # noqa: F401 - part of this module's vendor interface
    DEFAULT_POLLING_INTERVAL,
    FINISH_STATEMENT,
    Listener,
    claim_statement,
    cursor,
    database_now,
    enqueue_statement,
    finish_and_claim_statement,
    lock_conflict,
    notify_ready,
    session_id,
    terminate_session,
)

MINIMUM_VERSION = (3, 35)

_TAKE_READY = """
DELETE FROM dq_ready_execution WHERE id IN (
    SELECT r.id FROM dq_ready_execution r
    WHERE r.backend = %s AND {where}
      AND NOT EXISTS (SELECT 1 FROM dq_pause p WHERE p.queue_name = r.queue_name)
    ORDER BY r.priority DESC, r.job_id
    LIMIT {limit:d}
)
RETURNING job_id"""
_INSERT_CLAIMS = """
INSERT INTO dq_claimed_execution (job_id, process_id, claimed_at)
SELECT value, %s, %s FROM json_each(%s)
RETURNING id, job_id"""
_START = """
UPDATE dq_job
SET status = 'running',
    attempt_count = attempt_count + 1,
    started_at = COALESCE(started_at, %s),
    last_attempted_at = %s
WHERE id IN (SELECT value FROM json_each(%s))
RETURNING *"""
_END_CLAIMS = """
DELETE FROM dq_claimed_execution WHERE id IN (SELECT value FROM json_each(%s))
RETURNING id, job_id, claimed_at"""
# Each ended run as a JSON object: its job, the attempt to append, its return value
# (JSON text, or null).
_END = """
UPDATE dq_job
SET status = 'successful',
    finished_at = %s,
    return_value = ended.return_value,
    attempts = json_insert(dq_job.attempts, '$[#]', json(ended.attempt)),
    unique_key = CASE WHEN dq_job.unique_for IS NULL THEN NULL ELSE dq_job.unique_key END
FROM (
    SELECT json_extract(value, '$.job') AS job_id,
           json_extract(value, '$.attempt') AS attempt,
           json_extract(value, '$.return_value') AS return_value
    FROM json_each(%s)
) AS ended
WHERE dq_job.id = ended.job_id
RETURNING *"""


def _where(selector):
    """The claim's condition on the queue, and its parameters (a prefix compared as
    text: SQLite's LIKE ignores case)."""
    if selector == ALL_QUEUES:
        return "1", []
    if selector.endswith("*"):
        prefix = selector[:-1]
        return "substr(r.queue_name, 1, %s) = %s", [len(prefix), prefix]
    return "r.queue_name = %s", [selector]


def _returned(db, claim_of):
    """The rows of a ``RETURNING *`` of jobs, each led by its claim id: (columns, rows)."""
    columns = [column[0] for column in db.description]
    at_id = columns.index("id")
    rows = [(claim_of[row[at_id]], *row) for row in db.fetchall()]
    return ["claim_id", *columns], rows


def claim_in_transaction(connection, selector, limit, *, process_id, backend, now):
    """Claim up to ``limit`` ready jobs of backend alias ``backend`` in the queues
    ``selector`` names, highest priority first, in the caller's transaction. Returns
    (columns, rows): ``claim_id`` then every column of the job, as the database returned
    them."""
    where, params = _where(selector)
    now = connection.ops.adapt_datetimefield_value(now)
    with connection.cursor() as db:
        db.execute(_TAKE_READY.format(where=where, limit=limit), [backend, *params])
        taken = [job_id for (job_id,) in db.fetchall()]
        if not taken:
            return ["claim_id"], []
        job_ids = json.dumps(taken)
        db.execute(_INSERT_CLAIMS, [process_id, now, job_ids])
        claim_of = {job_id: claim_id for claim_id, job_id in db.fetchall()}
        db.execute(_START, [now, now, job_ids])
        return _returned(db, claim_of)


def finish_in_transaction(connection, return_values, *, attempt, now):
    """Record successful runs in the caller's transaction: delete their claims, and
    append to each job the attempt ``attempt(claimed_at)`` returns, with its return value
    (``return_values``: claim id -> JSON text or None). Claims already gone match
    nothing. Returns (columns, rows) as ``claim_in_transaction`` does."""
    with connection.cursor() as db:
        db.execute(_END_CLAIMS, [json.dumps(list(return_values))])
        ended = db.fetchall()
        if not ended:
            return ["claim_id"], []
        runs = [
            {
                "job": job_id,
                "attempt": json.dumps(
                    attempt(connection.ops.convert_datetimefield_value(claimed_at, None, None))
                ),
                "return_value": return_values[claim_id],
            }
            for claim_id, job_id, claimed_at in ended
        ]
        db.execute(_END, [connection.ops.adapt_datetimefield_value(now), json.dumps(runs)])
        return _returned(db, {job_id: claim_id for claim_id, job_id, _ in ended})
