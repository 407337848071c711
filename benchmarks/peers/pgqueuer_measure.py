"""pgqueuer measured as ``benchmarks.measure`` measures dq (docs/benchmarks.md, "Peers").

Run by ``benchmarks.peer`` with the peers venv's python (``.bench/peers/venv``), never
dq's: it imports neither Django nor dq. Its database (``--dsn``) is the scratch
database ``pgq_bench``, created empty just before; it installs pgqueuer's schema there
with ``pgq install``, then measures enqueue, drains and pickup latency with pgqueuer's
defaults, starting the consumer as a user does (``pgq run pgqueuer_app:main``), and
writes the figures as JSON to ``--out``. Progress goes to stderr.
"""

import argparse
import asyncio
import inspect
import json
import os
import platform
import random
import resource
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import asyncpg
import pgqueuer
from figures import drain_rates, latency_figures
from pgqueuer import Queries
from pgqueuer.adapters.cli import cli
from pgqueuer.core import buffers
from pgqueuer.domain.settings import DBSettings

HERE = Path(__file__).resolve().parent
PGQ = Path(sys.executable).parent / "pgq"
FACTORY = "pgqueuer_app:main"
# pgqueuer's tables: the queue (a job's row lives there until its end is logged), the
# log (a row per status change, 'queued' at enqueue, 'successful' at the end) and the
# statistics the log is folded into.
TABLES = "pgqueuer, pgqueuer_log, pgqueuer_statistics"
# As in benchmarks.measure: how often the driver checks whether a drain is done (the
# figures come from the jobs' own log rows, not from this), and the latency's seed.
POLL_INTERVAL = 0.1
LATENCY_SEED = 20260509


def say(message):
    print(f"  [pgqueuer] {message}", file=sys.stderr, flush=True)


def children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mib(pid):
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        key, _, value = line.partition(":")
        if key == "VmHWM":
            return round(int(value.split()[0]) / 1024, 1)
    return None


def defaults():
    """The settings the consumer runs with: ``pgq run``'s option defaults and what
    pgqueuer fixes below them, read from the installed pgqueuer where it exposes them."""
    options = {
        name: getattr(parameter.default, "default", parameter.default)
        for name, parameter in inspect.signature(cli.run).parameters.items()
        if name not in ("factory_fn", "factory_args")
    }
    queue_manager_run = inspect.signature(pgqueuer.QueueManager.run).parameters
    status_buffer = buffers.TimedOverflowBuffer(max_size=1)
    heartbeat_timeout = options["heartbeat_timeout"]
    return {
        "pgq run options": {
            name: value.name if hasattr(value, "name") else value for name, value in options.items()
        },
        "log_aggregation_interval_s": queue_manager_run[
            "log_aggregation_interval"
        ].default.total_seconds(),
        "status_log_flush": {
            "max_jobs": options["batch_size"],
            "every_s": status_buffer.timeout.total_seconds(),
        },
        "heartbeat_flush": {
            "max_jobs": options["batch_size"] ** 2,
            "every_s": heartbeat_timeout / 8,
            "per_job_every_s": heartbeat_timeout / 2,
        },
        "durability": DBSettings().durability.value,
        "connections_per_process": 1,
        "event_loop": "uvloop" if cli.HAS_UVLOOP else "asyncio",
    }


class Consumer:
    """``pgq run pgqueuer_app:main`` in a subprocess, with its output in a log file."""

    def __init__(self, dsn, log_path, env=None):
        self.log_path = log_path
        self.log = open(log_path, "wb")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            [str(PGQ), "run", FACTORY],
            cwd=HERE,
            env=dict(os.environ, PGDSN=dsn, **(env or {})),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def check_running(self):
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"pgq run exited with {self.proc.returncode}:\n{tail}")

    def terminate(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self):
        """Reap it, within 60 s of SIGTERM or killed."""
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            say(f"pgq run (pid {self.proc.pid}) did not stop within 60 s of SIGTERM; killing it")
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def stop(consumers):
    """SIGTERM to every consumer at once, then reap each."""
    for consumer in consumers:
        consumer.terminate()
    for consumer in consumers:
        consumer.wait()


