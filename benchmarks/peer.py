"""The peer of ``./dev bench --peers``: pgqueuer, measured on the same PostgreSQL server in
the same run, with the same job counts and method as dq (docs/benchmarks.md, "Peers").

pgqueuer lives in a venv of its own, ``.bench/peers/venv`` (never dq's ``.venv``),
installed from PyPI at a pinned version; its measurements are
``benchmarks/peers/pgqueuer_measure.py``, run by that venv's python on the scratch
database ``pgq_bench``. This module sets that up, runs it, and makes the table's rows
that put dq's PostgreSQL figures beside pgqueuer's.
"""

import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.peers.figures import processes_of

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / ".bench"
VENV = BENCH / "peers" / "venv"
SCRIPTS = ROOT / "benchmarks" / "peers"
SCRATCH = "pgq_bench"
# pgq's commands connect with asyncpg when it can be imported (and fall back to psycopg):
# pgqueuer's [asyncpg] extra, with the driver pinned too. And typer, which pgqueuer asks
# for as >=0.15.1: from typer 0.29.0 on, an option with a parser= is no longer converted
# to its Enum, and `pgq run` of pgqueuer 1.6.0 fails at start on its --log-level
# ("'str' object has no attribute 'name'"); 0.28.0 is the newest typer it runs with.
REQUIREMENTS = ("pgqueuer[asyncpg]==1.6.0", "asyncpg==0.32.0", "typer==0.28.0")
STAMP = VENV / "dq-bench-requirements.txt"


def say(message):
    print(f"==> peers: {message}", file=sys.stderr, flush=True)


def venv_python():
    """The peers venv's python, with pgqueuer installed: created with the running Python
    (``sys.executable -m venv``) and filled from PyPI when its stamp is not the pinned
    requirements; cheap when it is."""
    python = VENV / "bin" / "python"
    stamp = "\n".join([f"python {platform.python_version()}", *REQUIREMENTS]) + "\n"
    if python.exists() and STAMP.exists() and STAMP.read_text() == stamp:
        return python
    say(f"installing {' '.join(REQUIREMENTS)} into {VENV.relative_to(ROOT)}")
    VENV.parent.mkdir(parents=True, exist_ok=True)
    try:
        # --clear: a venv of another Python, or a half-finished install, starts over.
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                *REQUIREMENTS,
            ],
            check=True,
        )
    except subprocess.CalledProcessError as error:
        sys.exit(f"dev bench: setting up {VENV} failed ({error}); see above")
    STAMP.write_text(stamp)
    return python


def drains(sizes):
    """(jobs, processes) of pgqueuer's drains: one ``pgq run`` beside each dq drain with
    its defaults, two beside each of dq's two-process drains, and two on the largest
    backlog drained with the defaults."""
    specs = []
    for size, _label, args in sizes["drains"]:
        if not args:
            specs.append((size, 1))
        elif processes_of(args) == 2:
            specs.append((size, 2))
    largest = max(size for size, processes in specs if processes == 1)
    specs.append((largest, 2))
    return list(dict.fromkeys(specs))


def measure(url, sizes):
    """Run pgqueuer's measurements on the scratch database at ``url`` with dq's
    ``sizes``; its figures."""
    python = venv_python()
    print(f"==> pgqueuer: {url}", file=sys.stderr, flush=True)
    # Nothing of dq's environment: the script runs in its own venv.
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "VIRTUAL_ENV", "DJANGO_SETTINGS_MODULE", "DATABASE_URL")
        and key != "PGDSN"
        and not key.startswith("PGQUEUER_")
    }
    with tempfile.NamedTemporaryFile(suffix=".json", dir=BENCH) as out:
        command = [
            str(python),
            str(SCRIPTS / "pgqueuer_measure.py"),
            *("--dsn", url, "--out", out.name, "--logs", str(BENCH / "logs")),
            *("--single", str(sizes["single_enqueues"])),
            *("--bulk", str(sizes["bulk_enqueues"]), "--batch", str(sizes["bulk_batch"])),
            *(f"--drain={jobs}x{processes}" for jobs, processes in drains(sizes)),
            *("--latency", str(sizes["latency_jobs"])),
        ]
        done = subprocess.run(command, cwd=SCRIPTS, env=env)
        if done.returncode:
            sys.exit(f"dev bench: measuring pgqueuer failed (exit {done.returncode}); see above")
        results = json.loads(Path(out.name).read_text())
    results["requirements"] = list(REQUIREMENTS)
    return results


# -- the table -----------------------------------------------------------------------------


def number(value):
    return f"{value:,.0f}"


