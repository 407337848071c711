"""The figures dq's measurements and its peers' share, computed the same way (plain
Python: the peers' scripts run without Django)."""

import math


def processes_of(args):
    """The ``--processes`` of dq_work arguments; None when they do not set it."""
    args = list(args)
    if "--processes" in args[:-1]:
        return int(args[args.index("--processes") + 1])
    return None


def percentile(ordered, p):
    """Nearest-rank percentile of an ascending list."""
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def drain_rates(count, began, *, first, p20, p80, last):
    """From-start and steady-state rates of a drain of ``count`` jobs begun at ``began``,
    from the finish times of its first job, the jobs at its 20% and 80% marks, and its last."""
    steady_jobs = int(0.8 * count) - int(0.2 * count)
    return {
        "jobs": count,
        "seconds": last - began,
        "jobs_per_s": count / (last - began),
        "steady_jobs_per_s": steady_jobs / (p80 - p20),
        "first_job_after_s": first - began,
    }


def latency_figures(latencies):
    """p50, p95, p99, max and min of pickup latencies in ms, and the line that says them."""
    ordered = sorted(latencies)
    figures = {
        "jobs": len(ordered),
        "p50_ms": percentile(ordered, 50),
        "p95_ms": percentile(ordered, 95),
        "p99_ms": percentile(ordered, 99),
        "max_ms": ordered[-1],
        "min_ms": ordered[0],
    }
    line = (
        f"pickup latency: p50 {figures['p50_ms']:.1f} ms, p95 {figures['p95_ms']:.1f} ms, "
        f"p99 {figures['p99_ms']:.1f} ms"
    )
    return figures, line
