"""manage.py dq_status: the queues overview in a terminal."""

import io
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings
from django.utils import timezone

from dq.models import Pause, Process, ReadyExecution

from ..conftest import InProcessWorker
from ..tasks import add, boom

pytestmark = pytest.mark.django_db


def dq_status(*args):
    out = io.StringIO()
    call_command("dq_status", *args, stdout=out)
    return out.getvalue()


def line_of(output, first_word):
    return next(line.split() for line in output.splitlines() if line.split()[:1] == [first_word])


def test_dq_status_prints_queues_by_state_and_processes_with_heartbeats(worker):
    add.using(queue_name="mail").enqueue(1, 1)
    boom.using(queue_name="mail").enqueue()
    worker.work_off()
    add.using(queue_name="mail").enqueue(2, 2)
    add.using(queue_name="mail", run_after=timezone.now() + timedelta(hours=1)).enqueue(3, 3)
    add.using(queue_name="mail").enqueue(4, 4)
    worker.claim(limit=1)
    ReadyExecution.objects.update(created_at=timezone.now() - timedelta(minutes=3))
    Pause.pause("idle", using="default")
    stale = InProcessWorker()
    Process.objects.filter(pk=stale.process.pk).update(
        last_heartbeat_at=timezone.now() - timedelta(minutes=5)
    )

    output = dq_status()

    assert line_of(output, "QUEUE") == [
        "QUEUE", "READY", "SCHEDULED", "BLOCKED", "RUNNING", "FAILED", "FINISHED", "CANCELLED",
        "OLDEST", "READY", "STATUS",
    ]  # fmt: skip
    assert line_of(output, "mail") == [
        "mail",
        "1",
        "1",
        "0",
        "1",
        "1",
        "1",
        "0",
        "3",
        "minutes",
        "active",
    ]
    assert line_of(output, "idle") == ["idle", "0", "0", "0", "0", "0", "0", "0", "-", "paused"]
    assert "Last hour: 1 finished, 1 failed." in output
    assert "Processes (stale: no heartbeat for 30 s)" in output
    running = next(line for line in output.splitlines() if worker.process.name in line)
    assert (
        "alive" in running and "tests.tasks.add" in running and worker.process.hostname in running
    )
    assert "STALE" in next(line for line in output.splitlines() if stale.process.name in line)


def test_dq_status_on_an_empty_database(db):
    output = dq_status()
    assert "no jobs yet" in output and "no process is running" in output


def test_dq_status_rejects_a_backend_that_is_not_configured(db):
    with (
        override_settings(
            TASKS={"default": {"BACKEND": "dq.backend.DQBackend", "OPTIONS": {"nope": 1}}}
        ),
        pytest.raises(CommandError, match="Unknown option 'nope'"),
    ):
        dq_status()
