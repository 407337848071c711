"""The database's own ceiling: the bare SQL one job needs, in a tight loop, without dq.

Per job, three transactions, each one statement on PostgreSQL (autocommit):

- enqueue: insert the job row and its ready row;
- claim: take the first ready row with ``FOR UPDATE SKIP LOCKED``, delete it, mark the
  job running;
- finish: mark the job successful with its finish time.

On SQLite each is a ``BEGIN IMMEDIATE`` transaction of the same statements; on MySQL and
MariaDB, which have no writing CTE, a transaction of the same statements ended by
``COMMIT``, at the READ COMMITTED Django's connections use. Two loops:
``job`` does all three per job (so it includes the insert that dq's drain does not);
``drain`` claims and finishes a backlog inserted beforehand, which is what a dq drain
does. Each runs on 1 connection and on several (threads) for a fixed time.
"""

import sqlite3
import threading
import time

import MySQLdb
import psycopg

PAYLOAD = '{"task_path": "benchmarks.tasks.noop", "args": [], "kwargs": {}}'

POSTGRESQL_TABLES = """
DROP TABLE IF EXISTS bench_ceiling_ready, bench_ceiling_job;
CREATE TABLE bench_ceiling_job (
    id bigserial PRIMARY KEY, payload jsonb NOT NULL, status varchar(10) NOT NULL,
    enqueued_at timestamptz NOT NULL DEFAULT now(), finished_at timestamptz
);
CREATE TABLE bench_ceiling_ready (
    id bigserial PRIMARY KEY, job_id bigint NOT NULL UNIQUE REFERENCES bench_ceiling_job
);
"""

POSTGRESQL_ENQUEUE = """
WITH job AS (INSERT INTO bench_ceiling_job (payload, status) VALUES (%s, 'ready') RETURNING id)
INSERT INTO bench_ceiling_ready (job_id) SELECT id FROM job
"""

POSTGRESQL_CLAIM = """
WITH picked AS (
    SELECT id FROM bench_ceiling_ready ORDER BY job_id LIMIT 1 FOR UPDATE SKIP LOCKED
), removed AS (
    DELETE FROM bench_ceiling_ready r USING picked WHERE r.id = picked.id RETURNING r.job_id
)
UPDATE bench_ceiling_job j SET status = 'running' FROM removed WHERE j.id = removed.job_id
RETURNING j.id, j.payload
"""

POSTGRESQL_FINISH = (
    "UPDATE bench_ceiling_job SET status = 'successful', finished_at = now() WHERE id = %s"
)

SQLITE_TABLES = """
DROP TABLE IF EXISTS bench_ceiling_ready;
DROP TABLE IF EXISTS bench_ceiling_job;
CREATE TABLE bench_ceiling_job (
    id integer PRIMARY KEY AUTOINCREMENT, payload text NOT NULL, status varchar(10) NOT NULL,
    enqueued_at datetime NOT NULL DEFAULT CURRENT_TIMESTAMP, finished_at datetime
);
CREATE TABLE bench_ceiling_ready (
    id integer PRIMARY KEY AUTOINCREMENT,
    job_id bigint NOT NULL UNIQUE REFERENCES bench_ceiling_job
);
"""

MYSQL_TABLES = (
    "DROP TABLE IF EXISTS bench_ceiling_ready, bench_ceiling_job",
    """CREATE TABLE bench_ceiling_job (
        id bigint AUTO_INCREMENT PRIMARY KEY, payload json NOT NULL, status varchar(10) NOT NULL,
        enqueued_at datetime(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), finished_at datetime(6)
    ) ENGINE = InnoDB""",
    """CREATE TABLE bench_ceiling_ready (
        id bigint AUTO_INCREMENT PRIMARY KEY, job_id bigint NOT NULL UNIQUE,
        FOREIGN KEY (job_id) REFERENCES bench_ceiling_job (id)
    ) ENGINE = InnoDB""",
)


