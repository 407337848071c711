"""The batches page through Django's test client: progress and counts, a batch's jobs and
callbacks, the retry of its failed jobs (which re-opens it), and the batch on a job's page."""

import re

import pytest
from django.contrib.admin.models import LogEntry
from django.urls import reverse

from dq.batches import batch
from dq.models import Batch, Job

from ..tasks import add, batch_failed, batch_finished, batch_succeeded, boom
from .test_admin import JOBS, SCRIPT, act, job_url, messages_of, shown_ids, staff_client

pytestmark = pytest.mark.django_db

BATCHES = reverse("admin:dq_batch_changelist")
CALLBACKS = {"on_finish": batch_finished, "on_success": batch_succeeded, "on_failure": batch_failed}


def batch_url(batch_id):
    return reverse("admin:dq_batch_change", args=[batch_id])


def finished_batch(worker, *, succeeding=2, failing=1, description="import 7"):
    """A batch of ``succeeding`` jobs that succeed and ``failing`` that fail, all ended."""
    with batch(**CALLBACKS, kwargs={"import_id": 7}, description=description) as opened:
        for n in range(succeeding):
            add.enqueue(n, 1)
        for _ in range(failing):
            boom.enqueue()
    worker.work_off()  # the jobs, then the callbacks
    return Batch.objects.get(pk=opened.id)


def act_on_batch_page(client, batch_id, action):
    """POST one of a batch page's buttons."""
    return client.post(
        batch_url(batch_id),
        {"CHANGE_FORM-action": action, "_selected_action": batch_id},
        follow=True,
    )


def object_tools(page):
    return page.split('class="object-tools"')[1].split("</ul>")[0]


@pytest.fixture
def retrier(django_user_model):
    return staff_client(django_user_model, "retrier", "view_job", "retry_job")


@pytest.fixture
def viewer(django_user_model):
    return staff_client(django_user_model, "viewer", "view_job")


def test_the_list_shows_each_batchs_progress_counts_times_and_callbacks(admin_client, worker):
    done = finished_batch(worker)
    with batch(description="waiting") as opened:
        add.enqueue(1, 1)
    response = admin_client.get(BATCHES)
    assert response.status_code == 200
    assert [row.pk for row in response.context["cl"].result_list] == [opened.id, done.pk]
    page = response.content.decode()
    assert "import 7" in page and "waiting" in page
    # Two of three succeeded, one failed: the bar's segments, its text and its title.
    assert '<span class="dq-progress-succeeded" style="width: 66.67%"></span>' in page
    assert '<span class="dq-progress-failed" style="width: 33.33%"></span>' in page
    assert "3 of 3 ended" in page and "0 of 1 ended" in page
    assert 'title="2 succeeded, 1 failed, 0 cancelled, 0 pending, of 3"' in page
    row = page.split(f'value="{done.pk}"')[1].split("</tr>")[0]
    cells = re.findall(r'<td class="field-(\w+)">(.*?)</td>', row, re.S)
    counts = {name: re.sub(r"<[^>]+>", "", html) for name, html in cells}
    assert {key: counts[key] for key in ("pending_jobs", "succeeded_jobs", "failed_jobs")} == {
        "pending_jobs": "0",
        "succeeded_jobs": "2",
        "failed_jobs": "1",
    }
    assert f'href="{JOBS}?batch={done.pk}&amp;state=failed"' in row
    # Each callback enqueued names its job; on_success never was.
    for kind in ("finish", "failure"):
        assert f'{kind} <a href="{job_url(done.callback_jobs[kind])}">' in row
    assert 'success <span class="dq-zero">not yet</span>' in row
    waiting_row = page.split(f'value="{opened.id}"')[1].split("</tr>")[0]
    assert 'dq-state-running">running<' in waiting_row
    assert 'data-dq-live="results"' in page and "dq/live.js" in page


def test_the_list_filters_finished_and_searches_description_and_id(admin_client, worker):
    done = finished_batch(worker, description="nightly import")
    with batch(description="mail out") as opened:
        add.enqueue(1, 1)

    def shown(**query):
        return [row.pk for row in admin_client.get(BATCHES, query).context["cl"].result_list]

    assert shown(finished="yes") == [done.pk]
    assert shown(finished="no") == [opened.id]
    assert shown(q="nightly") == [done.pk]
    assert shown(q=opened.id) == [opened.id]


def test_a_batchs_page_links_its_jobs_and_its_callbacks_jobs(admin_client, worker):
    done = finished_batch(worker)
    page = admin_client.get(batch_url(done.pk)).content.decode()
    assert f'<a href="{JOBS}?batch={done.pk}">3 jobs</a>' in page
    failure = done.callback_jobs["failure"]
    task = "tests.<wbr>tasks.<wbr>batch_<wbr>failed"
    link = f'<a href="{job_url(failure)}">#{failure}</a>'
    assert f"on_failure {task} (queue default, priority 0): {link}" in page
    assert "&quot;import_id&quot;: 7" in page
    assert "3 of 3 ended" in page
    # The link's list is the batch's jobs, and the filter says which batch.
    response = admin_client.get(JOBS, {"batch": done.pk})
    assert sorted(shown_ids(response)) == sorted(
        Job.objects.filter(batch_id=done.pk).values_list("pk", flat=True)
    )
    assert "Batch: <strong>import 7</strong>" in response.content.decode()
    failed_only = admin_client.get(JOBS, {"batch": done.pk, "state": "failed"})
    assert [Job.objects.get(pk=pk).task_path for pk in shown_ids(failed_only)] == [
        "tests.tasks.boom"
    ]


