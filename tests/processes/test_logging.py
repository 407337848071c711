"""The fields a log line about a job carries (job_id, task, queue, attempt, duration),
written out by the JSON formatters people use: python-json-logger in a real dq_work's
processes, structlog's ``ExtraAdder`` in a worker run in the test."""

import json
import logging

import pytest
import structlog

from dq.log import JobFields
from dq.models import Job

from ..conftest import wait_until
from ..tasks import chatty, flaky
from .test_metrics import ended
from .test_processes import fast, started

pytestmark = pytest.mark.django_db(transaction=True)

FIELDS = ("job_id", "task", "queue", "attempt")


def about(lines, job_id):
    return [line for line in lines if line.get("job_id") == int(job_id)]


def test_every_line_about_a_job_carries_its_fields_as_json(dq_work, tmp_path):
    path = tmp_path / "dq.jsonl"
    work = dq_work(options=fast(), env={"DQ_TEST_JSON_LOG": str(path)})
    started(work)
    own = chatty.enqueue("hello")
    retried = flaky.enqueue("logged", 1)  # fails once, then succeeds
    wait_until(lambda: ended(own, retried), message="the jobs never ended")
    assert work.stop() == 0
    lines = [json.loads(line) for line in path.read_text().splitlines()]

    # Django's lines of its start and end, and the task's own line.
    chatty_lines = about(lines, own.id)
    messages = [line["message"] for line in chatty_lines]
    assert f"Task id={own.id} path=tests.tasks.chatty state=RUNNING" in messages
    assert "working on hello" in messages
    [finished] = [line for line in chatty_lines if "state=SUCCESSFUL" in line["message"]]
    assert {name: finished[name] for name in FIELDS} == {
        "job_id": int(own.id),
        "task": "tests.tasks.chatty",
        "queue": "default",
        "attempt": 1,
    }
    assert 0 < finished["duration"] < 30

    # dq's own line of the retry, and the second attempt's end.
    flaky_lines = about(lines, retried.id)
    [retry] = [line for line in flaky_lines if "raised builtins.ValueError" in line["message"]]
    assert (retry["levelname"], retry["name"]) == ("WARNING", "dq.processes.running")
    assert retry["attempt"] == 1 and retry["duration"] >= 0
    [success] = [line for line in flaky_lines if "state=SUCCESSFUL" in line["message"]]
    assert success["attempt"] == 2
    # Lines about no job carry no job's fields.
    assert any("job_id" not in line for line in lines)


def test_structlog_writes_the_fields_of_the_job_a_line_is_about(worker, caplog):
    rendered = []

    class Rendered(logging.Handler):
        def emit(self, record):
            rendered.append(self.format(record))

    handler = Rendered()
    handler.addFilter(JobFields())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ExtraAdder(),
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(),
            ]
        )
    )
    loggers = [logging.getLogger(name) for name in ("tests", "django.tasks")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with caplog.at_level(logging.INFO):
            result = chatty.enqueue("structured")
            worker.work_off()
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    assert Job.objects.get(pk=result.id).status == Job.Status.SUCCESSFUL
    events = {event["event"]: event for event in map(json.loads, rendered)}
    own = events["working on structured"]
    assert (own["job_id"], own["task"], own["attempt"]) == (int(result.id), "tests.tasks.chatty", 1)
    end = events[f"Task id={result.id} path=tests.tasks.chatty state=SUCCESSFUL"]
    assert end["queue"] == "default" and end["duration"] >= 0
