"""OpenTelemetry set up as a project would, for the tracing tests: a process whose
DQ_TEST_TRACES names a file exports the spans it ended there, one JSON object a line (a
dq_work's processes are other processes than the test's, whose in-memory exporter they
cannot reach). In batches that wait a minute: what a process exports before that, it
exports because it flushes as it exits."""

import json
import os
import threading
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult


class JsonLinesExporter(SpanExporter):
    """Appends each span ended to ``path`` as one line of JSON, with the pid that ended it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(
            json.dumps({**json.loads(span.to_json(indent=None)), "pid": os.getpid()}) + "\n"
            for span in spans
        )
        with self.lock, open(self.path, "a") as file:
            file.write(lines)
        return SpanExportResult.SUCCESS


def export_spans_to(path: str) -> None:
    provider = TracerProvider()
    provider.add_span_processor(
        BatchSpanProcessor(JsonLinesExporter(path), schedule_delay_millis=60_000)
    )
    trace.set_tracer_provider(provider)
