"""A MariaDB server of the tests' own, for restarting under dq: outage tests and the chaos
run stop and restart it without disturbing anyone else's database.

Its data directory is one per user of the machine (``/var/tmp/dq-tests-mariadb-UID``, or
``DQ_MARIADB_DIR``), like the PostgreSQL cluster of tests/pgcluster.py, so that every
checkout finds the server another one started; it is made with ``mariadb-install-db``.
``mariadbd`` runs on port 3340, bound to 127.0.0.1, detached from whoever started it, as
the user who started it (``--user=root`` when that is root, which mariadbd otherwise
refuses). Root logs in over TCP with an empty password, as on the MariaDB the suite itself
uses. ``python -m tests.mariadb_server`` makes sure it exists and runs (``.ci/run`` calls
it).
"""

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import MySQLdb

DIRECTORY = Path(
    os.environ.get("DQ_MARIADB_DIR", f"/var/tmp/dq-tests-mariadb-{os.getuid()}")
).resolve()
DATADIR = DIRECTORY / "data"
SOCKET = DIRECTORY / "mariadbd.sock"
PID_FILE = DIRECTORY / "mariadbd.pid"
LOG = DIRECTORY / "mariadbd.log"
PORT = int(os.environ.get("DQ_MARIADB_PORT", "3340"))
HOST = "127.0.0.1"
USER = "root"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
# A test server: more connections than the default 151 for several dq_work at once; each
# commit written to the OS but not synced (a killed mariadbd loses nothing committed, only
# the machine's crash would), no doublewrite buffer, no binary log, no buffer pool dump to
# write at shutdown and read at start (restarts are quick). The character set and collation
# of Debian's MariaDB, so that the tables are the same as on the suite's own server.
SETTINGS = {
    "max-connections": "300",
    "innodb-flush-log-at-trx-commit": "2",
    "innodb-doublewrite": "0",
    "skip-log-bin": None,
    "innodb-buffer-pool-dump-at-shutdown": "0",
    "innodb-buffer-pool-load-at-startup": "0",
    "character-set-server": "utf8mb4",
    "collation-server": "utf8mb4_general_ci",
    "skip-name-resolve": None,
}
# The server this process started, to reap it once it has stopped.
_started = {}


class Unavailable(Exception):
    """The server does not run and cannot be started here."""


def _binary(name, *fallbacks):
    for candidate in (name, *fallbacks):
        found = shutil.which(candidate) or shutil.which(candidate, path="/usr/sbin:/usr/bin")
        if found:
            return found
    raise Unavailable(f"no {name} on PATH or in /usr/sbin (apt-get install mariadb-server)")


def _as_user():
    """mariadbd runs as whoever starts it; as root only when told to."""
    return ["--user=root"] if os.geteuid() == 0 else []


def _connect(**options):
    return MySQLdb.connect(host=HOST, port=PORT, user=USER, password="", **options)


def reachable():
    try:
        _connect(connect_timeout=2).close()
    except MySQLdb.OperationalError:
        return False
    return True


def _datadir_served():
    """The data directory of the server on PORT (which may not be this one)."""
    with contextlib.closing(_connect(connect_timeout=2)) as connection:
        cursor = connection.cursor()
        cursor.execute("SELECT @@datadir")
        return Path(cursor.fetchone()[0]).resolve()


def _running(pid):
    """Whether ``pid`` runs (a zombie counts as gone; a child of ours is reaped)."""
    if pid in _started:
        if _started[pid].poll() is None:
            return True
        del _started[pid]
        return False
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False


def _pid():
    """The pid of this data directory's mariadbd, or None when none runs."""
    try:
        pid = int(PID_FILE.read_text().strip())
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    if not _running(pid) or f"--datadir={DATADIR}".encode() not in command:
        return None  # a stale pid file, its pid gone or reused
    return pid