class PostgreSQL:
    def __init__(self, params):
        self.params = params

    def connect(self):
        return psycopg.connect(**self.params, autocommit=True)

    def create_tables(self):
        with self.connect() as connection:
            connection.execute(POSTGRESQL_TABLES)

    def drop_tables(self):
        with self.connect() as connection:
            connection.execute("DROP TABLE IF EXISTS bench_ceiling_ready, bench_ceiling_job")

    def enqueue(self, connection):
        connection.execute(POSTGRESQL_ENQUEUE, [PAYLOAD])

    def claim(self, connection):
        row = connection.execute(POSTGRESQL_CLAIM).fetchone()
        return row[0] if row else None

    def finish(self, connection, job_id):
        connection.execute(POSTGRESQL_FINISH, [job_id])

    def backlog(self, count):
        with self.connect() as connection:
            connection.execute(
                "WITH job AS (INSERT INTO bench_ceiling_job (payload, status) "
                "SELECT %s, 'ready' FROM generate_series(1, %s) RETURNING id) "
                "INSERT INTO bench_ceiling_ready (job_id) SELECT id FROM job ORDER BY id",
                [PAYLOAD, count],
            )
            connection.execute("VACUUM ANALYZE bench_ceiling_job")
            connection.execute("VACUUM ANALYZE bench_ceiling_ready")


class SQLite:
    def __init__(self, path):
        self.path = path

    def connect(self):
        # As dq's README configures SQLite: WAL, synchronous=NORMAL, a 20 s busy timeout.
        connection = sqlite3.connect(
            self.path, timeout=20, isolation_level=None, check_same_thread=False
        )
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    def create_tables(self):
        connection = self.connect()
        connection.executescript(SQLITE_TABLES)
        connection.close()

    def drop_tables(self):
        connection = self.connect()
        connection.executescript(
            "DROP TABLE IF EXISTS bench_ceiling_ready; DROP TABLE IF EXISTS bench_ceiling_job;"
        )
        connection.close()

    def enqueue(self, connection):
        connection.execute("BEGIN IMMEDIATE")
        job_id = connection.execute(
            "INSERT INTO bench_ceiling_job (payload, status) VALUES (?, 'ready')", [PAYLOAD]
        ).lastrowid
        connection.execute("INSERT INTO bench_ceiling_ready (job_id) VALUES (?)", [job_id])
        connection.execute("COMMIT")

    def claim(self, connection):
        connection.execute("BEGIN IMMEDIATE")
        row = connection.execute(
            "SELECT id, job_id FROM bench_ceiling_ready ORDER BY job_id LIMIT 1"
        ).fetchone()
        if row is not None:
            connection.execute("DELETE FROM bench_ceiling_ready WHERE id = ?", [row[0]])
            connection.execute(
                "UPDATE bench_ceiling_job SET status = 'running' WHERE id = ?", [row[1]]
            )
        connection.execute("COMMIT")
        return row[1] if row else None

    def finish(self, connection, job_id):
        connection.execute("BEGIN IMMEDIATE")
        connection.execute(
            "UPDATE bench_ceiling_job SET status = 'successful', "
            "finished_at = strftime('%Y-%m-%d %H:%M:%f', 'now') WHERE id = ?",
            [job_id],
        )
        connection.execute("COMMIT")

    def backlog(self, count):
        connection = self.connect()
        connection.execute("BEGIN IMMEDIATE")
        connection.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
            "INSERT INTO bench_ceiling_job (payload, status) SELECT ?, 'ready' FROM n",
            [count, PAYLOAD],
        )
        connection.execute(
            "INSERT INTO bench_ceiling_ready (job_id) SELECT id FROM bench_ceiling_job "
            "WHERE status = 'ready' ORDER BY id"
        )
        connection.execute("COMMIT")
        connection.close()


