"""PostgreSQL: one-statement claims with SKIP LOCKED, and LISTEN/NOTIFY wake-ups."""

from django.db import connections

from ..conf import ALL_QUEUES

# Idle workers are woken by NOTIFY; polling is only the fallback.
DEFAULT_POLLING_INTERVAL = 2.0
CHANNEL = "dq_ready"
_MAX_PAYLOAD = 7000  # PostgreSQL's limit is 8000 bytes; an empty payload means "any queue".

_CLAIM = """
WITH picked AS (
    SELECT r.id, r.job_id FROM dq_ready_execution r
    WHERE {where}
      AND NOT EXISTS (SELECT 1 FROM dq_pause p WHERE p.queue_name = r.queue_name)
    ORDER BY r.priority DESC, r.job_id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), removed AS (
    DELETE FROM dq_ready_execution r USING picked WHERE r.id = picked.id
    RETURNING r.job_id
), claimed AS (
    INSERT INTO dq_claimed_execution (job_id, process_id, claimed_at)
    SELECT job_id, %(process_id)s, %(now)s FROM removed
    RETURNING id, job_id
)
UPDATE dq_job j
SET status = 'running',
    attempt_count = j.attempt_count + 1,
    started_at = COALESCE(j.started_at, %(now)s),
    last_attempted_at = %(now)s
FROM claimed
WHERE j.id = claimed.job_id
RETURNING claimed.id AS claim_id, j.*
"""


def claim_statement(selector):
    """Claim up to %(limit)s ready jobs of the queues ``selector`` names, highest priority first.

    The caller adds the parameters limit, process_id and now.
    Rows: ``claim_id`` then every column of the job.
    """
    if selector == ALL_QUEUES:
        return _CLAIM.format(where="TRUE"), {}
    if selector.endswith("*"):
        prefix = selector[:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return _CLAIM.format(where="r.queue_name LIKE %(queue)s"), {"queue": prefix + "%"}
    return _CLAIM.format(where="r.queue_name = %(queue)s"), {"queue": selector}


def database_now(connection):
    with connection.cursor() as cursor:
        cursor.execute("SELECT CURRENT_TIMESTAMP")
        return cursor.fetchone()[0]


def notify_ready(connection, queues):
    payload = ",".join(sorted(queues))
    if len(payload) > _MAX_PAYLOAD:
        payload = ""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, payload])


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