def _log_tail(lines=20):
    with contextlib.suppress(FileNotFoundError):
        return "\n".join(LOG.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


def _install():
    """Make the data directory: system tables, root@localhost and root@127.0.0.1 without a
    password (``normal`` authentication, not the unix socket's). Made beside and renamed
    into place, so that an interrupted install never passes for a finished one."""
    partial = DIRECTORY / f"data.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    result = subprocess.run(
        [
            _binary("mariadb-install-db", "mysql_install_db"),
            "--no-defaults",  # never the machine's /etc/mysql settings
            f"--datadir={partial}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--skip-name-resolve",  # no root@<hostname>, which the server would ignore
            *_as_user(),
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        output = (result.stderr + result.stdout).strip()
        raise Unavailable(f"mariadb-install-db failed: {output[-2000:]}")
    partial.rename(DATADIR)


def _launch():
    """Start mariadbd in a session of its own, its output in LOG, and return at once."""
    options = [
        f"--{key}" if value is None else f"--{key}={value}" for key, value in SETTINGS.items()
    ]
    with LOG.open("ab") as log:
        process = subprocess.Popen(
            [
                _binary("mariadbd", "mysqld"),
                "--no-defaults",  # must come first
                *_as_user(),
                f"--datadir={DATADIR}",
                f"--port={PORT}",
                f"--bind-address={HOST}",
                f"--socket={SOCKET}",
                f"--pid-file={PID_FILE}",
                f"--log-error={LOG}",
                *options,
            ],
            # The machine's time zone whoever starts it (Django sets TZ in the tests' own
            # process to TIME_ZONE).
            env={key: value for key, value in os.environ.items() if key != "TZ"},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # neither a Ctrl-C nor the end of its starter stops it
        )
    _started[process.pid] = process
    return process


def wait_ready(process=None, timeout=READY_TIMEOUT):
    deadline = time.monotonic() + timeout
    while not reachable():
        if process is not None and process.poll() is not None and not reachable():
            raise Unavailable(
                f"mariadbd exited with {process.returncode} before it was ready:\n{_log_tail()}"
            )
        if time.monotonic() > deadline:
            raise Unavailable(f"MariaDB on port {PORT} not ready within {timeout}s:\n{_log_tail()}")
        time.sleep(0.1)


@contextlib.contextmanager
def _locked():
    """One process at a time installs, starts or stops the server (two test sessions may
    ensure it at once)."""
    DIRECTORY.mkdir(parents=True, exist_ok=True)
    with (DIRECTORY / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ensure():
    """Create the data directory if it does not exist and start the server if it is down."""
    if reachable():
        served = _datadir_served()
        if served != DATADIR.resolve():
            raise Unavailable(f"port {PORT} is served by another MariaDB (datadir {served})")
        return
    with _locked():
        if not DATADIR.exists():
            _install()
        process = None if _pid() else _launch()
        wait_ready(process)


def stop():
    """Stop the server (SIGTERM: a normal shutdown that ends every session) and wait until
    it has exited; nothing to do when it does not run."""
    with _locked():
        pid = _pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while _running(pid):
            if time.monotonic() > deadline:
                raise Unavailable(f"mariadbd {pid} did not stop within {STOP_TIMEOUT}s")
            time.sleep(0.05)


def start():
    """Start the stopped server and wait until it is up."""
    with _locked():
        process = None if _pid() else _launch()
        wait_ready(process)


def restart():
    """Stop the server (every session is cut) and start it, and wait until it is up."""
    stop()
    start()


def url(name):
    return f"mysql://{USER}@{HOST}:{PORT}/{name}"


def create_database(name):
    """A new, empty database ``name`` (dropped first if it exists)."""
    with contextlib.closing(_connect()) as connection:
        cursor = connection.cursor()
        cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        cursor.execute(f"CREATE DATABASE `{name}`")


def drop_database(name):
    with contextlib.closing(_connect()) as connection:
        connection.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")


if __name__ == "__main__":
    try:
        ensure()
    except Unavailable as error:
        sys.exit(f"tests.mariadb_server: {error}")
    print(f"MariaDB of the tests is up on {HOST}:{PORT} (data in {DATADIR})")
