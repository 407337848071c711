"""The metrics a real dq_work serves at ``--metrics-port``: one scrape over HTTP holds the
counts of every process it forked, workers recycled and killed included, and the gauges
its supervisor reads from the database when scraped."""

import os
import signal
import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dq.models import Job, Pause, Process

from ..conftest import wait_until
from ..models import Run
from ..tasks import add, block, boom, flaky
from .test_processes import fast, started, wait_for_replacement

pytestmark = pytest.mark.django_db(transaction=True)


def free_port():
    """A TCP port nobody listens on now (the kernel's pick)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def scrape(port):
    """The samples at http://127.0.0.1:PORT/metrics: {(name, sorted labels): value}; None
    while nothing answers there."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            text = answer.read().decode()
    except (ConnectionError, urllib.error.URLError):
        return None
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples, name, **labels):
    """The value of sample ``name`` with ``labels`` (0 if there is none)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0)


def finished(samples, task, status, queue="default"):
    return value(
        samples, "dq_jobs_finished_total", queue=queue, task=f"tests.tasks.{task}", status=status
    )


def ended(*results):
    return all(
        Job.objects.get(pk=result.id).status in (Job.Status.SUCCESSFUL, Job.Status.FAILED)
        for result in results
    )


def test_one_scrape_counts_the_runs_of_every_worker_recycled_ones_included(dq_work):
    port = free_port()
    Pause.pause("held", using="default")
    held = [add.using(queue_name="held").enqueue(1, 1) for _ in range(2)]
    # One thread, recycled every 3 jobs: the 9 runs below take at least three workers.
    work = dq_work(
        "--metrics-port", str(port), options=fast(workers=[{"threads": 1, "max_jobs": 3}])
    )
    _, [first_worker], _ = started(work)
    results = [add.enqueue(i, 1) for i in range(5)]
    results += [boom.enqueue() for _ in range(2)]
    results.append(flaky.enqueue("metrics", 1))  # fails once, then succeeds: 2 runs
    wait_until(lambda: ended(*results), message="the jobs never ended")
    assert work.output().count("(max_jobs 3)") >= 2

    def counted():
        samples = scrape(port) or {}
        runs = sum(v for (name, _), v in samples.items() if name == "dq_jobs_finished_total")
        return samples if runs == 9 else None

    samples = wait_until(counted, message="the runs were never all counted")
    assert finished(samples, "add", "successful") == 5
    assert finished(samples, "boom", "failed") == 2
    assert finished(samples, "flaky", "retried") == 1
    assert finished(samples, "flaky", "successful") == 1
    durations = sum(
        count
        for (name, labels), count in samples.items()
        if name == "dq_job_duration_seconds_count" and ("queue", "default") in labels
    )
    assert durations == 9
    assert value(samples, "dq_pickup_delay_seconds_count", queue="default") == 9
    assert value(samples, "dq_pickup_delay_seconds_count", queue="held") == 0
    # The first worker was recycled, and its counts are in the scrape all the same.
    assert not Process.objects.filter(pk=first_worker.pk).exists()

    assert value(samples, "dq_jobs", queue="held", state="ready") == 2
    assert value(samples, "dq_jobs", queue="default", state="failed") == 2
    assert value(samples, "dq_jobs", queue="default", state="ready") == 0
    assert value(samples, "dq_oldest_ready_age_seconds", queue="held") > 0
    assert value(samples, "dq_oldest_ready_age_seconds", queue="default") == 0
    assert value(samples, "dq_processes", kind="supervisor") == 1
    assert value(samples, "dq_processes", kind="worker") == 1
    assert value(samples, "dq_processes", kind="dispatcher") == 1
    assert ("dq_jobs", (("queue", "held"), ("state", "running"))) in samples

    Pause.resume("held", using="default")
    wait_until(lambda: ended(*held), message="the held jobs never ran after resuming")
    assert work.stop() == 0
    assert scrape(port) is None  # the endpoint went with dq_work


def test_a_run_interrupted_by_its_workers_death_is_counted_by_kind(dq_work, release):
    port = free_port()
    work = dq_work("--metrics-port", str(port), options=fast())
    supervisor, [worker], _ = started(work)
    result = block.enqueue("killed", release.path)
    wait_until(lambda: Run.objects.filter(label="killed:started").exists())
    os.kill(worker.pid, signal.SIGKILL)
    wait_for_replacement(supervisor, worker)
    wait_until(lambda: Run.objects.filter(label="killed:started").count() == 2)
    release.set()
    wait_until(lambda: ended(result), message="the interrupted job never ran again")

    def counted():
        samples = scrape(port)
        return samples if samples and finished(samples, "block", "successful") else None

    samples = wait_until(counted, message="the run's end was never counted")
    interruptions = {
        dict(labels)["kind"]: count
        for (name, labels), count in samples.items()
        if name == "dq_job_interruptions_total"
    }
    assert interruptions == {"ProcessExitError": 1}
    assert value(samples, "dq_pickup_delay_seconds_count", queue="default") == 2
    assert work.stop() == 0


def test_a_taken_metrics_port_stops_dq_work_with_a_clear_error(dq_work):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        work = dq_work("--metrics-port", str(port), options=fast())
        assert work.wait() == 1
    assert f"cannot serve metrics on 127.0.0.1 port {port}" in work.output()
    assert not Process.objects.exists()


def test_a_request_for_another_path_is_answered_404(dq_work):
    port = free_port()
    work = dq_work("--metrics-port", str(port), options=fast())
    started(work)
    wait_until(lambda: scrape(port))
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10)
    assert error.value.code == 404
    assert work.stop() == 0
