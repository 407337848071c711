"""OpenTelemetry traces of jobs, when ``opentelemetry-api`` is installed (the ``otel`` extra).

An enqueue is a span (``dq.enqueue TASK``, a producer). Its W3C trace context, as the
project's propagator writes it (``traceparent``, and ``tracestate`` if any), is stored with
the jobs it enqueued, and each run of one of them is a span of that trace
(``dq.run TASK``, a consumer, a child of the enqueue's span), current while the task runs:
what the task traces itself is part of it. An exception that ends a run is recorded on its
span.

Spans are exported by whatever TracerProvider the project sets up, in the web process and
in ``dq_work`` (each forked process flushes it as it exits). Without OpenTelemetry nothing
here is imported and each hook is a ``nullcontext``; with the API but no SDK set up, spans
record nothing and jobs store no trace context.
"""

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

try:
    from opentelemetry import propagate, trace

    INSTALLED = True
except ImportError:  # the otel extra is not installed
    INSTALLED = False

if TYPE_CHECKING:
    from .models import Job

logger = logging.getLogger(__name__)

# The instrumentation scope of dq's spans, and the messaging system they name.
TRACER = "dq"
SYSTEM = "dq"


def enqueue_span(
    task_path: str, queue_name: str, count: int, *, follows: dict[str, str] | None = None
) -> AbstractContextManager[Any]:
    """The span of an enqueue of ``count`` jobs of ``task_path``, current while it lasts;
    it gives the trace context (a dict) to store with the jobs, or None: no OpenTelemetry,
    or no span recorded. With no span current, it is part of the trace of ``follows`` (a
    stored trace context: a chain's previous step's)."""
    if not INSTALLED:
        return contextlib.nullcontext(None)
    return _enqueue_span(task_path, queue_name, count, follows)


@contextlib.contextmanager
def _enqueue_span(
    task_path: str, queue_name: str, count: int, follows: dict[str, str] | None
) -> Iterator[dict[str, str] | None]:
    attributes: dict[str, str | int] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "send",
        "messaging.destination.name": queue_name,
        "messaging.batch.message_count": count,
        "dq.task": task_path,
        "dq.queue": queue_name,
    }
    current = trace.get_current_span().get_span_context().is_valid
    with trace.get_tracer(TRACER).start_as_current_span(
        f"dq.enqueue {task_path}",
        context=propagate.extract(follows) if follows and not current else None,
        kind=trace.SpanKind.PRODUCER,
        attributes=attributes,
    ):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        yield carrier or None


def enqueued(jobs: Sequence["Job"]) -> None:
    """Name the jobs enqueued on the current enqueue span (the id of a single one)."""
    if not INSTALLED or len(jobs) != 1:
        return
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute("messaging.message.id", str(jobs[0].pk))
        span.set_attribute("dq.job_id", jobs[0].pk)


def run_span(job: "Job") -> AbstractContextManager[Any]:
    """The span of a run of ``job``, in the trace its enqueue was part of (a new trace if
    none was stored), current while the task runs; an exception leaving it is recorded."""
    if not INSTALLED:
        return contextlib.nullcontext()
    attributes: dict[str, str | int] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "process",
        "messaging.destination.name": job.queue_name,
        "messaging.message.id": str(job.pk),
        "dq.job_id": job.pk,
        "dq.task": job.task_path,
        "dq.queue": job.queue_name,
        "dq.attempt": job.attempt_count,
        "dq.delivery": job.delivery,
    }
    return trace.get_tracer(TRACER).start_as_current_span(
        f"dq.run {job.task_path}",
        context=propagate.extract(job.trace_context) if job.trace_context else None,
        kind=trace.SpanKind.CONSUMER,
        attributes=attributes,
    )


def flush() -> None:
    """Export the spans this process still holds (before a forked process exits)."""
    if not INSTALLED:
        return
    force_flush = getattr(trace.get_tracer_provider(), "force_flush", None)  # the SDK's
    if force_flush is not None:
        try:
            force_flush()
        except Exception:  # an exporter's failure must not change how the process ends
            logger.exception("dq tracing: cannot export the spans of process %s", os.getpid())
