"""dq's benchmark: ``./dev bench [--quick] [--db sqlite|postgresql|mysql|both|all]
[--json PATH] [--peers]``.

For each database it creates a scratch database (PostgreSQL: ``dq_bench`` on the server
at ``$DQ_BENCH_POSTGRES_URL``, default ``postgres://postgres@127.0.0.1:5432/postgres``;
MySQL or MariaDB: ``dq_bench`` on the server at ``$DQ_BENCH_MYSQL_URL``, default
``mysql://root@127.0.0.1:3306/dq_bench``; SQLite: ``.bench/dq_bench.sqlite3``), runs
``benchmarks.measure`` on it in a process of its own, then prints one table of them all
and writes the figures as JSON. docs/benchmarks.md explains the method. With ``--peers``,
pgqueuer is measured after dq's PostgreSQL half on the same server (``benchmarks.peer``)
and its figures go beside dq's.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit

from benchmarks import peer

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / ".bench"
SCRATCH = "dq_bench"
DATABASES = ("sqlite", "postgresql", "mysql")
# What --db takes besides one database: "both" is what it meant before MySQL was measured.
SELECTIONS = {"all": DATABASES, "both": ("sqlite", "postgresql")}


def postgres_server_url():
    return os.environ.get("DQ_BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")


def prepare_postgresql(name=SCRATCH):
    """Drop and create the scratch database ``name``; returns its URL, or raises OSError
    with why the server cannot be reached."""
    import psycopg

    server = postgres_server_url()
    try:
        with psycopg.connect(server, autocommit=True, connect_timeout=3) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            admin.execute(f"CREATE DATABASE {name}")
    except psycopg.OperationalError as error:
        raise OSError(" ".join(str(error).split())) from None
    return urlsplit(server)._replace(path=f"/{name}").geturl()


def mysql_server_url():
    return os.environ.get("DQ_BENCH_MYSQL_URL", "mysql://root@127.0.0.1:3306/dq_bench")


def prepare_mysql(name=SCRATCH):
    """Drop and create the scratch database ``name`` on the server of
    ``$DQ_BENCH_MYSQL_URL`` (never the database the URL names, as on PostgreSQL); returns
    its URL, or raises OSError with why the server cannot be reached."""
    import MySQLdb

    server = urlsplit(mysql_server_url())
    params = {"host": server.hostname or "127.0.0.1", "port": server.port or 3306}
    if server.username:
        params["user"] = unquote(server.username)
    if server.password:
        params["password"] = unquote(server.password)
    try:
        admin = MySQLdb.connect(**params, connect_timeout=3)
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {name}")
            cursor.execute(f"CREATE DATABASE {name}")
        admin.close()
    except MySQLdb.OperationalError as error:
        raise OSError(" ".join(str(error.args[-1]).split())) from None
    return server._replace(path=f"/{name}").geturl()


# The databases on a server: the name they go by, the server's URL, their scratch database.
SERVERS = {
    "postgresql": ("PostgreSQL", postgres_server_url, prepare_postgresql),
    "mysql": ("MySQL/MariaDB", mysql_server_url, prepare_mysql),
}


def prepare_sqlite():
    BENCH.mkdir(exist_ok=True)
    path = BENCH / f"{SCRATCH}.sqlite3"
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return f"sqlite:///{path}"


def measure(database, url, quick):
    """Run benchmarks.measure on ``url``; its figures."""
    print(f"==> {database}: {url}", file=sys.stderr, flush=True)
    with tempfile.NamedTemporaryFile(suffix=".json", dir=BENCH) as out:
        env = dict(
            os.environ,
            DATABASE_URL=url,
            DJANGO_SETTINGS_MODULE="benchmarks.settings",
            PYTHONPATH=str(ROOT),
        )
        command = [sys.executable, "-m", "benchmarks.measure", "--out", out.name]
        done = subprocess.run([*command, *(["--quick"] if quick else [])], cwd=ROOT, env=env)
        if done.returncode:
            sys.exit(f"dev bench: measuring {database} failed (exit {done.returncode}); see above")
        return json.loads(Path(out.name).read_text())


def git_revision():
    try:
        revision = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return revision


# -- the table -----------------------------------------------------------------------------


def number(value):
    return f"{value:,.0f}"


def ms(value):
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def compared(figure, modes, pairs, fmt):
    """A cell of a figure measured in two modes alternately (``paired`` of
    benchmarks.measure): each mode's median, the difference and each mode's spread (``-``
    with one run of each, as with --quick)."""
    spread = ", ".join(
        f"{figure['spread_percent'][mode]:.0f}%" if pairs > 1 else "-" for mode in modes
    )
    return (
        f"{fmt(figure[modes[0]])} / {fmt(figure[modes[1]])} "
        f"({figure['difference_percent']:+.1f}%; {spread})"
    )


def table(results):
    """The figures of each database side by side, as lines of text."""
    names = list(results["databases"])
    runs = results["databases"]
    rows = []

    def section(title):
        rows.append((title, None))

    def row(label, cell):
        rows.append((label, {name: cell(runs[name]) for name in names}))

    def drain_of(run, size, label):
        [drain] = [d for d in run["drain"] if d["jobs"] == size and d["setting"] == label]
        return drain

    def ceiling_of(run):
        return max(run["ceiling"]["drain_1"]["jobs_per_s"], run["ceiling"]["drain_8"]["jobs_per_s"])

    sizes = runs[names[0]]["sizes"]
    drains = [(size, label) for size, label, _ in sizes["drains"]]
    defaults = drains[0][1]

    section("Enqueue, jobs/s")
    row(
        f"  task.enqueue(), one at a time ({sizes['single_enqueues']:,} jobs)",
        lambda run: number(run["enqueue"]["single"]["jobs_per_s"]),
    )
    row(
        f"  enqueue_many(), {sizes['bulk_batch']:,} a call ({sizes['bulk_enqueues']:,} jobs)",
        lambda run: number(run["enqueue"]["bulk"]["jobs_per_s"]),
    )

    section("Drain a backlog of no-op jobs, jobs/s: from start / steady (% of ceiling)")
    for size, label in drains:

        def drained(run, size=size, label=label):
            drain = drain_of(run, size, label)
            share = drain["steady_jobs_per_s"] / ceiling_of(run)
            return (
                f"{number(drain['jobs_per_s'])} / {number(drain['steady_jobs_per_s'])} "
                f"({share:.0%})"
            )

        row(f"  {size:,} jobs, {label}", drained)
    smallest = min(size for size, label in drains if label == defaults)
    row(
        "  dq_work start to first job done, s",
        lambda run: f"{drain_of(run, smallest, defaults)['first_job_after_s']:.2f}",
    )

    section("Per job: CPU ms of dq_work / of the database server; jobs per end written")
    for size, label in drains:

        def cpu(run, size=size, label=label):
            drain = drain_of(run, size, label)
            database = drain["database_cpu_ms_per_job"]
            database = "-" if database is None else f"{database:.2f}"
            # Runs before the pipeline counted jobs per claim here.
            together = drain.get("jobs_per_end_write", drain.get("jobs_per_claim", 0))
            return f"{drain['dq_work_cpu_ms_per_job']:.2f} / {database}; {together:.1f}"

        row(f"  {size:,} jobs, {label}", cpu)

    metered = [name for name in names if runs[name].get("metrics")]
    if metered:  # runs before the metrics' cost was measured have none
        first = runs[metered[0]]["metrics"]
        section(
            f"Prometheus metrics, the {first['jobs']:,}-job drain with the defaults: off / on "
            f"(--metrics-port, scraped every {first['scrape_interval_s']:g} s), medians of "
            f"{first['pairs']} alternated run{'s' if first['pairs'] > 1 else ''} each"
        )

        def cost(key, fmt):
            def cell(run):
                if not run.get("metrics"):
                    return "-"
                return compared(run["metrics"][key], ("off", "on"), run["metrics"]["pairs"], fmt)

            return cell

        label = "(difference; spread of off, of on)"
        row(f"  steady jobs/s {label}", cost("steady_jobs_per_s", number))
        row(f"  from start jobs/s {label}", cost("jobs_per_s", number))
        row(f"  dq_work CPU ms per job {label}", cost("dq_work_cpu_ms_per_job", "{:.2f}".format))

        def scrapes(run):
            if not run.get("metrics"):
                return "-"
            scraped = [drain["metrics"] for drain in run["metrics"]["runs"]["on"]]
            took = sorted(each for scrape in scraped for each in scrape["times_ms"])
            count = f"{sum(scrape['scrapes'] for scrape in scraped) / len(scraped):.1f}"
            if not took:
                return count
            return f"{count}; {ms(statistics.median(took))} / {ms(took[-1])}"

        row("  scrapes per drain (mean); a scrape's ms, median / max", scrapes)

    batched = [name for name in names if runs[name].get("batches")]
    if batched:  # runs before the batches' cost was measured have none
        first = runs[batched[0]]["batches"]
        enqueue, drain = first["enqueue"], first["drain"]
        pairs = first["pairs"]
        section(
            f"Batches: plain / batched ({enqueue['batch']:,} jobs a batch, with an on_finish "
            f"callback), medians of {pairs} alternated run{'s' if pairs > 1 else ''} each "
            "(difference; spread of plain, of batched)"
        )

        def batches(part, key, fmt):
            def cell(run):
                figures = (run.get("batches") or {}).get(part, {})
                if figures.get(key) is None:
                    return "-"
                modes = ("plain", "batched")
                return compared(figures[key], modes, run["batches"]["pairs"], fmt)

            return cell

        row(
            f"  enqueue_many(), {enqueue['batch']:,} a call ({enqueue['jobs']:,} jobs), jobs/s",
            batches("enqueue", "jobs_per_s", number),
        )
        drained = f"  {drain['jobs']:,}-job drain, defaults"
        row(f"{drained}, steady jobs/s", batches("drain", "steady_jobs_per_s", number))
        row(f"{drained}, from start jobs/s", batches("drain", "jobs_per_s", number))
        two = "{:.2f}".format
        row(f"{drained}, dq_work CPU ms per job", batches("drain", "dq_work_cpu_ms_per_job", two))
        row(f"{drained}, server CPU ms per job", batches("drain", "database_cpu_ms_per_job", two))
        one = "{:.1f}".format
        row(f"{drained}, jobs per end written", batches("drain", "jobs_per_end_write", one))

        def checked(run):
            if not run.get("batches"):
                return "-"
            done = [drain["batches"] for drain in run["batches"]["drain"]["runs"]["batched"]]
            return f"{sum(each['batches'] for each in done)} in {len(done)} drains: held"

        # A batch that fails a check stops the measurement (benchmarks.measure.check_batches).
        row("  batches checked: finished, counts = jobs, one callback each", checked)

    section(f"Pickup latency, idle dq_work, {sizes['latency_jobs']} jobs, ms")
    row(
        "  p50 / p95 / p99",
        lambda run: " / ".join(ms(run["latency"][f"p{p}_ms"]) for p in (50, 95, 99)),
    )

    polled = [name for name in names if runs[name].get("polling")]
    if polled:
        section(
            "Polling (idle workers, all but PostgreSQL): pickup p50 / p95 ms; idle dq_work "
            "% of a core; statements/s (MariaDB)"
        )
        for index, interval in enumerate(
            idle["polling_interval_s"] for idle in runs[polled[0]]["polling"]
        ):

            def polling(run, index=index):
                if not run.get("polling"):
                    return "-"
                idle = run["polling"][index]
                statements = idle["statements_per_s"]
                return (
                    f"{ms(idle['latency']['p50_ms'])} / {ms(idle['latency']['p95_ms'])}; "
                    f"{idle['dq_work_cpu_percent']:.1f}%"
                    + ("" if statements is None else f"; {statements:.0f}")
                )

            row(f"  every {interval} s", polling)

    section(
        f"Large history ({sizes['history']:,} finished + {sizes['waiting']:,} waiting jobs): "
        "empty -> large"
    )

    def change(key, fmt):
        def cell(run):
            scale = run["scale"]
            return f"{fmt(scale['claims_empty'][key])} -> {fmt(scale['claims_large'][key])}"

        return cell

    row("  claim of up to 10 jobs, ms (mean)", change("claim_10_ms_mean", "{:.2f}".format))
    row("  finish of one job, ms (mean)", change("finish_ms_mean", "{:.2f}".format))
    row("  claim + finish in one thread, jobs/s", change("jobs_per_s", number))
    row(
        f"  dq_work defaults, steady jobs/s (empty: the {smallest:,}-job drain)",
        lambda run: (
            f"{number(drain_of(run, smallest, defaults)['steady_jobs_per_s'])} -> "
            f"{number(run['scale']['drain_large']['steady_jobs_per_s'])}"
        ),
    )

    admin_runs = [run["admin_pages"] for run in runs.values() if run.get("admin_pages")]
    if admin_runs:  # runs before the admin was measured have none
        section("Admin pages with a large history, ms: median / max (queries)")
        for key, page in admin_runs[0]["pages"].items():
            target = page["target_ms"]
            path = page["path"].replace("{job}", "<id>")

            def timed(run, key=key):
                page = (run.get("admin_pages") or {}).get("pages", {}).get(key)
                if page is None:
                    return "-"
                return f"{ms(page['median_ms'])} / {ms(page['max_ms'])} ({page['queries']})"

            row(
                f"  {page['label']}, {path}" + ("" if target is None else f" (target < {target})"),
                timed,
            )

    many = sizes["ceiling_connections"]
    section("Database ceiling: the bare SQL of a job without dq, jobs/s")
    for kind, label in (("job", "enqueue + claim + finish"), ("drain", "claim + finish")):
        for connections in (1, many):
            row(
                f"  {label}, {connections} connection{'s' if connections > 1 else ''}",
                lambda run, key=f"{kind}_{connections}": number(run["ceiling"][key]["jobs_per_s"]),
            )

    section("Memory, peak RSS in MiB: supervisor / worker / dispatcher")
    for size, label in drains:

        def memory(run, size=size, label=label):
            kinds = drain_of(run, size, label)["memory"] or {}
            return " / ".join(
                "+".join(f"{p['peak_rss_mib']:.0f}" for p in kinds.get(kind, [])) or "-"
                for kind in ("supervisor", "worker", "dispatcher")
            )

        row(f"  {size:,} jobs, {label}", memory)

    width = max(len(label) for label, values in rows if values is not None) + 2
    cells = [
        max([len(name), *(len(c[name]) for _, c in rows if c is not None)]) + 2 for name in names
    ]
    lines = ["".ljust(width) + "".join(n.rjust(w) for n, w in zip(names, cells, strict=True))]
    for label, values in rows:
        if values is None:
            lines.append(label)
        else:
            lines.append(
                label.ljust(width)
                + "".join(values[n].rjust(w) for n, w in zip(names, cells, strict=True))
            )
    return lines


def header(results):
    machine = results["machine"]
    lines = [
        f"dq benchmark{' (--quick)' if results['quick'] else ''}, {results['date']}, "
        f"revision {results['revision']}, {results['seconds'] / 60:.1f} minutes",
        f"machine: {machine['cpus']} CPUs, Python {machine['python']}, Django "
        f"{next(iter(results['databases'].values()), {}).get('django', '?')}; "
        f"load average at start {machine['load_before'][0]:.2f}, at end "
        f"{machine['load_after'][0]:.2f}",
    ]
    for name, run in results["databases"].items():
        database = run["database"]
        settings = ", ".join(f"{k}={v}" for k, v in database["settings"].items())
        lines.append(
            f"{name}: {database['version']} ({settings}); took {run['seconds']:.0f} s, "
            f"load {run['load_before'][0]:.2f} -> {run['load_after'][0]:.2f}"
        )
    if pgqueuer := results.get("peers", {}).get("pgqueuer"):
        lines.extend(peer.header(pgqueuer))
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="./dev bench",
        description="dq's benchmark: enqueue, drain, the cost of metrics and of batches, pickup "
        "latency, a large history and the database's own ceiling, on scratch databases. "
        "Method: docs/benchmarks.md.",
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes: about 2 minutes")
    parser.add_argument(
        "--db",
        choices=[*DATABASES, *SELECTIONS],
        default="all",
        help="the database(s) to measure: one, both (sqlite and postgresql) or all (default)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        metavar="PATH",
        default=BENCH / "results.json",
        help="where to write the figures (default .bench/results.json)",
    )
    parser.add_argument(
        "--show",
        type=Path,
        metavar="PATH",
        help="measure nothing: print the table of figures written earlier to PATH",
    )
    parser.add_argument(
        "--peers",
        action="store_true",
        help="also measure pgqueuer (pinned, in a venv of its own) on the same PostgreSQL "
        "server after dq's PostgreSQL half, and print dq's figures beside its",
    )
    options = parser.parse_args(argv)
    wanted = SELECTIONS.get(options.db, (options.db,))
    if options.peers and "postgresql" not in wanted:
        parser.error("--peers measures pgqueuer on PostgreSQL: use --db postgresql, both or all")
    if options.show:
        report(json.loads(options.show.read_text()))
        return
    BENCH.mkdir(exist_ok=True)

    began = time.monotonic()
    results = {
        "quick": options.quick,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "revision": git_revision(),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_before": os.getloadavg(),
        },
        "databases": {},
    }
    for database in wanted:
        if database == "sqlite":
            url = prepare_sqlite()
        else:
            name, server_url, prepare = SERVERS[database]
            try:
                url = prepare()
            except OSError as error:
                message = f"{name} not reachable at {server_url()} ({error})"
                if options.db == database:
                    parser.exit(1, f"dev bench: {message}\n")
                print(f"\n!! {message}: {name} SKIPPED\n", file=sys.stderr)
                continue
        results["databases"][database] = measure(database, url, options.quick)
        if database == "postgresql" and options.peers:
            sizes = results["databases"][database]["sizes"]
            results["peers"] = {"pgqueuer": peer.measure(prepare_postgresql(peer.SCRATCH), sizes)}
    if options.peers and "peers" not in results:
        print("\n!! --peers: PostgreSQL was not measured, nor pgqueuer\n", file=sys.stderr)
    results["machine"]["load_after"] = os.getloadavg()
    results["seconds"] = time.monotonic() - began

    options.json.parent.mkdir(parents=True, exist_ok=True)
    options.json.write_text(json.dumps(results, indent=2) + "\n")
    print()
    report(results)
    print(f"\nFigures as JSON: {options.json}; took {results['seconds']:.0f} s.")


def report(results):
    print("\n".join(header(results)))
    print()
    print("\n".join(table(results)))
    if peers := peer.table(results):
        print()
        print("\n".join(peers))


if __name__ == "__main__":
    main()
