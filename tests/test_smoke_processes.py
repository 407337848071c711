import signal

import pytest

from dq.models import Job, Process

from .conftest import wait_until
from .tasks import add

pytestmark = pytest.mark.django_db(transaction=True)


def test_dq_work_runs_jobs_and_stops_gracefully(dq_work):
    results = [add.enqueue(i, i) for i in range(10)]
    work = dq_work("--threads", "2")
    wait_until(lambda: Job.objects.filter(status=Job.Status.SUCCESSFUL).count() == 10)
    for result in results:
        result.refresh()
        assert result.return_value == 2 * int(result.args[0])
    assert set(Process.objects.values_list("kind", flat=True)) == {
        "supervisor",
        "worker",
        "dispatcher",
    }
    assert work.stop(signal.SIGTERM) == 0, work.output()
    assert not Process.objects.exists()
