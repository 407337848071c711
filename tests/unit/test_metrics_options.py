"""The metrics options: ``metrics_port`` and ``metrics_address`` in OPTIONS, ``dq_work
--metrics-port``, checked like every other setting; without them nothing of
prometheus_client is loaded."""

import importlib.util
import subprocess
import sys

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from dq import conf

from ..conftest import ROOT, subprocess_env
from ..tasks import add
from .test_checks_and_command import dq_messages, tasks_with

pytestmark = pytest.mark.django_db(databases="__all__")


def test_metrics_are_off_by_default():
    with override_settings(TASKS=tasks_with({})):
        config = conf.load("default")
    assert (config.metrics_port, config.metrics_address) == (None, "127.0.0.1")


def test_load_reads_the_metrics_options():
    with override_settings(TASKS=tasks_with({"metrics_port": 9108, "metrics_address": "::"})):
        config = conf.load("default")
    assert (config.metrics_port, config.metrics_address) == (9108, "::")


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"metrics_port": 0}, "metrics_port must be a TCP port (1 to 65535), not 0."),
        ({"metrics_port": 65536}, "metrics_port must be a TCP port (1 to 65535), not 65536."),
        ({"metrics_port": "9108"}, "metrics_port must be a TCP port (1 to 65535), not '9108'."),
        ({"metrics_port": True}, "metrics_port must be a TCP port (1 to 65535), not True."),
        ({"metrics_address": "localhost"}, "metrics_address must be an IP address to listen on"),
        ({"metrics_address": 127}, "metrics_address must be an IP address to listen on"),
    ],
)
def test_a_bad_metrics_option_is_e008(options, needle):
    messages = dq_messages(options)
    assert [message_id for message_id, _ in messages] == ["dq.E008"]
    assert messages[0][1].startswith(needle)


def test_a_metrics_port_without_prometheus_client_says_what_to_install(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "prometheus_client" else real_find_spec(name, *args),
    )
    [(message_id, message)] = dq_messages({"metrics_port": 9108})
    assert message_id == "dq.E008"
    assert message == (
        'metrics_port is set, but prometheus_client is not installed: pip install "dq[metrics]".'
    )
    with pytest.raises(CommandError, match=r'pip install "dq\[metrics\]"'):
        call_command("dq_work", "--metrics-port", "9108")


@pytest.mark.parametrize("port", ["0", "70000"])
def test_dq_work_with_a_bad_metrics_port_is_a_command_error(port):
    with pytest.raises(CommandError, match=rf"--metrics-port must be a TCP port .*not {port}\."):
        call_command("dq_work", "--metrics-port", port)


def test_nothing_of_prometheus_client_is_loaded_without_a_metrics_port():
    code = (
        "import sys, django; django.setup(); "
        "from dq.management.commands import dq_work; from dq.processes import supervisor; "
        "from dq import conf; conf.load('default'); "
        "print(sorted(m for m in sys.modules if m.startswith(('prometheus', 'dq.processes.m'))))"
    )
    ran = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert ran.stdout.strip() == "[]"


def test_a_web_process_serves_the_database_gauges_at_the_view_a_project_routes(client, worker):
    from prometheus_client.parser import text_string_to_metric_families

    add.using(queue_name="mail").enqueue(1, 2)
    add.using(queue_name="mail").enqueue(3, 4)
    worker.claim(limit=1)

    response = client.get("/dq/metrics")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }
    assert samples[("dq_jobs", (("queue", "mail"), ("state", "ready")))] == 1
    assert samples[("dq_jobs", (("queue", "mail"), ("state", "running")))] == 1
    assert samples[("dq_processes", (("kind", "worker"),))] == 1
    assert samples[("dq_oldest_ready_age_seconds", (("queue", "mail"),))] >= 0
    assert client.post("/dq/metrics").status_code == 405