def test_a_callback_that_could_not_be_enqueued_shows_its_error_escaped(admin_client, worker):
    done = finished_batch(worker, description=SCRIPT)
    Batch.objects.filter(pk=done.pk).update(callback_jobs={"failure": f"ImportError: {SCRIPT}"})
    for url in (BATCHES, batch_url(done.pk)):
        page = admin_client.get(url).content.decode()
        assert SCRIPT not in page, url
        assert "ImportError: &lt;script&gt;" in page, url


def test_retry_from_a_batchs_page_reopens_it(retrier, worker):
    done = finished_batch(worker)
    assert done.is_finished
    page = retrier.get(batch_url(done.pk)).content.decode()
    assert "Retry failed jobs</button>" in object_tools(page)
    response = act_on_batch_page(retrier, done.pk, "retry_failed_jobs")
    assert messages_of(response) == [
        "Retried 1 job: ready to run again. Re-opened 1 finished batch."
    ]
    done.refresh_from_db()
    assert (done.finished_at, done.failed, done.pending, done.succeeded) == (None, 0, 1, 2)
    retried = Job.objects.get(batch_id=done.pk, task_path="tests.tasks.boom")
    assert retried.status == Job.Status.READY
    assert LogEntry.objects.get(object_id=str(retried.pk)).user.username == "retrier"
    # Nothing failed now: no button.
    assert "Retry failed jobs" not in object_tools(retrier.get(batch_url(done.pk)).content.decode())


def test_retry_on_the_list_retries_the_failed_jobs_of_the_selected_batches(retrier, worker):
    first = finished_batch(worker, succeeding=1, failing=2)
    second = finished_batch(worker, succeeding=0, failing=1)
    untouched = finished_batch(worker, succeeding=0, failing=1)
    response = act(retrier, BATCHES, "retry_failed_jobs", first.pk, second.pk)
    assert messages_of(response) == [
        "Retried 3 jobs: ready to run again. Re-opened 2 finished batches."
    ]
    for reopened, pending in ((first, 2), (second, 1)):
        reopened.refresh_from_db()
        assert (reopened.is_finished, reopened.failed, reopened.pending) == (False, 0, pending)
    untouched.refresh_from_db()
    assert untouched.is_finished and untouched.failed == 1
    nothing = act(retrier, BATCHES, "retry_failed_jobs", first.pk)
    assert messages_of(nothing) == ["No failed job in the selected batches: nothing retried."]


def test_retry_needs_the_retry_permission(viewer, worker):
    done = finished_batch(worker)
    page = viewer.get(batch_url(done.pk)).content.decode()
    assert "</button>" not in object_tools(page)
    assert 'name="action"' not in viewer.get(BATCHES).content.decode()
    assert act_on_batch_page(viewer, done.pk, "retry_failed_jobs").status_code == 403
    assert act(viewer, BATCHES, "retry_failed_jobs", done.pk).status_code == 403
    done.refresh_from_db()
    assert done.is_finished and done.failed == 1
    assert not LogEntry.objects.exists()


def test_nobody_adds_edits_or_deletes_batches(admin_client, worker):
    done = finished_batch(worker)
    assert admin_client.get(reverse("admin:dq_batch_add")).status_code == 403
    assert admin_client.get(reverse("admin:dq_batch_delete", args=[done.pk])).status_code == 403
    page = admin_client.get(batch_url(done.pk)).content.decode()
    assert "<textarea" not in page and 'type="text"' not in page and 'name="_save"' not in page
    assert "delete_selected" not in admin_client.get(BATCHES).content.decode()


def test_a_jobs_page_shows_its_batch(admin_client, worker):
    done = finished_batch(worker)
    job = Job.objects.filter(batch_id=done.pk).first()
    page = admin_client.get(job_url(job.pk)).content.decode()
    assert f'<a href="{batch_url(done.pk)}">import 7</a>' in page
    assert "3 of 3 ended" in page
    alone = add.enqueue(1, 1)
    assert "field-in_batch" not in admin_client.get(job_url(alone.id)).content.decode()


def test_a_jobs_page_says_its_step_of_its_chain_and_who_stopped_it(admin_client, worker):
    from dq.chains import chain, step

    from ..tasks import fails_with

    first = chain(step(add, 1, 1), step(fails_with), step(add, 100))
    worker.work_off()
    chain_id = Job.objects.get(pk=first.id).chain["id"]
    ran, stopped, not_run = Job.objects.filter(chain__id=chain_id).order_by("pk")
    page = admin_client.get(job_url(ran.pk)).content.decode()
    assert (
        "step 1 of 3, then tests.<wbr>tasks.<wbr>fails_<wbr>with, tests.<wbr>tasks.<wbr>add" in page
    )
    page = admin_client.get(job_url(stopped.pk)).content.decode()
    assert f'step 2 of 3; it stopped the chain: not run <a href="{job_url(not_run.pk)}">' in page
    page = admin_client.get(job_url(not_run.pk)).content.decode()
    assert (
        f'step 3 of 3, not run: the chain stopped at job <a href="{job_url(stopped.pk)}">' in page
    )
