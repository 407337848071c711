"""The pgqueuer consumer of the peer benchmark, started as a user starts one:

    PGDSN=postgres://... pgq run pgqueuer_app:main

(from this folder, with the peers venv's ``pgq``; docs/benchmarks.md, "Peers"). Written
the way pgqueuer's own example consumer is: one asyncpg connection, a ``PgQueuer`` on
it, entrypoints registered with its decorator; nothing configured beyond that. It runs
in the peers venv and imports neither Django nor dq.

Entrypoints:
- ``noop`` does nothing (the drain);
- ``record_start`` writes its payload (a number) and ``time.time()`` at its start as one
  line to the file named by ``$PGQ_BENCH_STARTS`` (the pickup latency).
"""

import os
import time
from contextlib import asynccontextmanager

import asyncpg
from pgqueuer import PgQueuer
from pgqueuer.models import Job


@asynccontextmanager
async def main():
    connection = await asyncpg.connect(os.environ["PGDSN"])
    starts_path = os.environ.get("PGQ_BENCH_STARTS")
    starts = open(starts_path, "a", buffering=1) if starts_path else None  # noqa: SIM115
    pgq = PgQueuer.from_asyncpg_connection(connection)

    @pgq.entrypoint("noop")
    async def noop(job: Job) -> None:
        """Does nothing: a drain measures the queue, not the work."""

    @pgq.entrypoint("record_start")
    async def record_start(job: Job) -> None:
        """Records when it started running, for the pickup latency of its job."""
        started = time.time()
        starts.write(f"{job.payload.decode()} {started!r}\n")

    try:
        yield pgq
    finally:
        await connection.close()
        if starts is not None:
            starts.close()
