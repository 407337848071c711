"""A PostgreSQL cluster of the tests' own, for restarting under dq: outage tests and the
chaos run stop and restart it without disturbing anyone else's database.

Debian's tools manage it (``pg_createcluster``, ``pg_ctlcluster``), which needs root;
where the cluster already runs, no root is needed. ``python -m tests.pgcluster`` makes
sure it exists and runs (``.ci/run`` calls it).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg

NAME = os.environ.get("DQ_CHAOS_CLUSTER", "dqchaos")
PORT = int(os.environ.get("DQ_CHAOS_PORT", "5440"))
HOST = "127.0.0.1"
USER = "postgres"
READY_TIMEOUT = 60.0
# A test cluster: more connections than the default 100 for several dq_work at once, and
# no fsync (a restart is always clean here, so nothing committed is ever lost).
SETTINGS = {"max_connections": "300", "fsync": "off"}


class Unavailable(Exception):
    """The cluster does not run and cannot be started here."""


def version():
    """The newest PostgreSQL major version installed (Debian layout)."""
    versions = sorted(
        (path.name for path in Path("/usr/lib/postgresql").glob("*") if path.name.isdigit()),
        key=int,
    )
    if not versions:
        raise Unavailable("no PostgreSQL server under /usr/lib/postgresql")
    return versions[-1]


def _clusters():
    try:
        output = subprocess.run(
            ["pg_lsclusters", "--json"], check=True, capture_output=True, text=True
        ).stdout
    except (FileNotFoundError, subprocess.CalledProcessError) as error:
        raise Unavailable(f"pg_lsclusters failed: {error}") from None
    return json.loads(output or "[]")


def _cluster():
    return next((c for c in _clusters() if c["cluster"] == NAME), None)


def _run(*command):
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise Unavailable(f"{' '.join(command)} failed: {(result.stderr or result.stdout).strip()}")


def _ctl(action):
    cluster = _cluster()
    if cluster is None:
        raise Unavailable(f"cluster {NAME} does not exist")
    _run("pg_ctlcluster", "--skip-systemctl-redirect", str(cluster["version"]), NAME, action)


def reachable(dbname="postgres"):
    try:
        psycopg.connect(host=HOST, port=PORT, user=USER, dbname=dbname, connect_timeout=2).close()
    except psycopg.OperationalError:
        return False
    return True


def wait_ready(timeout=READY_TIMEOUT):
    deadline = time.monotonic() + timeout
    while not reachable():
        if time.monotonic() > deadline:
            raise Unavailable(f"cluster {NAME} on port {PORT} not ready within {timeout}s")
        time.sleep(0.1)


def ensure():
    """Create the cluster if it does not exist and start it if it is down."""
    if reachable():
        return
    if os.geteuid() != 0:
        raise Unavailable(
            f"cluster {NAME} is not running on port {PORT}, and only root can start it"
        )
    if _cluster() is None:
        options = [f"--pgoption={key}={value}" for key, value in SETTINGS.items()]
        _run(
            "pg_createcluster",
            "--port",
            str(PORT),
            "--start-conf",
            "manual",
            *options,
            version(),
            NAME,
            "--",
            "--auth=trust",
        )
    cluster = _cluster()
    if int(cluster["port"]) != PORT:
        raise Unavailable(f"cluster {NAME} exists on port {cluster['port']}, not {PORT}")
    if int(cluster["running"]) != 1:
        _ctl("start")
    wait_ready()


def restart():
    """Restart the cluster (a fast shutdown: every session is cut), and wait until it is up."""
    _ctl("restart")
    wait_ready()


def stop():
    _ctl("stop")


def start():
    _ctl("start")
    wait_ready()


def url(dbname):
    return f"postgres://{USER}@{HOST}:{PORT}/{dbname}"


def create_database(dbname):
    """A new, empty database ``dbname`` (dropped first if it exists)."""
    with psycopg.connect(host=HOST, port=PORT, user=USER, dbname="postgres", autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        c.execute(f'CREATE DATABASE "{dbname}"')


def drop_database(dbname):
    with psycopg.connect(host=HOST, port=PORT, user=USER, dbname="postgres", autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


if __name__ == "__main__":
    try:
        ensure()
    except Unavailable as error:
        sys.exit(f"tests.pgcluster: {error}")
    print(f"PostgreSQL cluster {NAME} is up on {HOST}:{PORT}")