def ms(value):
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def ratio(dq, peer):
    if dq is None or peer is None or not peer:
        return "-"
    value = dq / peer
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def header(peer):
    packages = dict(line.split("==", 1) for line in peer["packages"])
    config = peer["defaults"]
    options = config["pgq run options"]
    return [
        f"pgqueuer: {peer['version']} (asyncpg {packages.get('asyncpg', '?')}, "
        f"{config['event_loop']}) in .bench/peers/venv, database {SCRATCH}; "
        f"took {peer['seconds']:.0f} s, load {peer['load_before'][0]:.2f} -> "
        f"{peer['load_after'][0]:.2f}",
        f"  its defaults: batch size {options['batch_size']}, max concurrent tasks "
        f"{options['max_concurrent_tasks'] or 'unlimited'}, ends logged every "
        f"{config['status_log_flush']['max_jobs']} jobs or "
        f"{config['status_log_flush']['every_s']:g} s, {config['durability']} tables, "
        f"{config['connections_per_process']} connection per pgq run",
    ]


def table(results):
    """The rows of dq on PostgreSQL beside pgqueuer, as lines of text; none when the run
    measured no peer."""
    peer = (results.get("peers") or {}).get("pgqueuer")
    dq = results["databases"].get("postgresql")
    if not peer or not dq:
        return []
    rows = []

    def section(title):
        rows.append((title, None))

    def row(label, mine, theirs, fmt):
        rows.append(
            (
                label,
                (
                    "-" if mine is None else fmt(mine),
                    "-" if theirs is None else fmt(theirs),
                    ratio(mine, theirs),
                ),
            )
        )

    sizes = dq["sizes"]
    section("Enqueue, jobs/s")
    row(
        f"  one at a time ({sizes['single_enqueues']:,} jobs)",
        dq["enqueue"]["single"]["jobs_per_s"],
        peer["enqueue"]["single"]["jobs_per_s"],
        number,
    )
    row(
        f"  bulk, {sizes['bulk_batch']:,} a call ({sizes['bulk_enqueues']:,} jobs)",
        dq["enqueue"]["bulk"]["jobs_per_s"],
        peer["enqueue"]["bulk"]["jobs_per_s"],
        number,
    )

    def dq_drain(size, processes):
        """dq's drain of ``size`` beside pgqueuer's with ``processes``: pgqueuer's default
        (one process) beside dq's defaults; two beside dq's explicit two processes, or
        else beside its defaults when those are two (on two CPUs)."""
        mine = [drain for drain in dq["drain"] if drain["jobs"] == size]
        defaults = [drain for drain in mine if not drain["args"]]
        if processes == 1:
            chosen = defaults
        else:
            chosen = [d for d in mine if processes_of(d["args"]) == processes] or [
                d for d in defaults if d.get("processes") == processes
            ]
        return (chosen[0], chosen[0]["setting"]) if chosen else (None, None)

    def dq_label(setting):
        return "dq defaults" if setting and setting.startswith("defaults") else f"dq {setting}"

    section("Drain a backlog of no-op jobs, jobs/s (dq: dq_work; pgqueuer: pgq run processes)")
    pairs = [(drain, *dq_drain(drain["jobs"], drain["processes"])) for drain in peer["drain"]]
    for theirs, mine, setting in pairs:
        what = (
            f"  {theirs['jobs']:,} jobs, {theirs['processes']} x pgq run"
            f" vs {dq_label(setting) if mine else 'no dq drain'}"
        )
        for key, name in (("steady_jobs_per_s", "steady"), ("jobs_per_s", "from start")):
            row(f"{what}, {name}", mine and mine[key], theirs[key], number)

    section("Per job, CPU ms: of the worker processes / of the PostgreSQL server")
    for theirs, mine, setting in pairs:
        what = (
            f"  {theirs['jobs']:,} jobs, {theirs['processes']} x pgq run"
            f" vs {dq_label(setting) if mine else 'no dq drain'}"
        )
        row(
            f"{what}, workers",
            mine and mine["dq_work_cpu_ms_per_job"],
            theirs["consumer_cpu_ms_per_job"],
            "{:.2f}".format,
        )
        row(
            f"{what}, PostgreSQL",
            mine and mine["database_cpu_ms_per_job"],
            theirs["database_cpu_ms_per_job"],
            "{:.2f}".format,
        )

    section(f"Pickup latency, idle worker, {sizes['latency_jobs']} jobs, ms")
    for p in (50, 95, 99):
        row(f"  p{p}", dq["latency"][f"p{p}_ms"], peer["latency"][f"p{p}_ms"], ms)

    names = ("dq", "pgqueuer", "dq / pgqueuer")
    width = max(len(label) for label, values in rows if values is not None) + 2
    cells = [
        max([len(name), *(len(values[i]) for _, values in rows if values is not None)]) + 2
        for i, name in enumerate(names)
    ]
    lines = [
        "Peers: dq on PostgreSQL beside pgqueuer, same server and run (docs/benchmarks.md)",
        "  dq / pgqueuer above 1: dq is faster in jobs/s, costlier or slower in ms",
        "".ljust(width) + "".join(n.rjust(w) for n, w in zip(names, cells, strict=True)),
    ]
    for label, values in rows:
        if values is None:
            lines.append(label)
        else:
            lines.append(
                label.ljust(width) + "".join(v.rjust(w) for v, w in zip(values, cells, strict=True))
            )
    return lines