class MySQL:
    """MySQL or MariaDB through mysqlclient, Django's driver: each step a transaction that
    ``COMMIT`` ends (the driver's connections start with autocommit off)."""

    def __init__(self, params):
        self.params = params

    def connect(self):
        return MySQLdb.connect(
            **self.params,
            charset="utf8mb4",
            init_command="SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
        )

    def execute(self, statements):
        connection = self.connect()
        with connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
        connection.close()

    def create_tables(self):
        self.execute(MYSQL_TABLES)

    def drop_tables(self):
        self.execute(MYSQL_TABLES[:1])

    def enqueue(self, connection):
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO bench_ceiling_job (payload, status) VALUES (%s, 'ready')", [PAYLOAD]
            )
            cursor.execute("INSERT INTO bench_ceiling_ready (job_id) VALUES (LAST_INSERT_ID())")
        connection.commit()

    def claim(self, connection):
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT id, job_id FROM bench_ceiling_ready ORDER BY job_id LIMIT 1 "
                "FOR UPDATE SKIP LOCKED"
            )
            row = cursor.fetchone()
            if row is not None:
                cursor.execute("DELETE FROM bench_ceiling_ready WHERE id = %s", [row[0]])
                cursor.execute(
                    "UPDATE bench_ceiling_job SET status = 'running' WHERE id = %s", [row[1]]
                )
        connection.commit()
        return row[1] if row else None

    def finish(self, connection, job_id):
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE bench_ceiling_job SET status = 'successful', "
                "finished_at = UTC_TIMESTAMP(6) WHERE id = %s",
                [job_id],
            )
        connection.commit()

    def backlog(self, count):
        connection = self.connect()
        with connection.cursor() as cursor:
            # mysqlclient sends these as multi-row INSERTs.
            cursor.executemany(
                "INSERT INTO bench_ceiling_job (payload, status) VALUES (%s, 'ready')",
                [(PAYLOAD,)] * count,
            )
            cursor.execute(
                "INSERT INTO bench_ceiling_ready (job_id) SELECT id FROM bench_ceiling_job "
                "WHERE status = 'ready' ORDER BY id"
            )
            connection.commit()
            cursor.execute("ANALYZE TABLE bench_ceiling_job, bench_ceiling_ready")
            cursor.fetchall()
        connection.close()


def run_loop(database, *, connections, seconds, enqueue):
    """Jobs per second of ``connections`` threads looping for ``seconds``: enqueue (if asked),
    claim and finish one job per turn. Also the mean milliseconds of each step."""
    database.create_tables()
    if not enqueue:
        # Enough backlog for the fastest loop: never let a drain run dry.
        database.backlog(max(20_000, int(40_000 * seconds)))
    start = threading.Barrier(connections + 1)
    totals = []
    lock = threading.Lock()

    def loop():
        connection = database.connect()
        steps = {"enqueue": 0.0, "claim": 0.0, "finish": 0.0}
        done = 0
        start.wait()
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            before = time.perf_counter()
            if enqueue:
                database.enqueue(connection)
            enqueued = time.perf_counter()
            job_id = database.claim(connection)
            claimed = time.perf_counter()
            if job_id is None:
                continue
            database.finish(connection, job_id)
            finished = time.perf_counter()
            steps["enqueue"] += enqueued - before
            steps["claim"] += claimed - enqueued
            steps["finish"] += finished - claimed
            done += 1
        connection.close()
        with lock:
            totals.append((done, steps))

    threads = [threading.Thread(target=loop) for _ in range(connections)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    database.drop_tables()
    done = sum(count for count, _ in totals)
    result = {
        "connections": connections,
        "seconds": round(elapsed, 3),
        "jobs": done,
        "jobs_per_s": done / elapsed,
    }
    for step in ("enqueue", "claim", "finish") if enqueue else ("claim", "finish"):
        result[f"{step}_ms"] = 1000 * sum(steps[step] for _, steps in totals) / max(done, 1)
    return result


def measure(database, *, seconds, many):
    """The ceiling of ``database`` (a PostgreSQL, MySQL or SQLite): both loops, on 1 and
    ``many`` connections."""
    return {
        f"{kind}_{connections}": run_loop(
            database, connections=connections, seconds=seconds, enqueue=kind == "job"
        )
        for kind in ("job", "drain")
        for connections in (1, many)
    }
