"""OpenTelemetry traces, followed from a span of the test's (a request, say) through the
enqueue to the runs in a real dq_work's forked workers, recycled ones included; and what
dq does without OpenTelemetry: nothing."""

import json
import subprocess
import sys

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from dq.models import Job

from ..conftest import ROOT, subprocess_env, wait_until
from ..tasks import add, boom, flaky, traced
from .test_metrics import ended
from .test_processes import fast, started

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def spans():
    """The spans this (the test's) process ends, kept in the SDK's in-memory exporter."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # the first module to set one up
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()


def hex_id(number, digits):
    return f"0x{number:0{digits}x}"


def exported(path):
    """The spans a dq_work exported to ``path`` (tests/tracing.py), in the order ended."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_trace_is_followed_from_a_request_through_the_enqueue_to_every_run(
    dq_work, spans, tmp_path
):
    traces = tmp_path / "spans.jsonl"
    tracer = trace.get_tracer("tests")
    with tracer.start_as_current_span("request") as request:
        calls = [traced.enqueue(f"step-{n}") for n in range(3)]
        failure = boom.enqueue()
        retried = flaky.enqueue("traced", 1)  # fails once, then succeeds
    untraced = add.enqueue(1, 2)  # no span active: the run is a trace of its own enqueue
    # The enqueue spans of the request, by the job each enqueued.
    enqueues = {
        span.attributes["dq.job_id"]: span
        for span in spans.get_finished_spans()
        if span.parent and span.parent.span_id == request.get_span_context().span_id
    }
    trace_id = hex_id(request.get_span_context().trace_id, 32)

    stored = Job.objects.get(pk=calls[0].id).trace_context
    assert stored["traceparent"].split("-")[1] == trace_id[2:]

    # One thread, recycled after every 2 jobs: the runs are in at least three workers, which
    # export their spans as they exit (the exporter's batches wait a minute).
    work = dq_work(
        options=fast(workers=[{"threads": 1, "max_jobs": 2}]), env={"DQ_TEST_TRACES": str(traces)}
    )
    started(work)
    results = [*calls, failure, retried, untraced]
    wait_until(lambda: ended(*results), message="the jobs never ended")
    wait_until(
        lambda: len({span["pid"] for span in exported(traces)}) >= 2,
        message="the recycled workers exported no spans as they exited",
    )
    assert work.stop() == 0
    runs = [span for span in exported(traces) if span["name"].startswith("dq.run ")]
    assert len(runs) == 7, runs  # flaky ran twice
    assert len({span["pid"] for span in runs}) >= 3

    for span in runs:
        job = Job.objects.get(pk=span["attributes"]["dq.job_id"])
        attributes = span["attributes"]
        assert span["name"] == f"dq.run {job.task_path}"
        assert span["kind"] == "SpanKind.CONSUMER"
        assert attributes["dq.queue"] == attributes["messaging.destination.name"] == "default"
        assert attributes["dq.delivery"] == "at_least_once"
        if job.pk == int(untraced.id):
            assert span["context"]["trace_id"] != trace_id
            continue
        # A child of its enqueue's span, in the request's trace.
        assert span["context"]["trace_id"] == trace_id
        assert span["parent_id"] == hex_id(enqueues[job.pk].context.span_id, 16)

    by_job = {}
    for span in runs:
        by_job.setdefault(span["attributes"]["dq.job_id"], []).append(span)
    [failed] = by_job[int(failure.id)]
    assert failed["status"]["status_code"] == "ERROR"
    assert [event["attributes"]["exception.type"] for event in failed["events"]] == ["RuntimeError"]
    attempts = {span["attributes"]["dq.attempt"]: span for span in by_job[int(retried.id)]}
    assert sorted(attempts) == [1, 2]
    first, second = attempts[1], attempts[2]
    assert first["status"]["status_code"] == "ERROR"
    assert second["status"]["status_code"] == "UNSET"
    assert second["context"]["trace_id"] == trace_id  # a retry stays in the trace

    # What a task traces itself is part of its run's span.
    steps = [span for span in exported(traces) if span["name"].startswith("step ")]
    run_ids = {span["context"]["span_id"] for span in by_job[int(calls[0].id)]}
    assert len(steps) == 3
    assert any(step["parent_id"] in run_ids for step in steps)

    assert len(enqueues) == 5
    enqueue = enqueues[int(calls[0].id)]
    assert enqueue.name == "dq.enqueue tests.tasks.traced"
    assert enqueue.kind == trace.SpanKind.PRODUCER


def test_a_bulk_enqueue_is_one_span_and_its_jobs_share_its_trace_context(spans):
    spans.clear()
    with trace.get_tracer("tests").start_as_current_span("import"):
        results = traced.enqueue_many([((f"row-{n}",), {}) for n in range(5)])
    [enqueue] = [span for span in spans.get_finished_spans() if span.name.startswith("dq.")]
    assert enqueue.attributes["messaging.batch.message_count"] == 5
    contexts = {
        json.dumps(job.trace_context)
        for job in Job.objects.filter(pk__in=[result.id for result in results])
    }
    assert len(contexts) == 1
    assert hex_id(enqueue.context.span_id, 16)[2:] in contexts.pop()


PROBE = """
import sys

class NoOpenTelemetry:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "opentelemetry":
            raise ImportError(f"no {name} here")

if sys.argv[1] == "absent":
    sys.meta_path.insert(0, NoOpenTelemetry())
import django

django.setup()
from dq.processes.supervisor import Supervisor  # noqa: the worker, its runs, the backend
from tests.tasks import add

job_id = add.enqueue(1, 2).id
print(sorted(name for name in sys.modules if name.startswith("opentelemetry")) == [], job_id)
"""


@pytest.mark.parametrize("opentelemetry", ["absent", "api-only"])
def test_without_opentelemetry_set_up_nothing_is_traced_nor_stored(opentelemetry):
    """Without the package nothing of it is imported; with the API and no SDK set up, no
    span is recorded and no job stores a trace context."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, opentelemetry],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    imported_none, job_id = done.stdout.split()
    assert imported_none == ("True" if opentelemetry == "absent" else "False")
    assert Job.objects.get(pk=job_id).trace_context is None


def test_a_chains_later_steps_are_enqueued_in_the_trace_of_its_first(spans, worker):
    from dq.chains import chain, step

    spans.clear()
    with trace.get_tracer("tests").start_as_current_span("request") as request:
        first = chain(step(add, 1, 1), step(add, 10), step(add, 100))
    worker.work_off()
    trace_id = request.get_span_context().trace_id
    chain_id = Job.objects.get(pk=first.id).chain["id"]
    steps = Job.objects.filter(chain__id=chain_id)
    assert steps.count() == 3
    for job in steps:
        assert job.trace_context["traceparent"].split("-")[1] == f"{trace_id:032x}"
    enqueues = [span for span in spans.get_finished_spans() if span.name.startswith("dq.enqueue")]
    assert len(enqueues) == 3
    assert {span.context.trace_id for span in enqueues} == {trace_id}
