"""manage.py dq_status: the queues overview in a terminal."""

import io
import json
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


def serving(worker, *queues):
    """Give ``worker`` the queues a worker of dq_work registers with."""
    Process.objects.filter(pk=worker.process.pk).update(metadata={"queues": list(queues)})
    return worker


def test_dq_status_json_has_every_queue_and_process_for_scripts(worker):
    add.using(queue_name="mail").enqueue(1, 1)
    boom.using(queue_name="mail").enqueue()
    worker.work_off()
    add.using(queue_name="mail").enqueue(2, 2)
    ReadyExecution.objects.update(created_at=timezone.now() - timedelta(seconds=90))
    serving(worker, "*")

    status = json.loads(dq_status("--json"))

    [mail] = status["queues"]
    assert mail["name"] == "mail" and mail["paused"] is False
    assert {k: mail["jobs"][k] for k in ("ready", "failed", "finished")} == {
        "ready": 1,
        "failed": 1,
        "finished": 1,
    }
    assert mail["last_hour"] == {"finished": 1, "failed": 1}
    assert 89 <= mail["oldest_ready_age_s"] <= 120
    [process] = status["processes"]
    assert process["name"] == worker.process.name and process["alive"] is True
    assert process["queues"] == ["*"] and process["kind"] == "worker"
    assert status["backend"] == "default"


def check(*args):
    """dq_status --check: its exit status and what it wrote to stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("dq_status", "--check", *args, stdout=out, stderr=err)
    except SystemExit as exit:
        return exit.code, out.getvalue() + err.getvalue()
    return 0, out.getvalue() + err.getvalue()


def test_the_health_check_passes_when_a_live_worker_serves_every_queue_with_ready_jobs(worker):
    serving(worker, "mail*", "default")
    add.using(queue_name="mail-eu").enqueue(1, 1)
    add.enqueue(2, 2)
    Pause.pause("reports", using="default")
    add.using(queue_name="reports").enqueue(3, 3)  # paused: it waits on purpose
    assert check() == (0, "dq healthy: every queue with ready jobs has a live worker.\n")


def test_the_health_check_fails_for_a_queue_no_live_worker_takes(worker):
    serving(worker, "mail*")
    add.using(queue_name="reports").enqueue(1, 1)
    status, said = check()
    assert status == 1
    assert "queue 'reports' has 1 ready job(s) and no live worker takes its jobs" in said
    # Its worker gone silent: nobody serves mail either.
    add.using(queue_name="mail").enqueue(2, 2)
    Process.objects.update(last_heartbeat_at=timezone.now() - timedelta(minutes=5))
    status, said = check()
    assert status == 1 and "queue 'mail' has 1 ready job(s)" in said


def test_the_health_check_fails_when_a_ready_job_waited_too_long(worker):
    serving(worker, "*")
    add.enqueue(1, 1)
    ReadyExecution.objects.update(created_at=timezone.now() - timedelta(minutes=3))
    assert check()[0] == 0  # within the default 300 s
    status, said = check("--max-ready-age", "60")
    assert status == 1
    assert "queue 'default': its oldest ready job has waited 3 minutes (more than 60 s)" in said