class Bench:
    def __init__(self, dsn, logs):
        self.dsn = dsn
        self.logs = logs

    async def connect(self):
        self.connection = await asyncpg.connect(self.dsn)
        self.queries = Queries.from_asyncpg_connection(self.connection)

    def install(self):
        """pgqueuer's schema, by its own tool, with its defaults."""
        done = subprocess.run(
            [str(PGQ), "install"],
            cwd=HERE,
            env=dict(os.environ, PGDSN=self.dsn),
            capture_output=True,
            text=True,
        )
        if done.returncode:
            raise RuntimeError(f"pgq install failed ({done.returncode}):\n{done.stderr}")
        return (done.stdout + done.stderr).strip()

    async def database_facts(self):
        facts = {"version": (await self.connection.fetchval("SHOW server_version")).split()[0]}
        facts["settings"] = {
            name: await self.connection.fetchval(f"SHOW {name}")
            for name in ("shared_buffers", "fsync", "synchronous_commit", "autovacuum")
        }
        return facts

    async def flush(self):
        """Empty pgqueuer's tables, then what autovacuum would have done (as dq's)."""
        await self.connection.execute(f"TRUNCATE {TABLES} RESTART IDENTITY")
        await self.vacuum()

    async def vacuum(self):
        await self.connection.execute(f"VACUUM ANALYZE {TABLES}")

    async def enqueue_backlog(self, count, batch=1_000):
        """``count`` no-op jobs, ``batch`` to a call of enqueue (which takes lists)."""
        began = time.perf_counter()
        for start in range(0, count, batch):
            size = min(batch, count - start)
            await self.queries.enqueue(["noop"] * size, [None] * size, [0] * size)
        return count / (time.perf_counter() - began)

    async def database_cpu(self):
        """CPU seconds of the server processes of the other sessions on this database
        (the consumers'), as dq's ``database_cpu()``; None when unknown."""
        rows = await self.connection.fetch(
            "SELECT pid FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        ticks = 0
        for (pid,) in rows:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                return None
            fields = stat.rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
        return ticks / os.sysconf("SC_CLK_TCK")

    async def pending(self):
        return await self.connection.fetchval("SELECT EXISTS (SELECT 1 FROM pgqueuer)")

    # -- the measurements ------------------------------------------------------------------

    async def measure_enqueue(self, single, bulk, batch):
        await self.flush()
        for _ in range(20):  # warm up: connection, prepared statements
            await self.queries.enqueue("noop", None)
        await self.flush()
        began = time.perf_counter()
        for _ in range(single):
            await self.queries.enqueue("noop", None)
        single_rate = single / (time.perf_counter() - began)
        await self.flush()
        bulk_rate = await self.enqueue_backlog(bulk, batch)
        await self.flush()
        say(f"enqueue: {single_rate:,.0f} jobs/s one at a time, {bulk_rate:,.0f} jobs/s in bulk")
        return {
            "single": {"jobs": single, "jobs_per_s": single_rate},
            "bulk": {"jobs": bulk, "batch": batch, "jobs_per_s": bulk_rate},
        }

    async def measure_drain(self, size, processes):
        await self.flush()
        await self.enqueue_backlog(size)
        await self.vacuum()
        cpu_before = children_cpu()
        began = time.time()
        consumers = [
            Consumer(self.dsn, self.logs / f"pgqueuer-drain-{size}-{processes}p-{n}.log")
            for n in range(processes)
        ]
        try:
            deadline = time.monotonic() + 120 + size / 10
            while await self.pending():
                for consumer in consumers:
                    consumer.check_running()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{size:,} jobs were not done in time")
                await asyncio.sleep(POLL_INTERVAL)
            database_cpu = await self.database_cpu()
            memory = [peak_rss_mib(consumer.proc.pid) for consumer in consumers]
        finally:
            stop(consumers)
        cpu = children_cpu() - cpu_before
        # A job's end is its 'successful' row in pgqueuer_log: written with the
        # deletion of its queue row, by the statement that logs a buffer of ends;
        # created is that statement's now().
        times = [
            at
            for (at,) in await self.connection.fetch(
                "SELECT extract(epoch FROM created)::float8 FROM pgqueuer_log "
                "WHERE status = 'successful' AND entrypoint = 'noop' ORDER BY created, id"
            )
        ]
        if len(times) != size:
            raise RuntimeError(f"drain of {size} jobs ({processes} processes): {len(times)} logged")
        result = {
            **drain_rates(
                size,
                began,
                first=times[0],
                p20=times[int(0.2 * size)],
                p80=times[int(0.8 * size)],
                last=times[-1],
            ),
            "processes": processes,
            "consumer_cpu_s": cpu,
            "database_cpu_s": database_cpu,
            "consumer_cpu_ms_per_job": 1000 * cpu / size,
            "database_cpu_ms_per_job": None if database_cpu is None else 1000 * database_cpu / size,
            "jobs_per_log_write": size / len(set(times)),
            "peak_rss_mib": memory,
        }
        say(
            f"drain {size:,} ({processes} x pgq run): {result['jobs_per_s']:,.0f} jobs/s from "
            f"start, {result['steady_jobs_per_s']:,.0f} steady"
        )
        return result

    async def measure_latency(self, count):
        await self.flush()
        starts_path = self.logs / "pgqueuer-latency-starts.txt"
        starts_path.unlink(missing_ok=True)

        def started():
            if not starts_path.exists():
                return {}
            lines = starts_path.read_text().splitlines()
            return {int(n): float(at) for n, at in (line.split() for line in lines)}

        async def wait_for(condition, what, consumer):
            deadline = time.monotonic() + 60
            while not condition():
                consumer.check_running()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{what} did not happen within 60 s")
                await asyncio.sleep(POLL_INTERVAL)

        consumer = Consumer(
            self.dsn, self.logs / "pgqueuer-latency.log", {"PGQ_BENCH_STARTS": str(starts_path)}
        )
        try:
            # Ready: one job run (its LISTEN is set up before its first dequeue), then idle.
            await self.queries.enqueue("record_start", b"-1")
            await wait_for(lambda: -1 in started(), "the consumer's first job", consumer)
            time.sleep(1.0)
            chance = random.Random(LATENCY_SEED)
            returned = {}
            for number in range(count):
                time.sleep(chance.uniform(0.010, 0.050))
                await self.queries.enqueue("record_start", str(number).encode())
                returned[number] = time.time()
            await wait_for(
                lambda: len(started()) == count + 1, "every latency job starting", consumer
            )
            starts = started()
        finally:
            stop([consumer])
        result, line = latency_figures(
            1000 * (starts[number] - returned[number]) for number in returned
        )
        say(line)
        return result


async def measure(options):
    began = time.perf_counter()
    options.logs.mkdir(parents=True, exist_ok=True)
    bench = Bench(options.dsn, options.logs)
    results = {
        "name": "pgqueuer",
        "version": metadata.version("pgqueuer"),
        "python": platform.python_version(),
        "packages": sorted(
            f"{dist.metadata['Name']}=={dist.version}" for dist in metadata.distributions()
        ),
        "defaults": defaults(),
        "load_before": os.getloadavg(),
    }
    results["install"] = bench.install()
    await bench.connect()
    try:
        results["database"] = await bench.database_facts()
        results["enqueue"] = await bench.measure_enqueue(
            options.single, options.bulk, options.batch
        )
        results["drain"] = [
            await bench.measure_drain(size, processes) for size, processes in options.drain
        ]
        results["latency"] = await bench.measure_latency(options.latency)
    finally:
        await bench.connection.close()
    results["load_after"] = os.getloadavg()
    results["seconds"] = time.perf_counter() - began
    return results


def drain_spec(text):
    size, _, processes = text.partition("x")
    return int(size), int(processes)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--logs", type=Path, required=True)
    parser.add_argument("--single", type=int, required=True)
    parser.add_argument("--bulk", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument(
        "--drain", type=drain_spec, action="append", required=True, metavar="JOBSxPROCESSES"
    )
    parser.add_argument("--latency", type=int, required=True)
    options = parser.parse_args(argv)
    # The event loop pgq's own commands run on (uvloop where installed, as here).
    run = cli.asyncio_run
    options.out.write_text(json.dumps(run(measure(options)), indent=2))


if __name__ == "__main__":
    main()
