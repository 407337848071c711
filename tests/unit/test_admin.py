"""The admin through Django's test client: every page, every action, permissions, escaping."""

import re
from datetime import timedelta

import pytest
from django.contrib.admin.models import CHANGE, DELETION, LogEntry
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from dq.admin import base as admin_base
from dq.admin.display import run_time, span
from dq.models import (
    ClaimedExecution,
    FailedExecution,
    Job,
    Pause,
    Process,
    ReadyExecution,
    RecurringExecution,
    RecurringTask,
    ScheduledExecution,
)

from ..conftest import InProcessWorker
from ..tasks import add, always_boom, boom, fails_until_released, fails_with, limited

pytestmark = pytest.mark.django_db

JOBS = reverse("admin:dq_job_changelist")
FAILED = reverse("admin:dq_failedexecution_changelist")
CLAIMED = reverse("admin:dq_claimedexecution_changelist")
SCHEDULED = reverse("admin:dq_scheduledexecution_changelist")
BLOCKED = reverse("admin:dq_blockedexecution_changelist")
PROCESSES = reverse("admin:dq_process_changelist")
QUEUES = reverse("admin:dq_queue_changelist")
PAUSE = reverse("admin:dq_queue_pause")
RESUME = reverse("admin:dq_queue_resume")
SCRIPT = "<script>alert(1)</script>"


def job_url(job_id):
    return reverse("admin:dq_job_change", args=[job_id])


def job_of(result):
    return Job.objects.get(pk=int(result.id))


def staff_client(django_user_model, username, *codenames):
    user = django_user_model.objects.create_user(username, password="pw", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="dq").filter(codename__in=codenames)
    )
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def viewer(django_user_model):
    """Staff who may see dq but change nothing."""
    return staff_client(django_user_model, "viewer", "view_job")


@pytest.fixture
def operator(django_user_model):
    """Staff with every dq permission, but no superuser."""
    return staff_client(
        django_user_model,
        "operator",
        "view_job",
        "retry_job",
        "discard_job",
        "run_job_now",
        "pause_queue",
        "cancel_job",
    )


def failed_job(worker, task=boom, *args):
    result = task.enqueue(*args)
    worker.work_off()
    job = job_of(result)
    assert job.status == Job.Status.FAILED
    return job


def later():
    return timezone.now() + timedelta(hours=1)


def act(client, url, action, *job_ids, **extra):
    """POST a changelist action, as the action bar does."""
    data = {"action": action, "index": 0, "_selected_action": [str(pk) for pk in job_ids]}
    data.update(extra)
    return client.post(url, data, follow=True)


def act_on_page(client, job_id, action, **extra):
    """POST one of a job page's buttons."""
    return client.post(
        job_url(job_id),
        {"CHANGE_FORM-action": action, "_selected_action": str(job_id), **extra},
        follow=True,
    )


def messages_of(response):
    return [str(message) for message in response.context["messages"]]


# --- who sees what ------------------------------------------------------------------------


def test_index_links_every_dq_page_for_a_viewer(viewer):
    page = viewer.get(reverse("admin:index")).content.decode()
    for url in (JOBS, FAILED, CLAIMED, SCHEDULED, BLOCKED, PROCESSES, QUEUES):
        assert f'href="{url}"' in page
    assert ">Queues<" in page


def test_staff_without_view_permission_sees_nothing_of_dq(django_user_model):
    client = staff_client(django_user_model, "nobody")
    index = client.get(reverse("admin:index")).content.decode()
    # Neither the app nor a link into it (a bare "dq" could be part of the CSRF token).
    assert "/admin/dq/" not in index
    assert 'class="app-dq' not in index and ">DQ<" not in index and ">dq<" not in index
    for url in (JOBS, FAILED, CLAIMED, SCHEDULED, BLOCKED, PROCESSES, QUEUES):
        assert client.get(url).status_code == 403, url


def test_non_staff_are_sent_to_the_login_page(django_user_model):
    user = django_user_model.objects.create_user("user", password="pw")
    client = Client()
    client.force_login(user)
    response = client.get(JOBS)
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_nobody_adds_edits_or_deletes_jobs_by_hand(admin_client, worker):
    job = failed_job(worker)
    assert admin_client.get(reverse("admin:dq_job_add")).status_code == 403
    assert admin_client.get(reverse("admin:dq_job_delete", args=[job.pk])).status_code == 403
    response = admin_client.post(job_url(job.pk), {"task_path": "evil.task", "_save": "Save"})
    assert response.status_code == 403
    job.refresh_from_db()
    assert job.task_path == "tests.tasks.boom"
    page = admin_client.get(job_url(job.pk)).content.decode()
    assert 'name="_save"' not in page
    assert "<textarea" not in page and 'type="text"' not in page and "<select" not in page


# --- the jobs list ------------------------------------------------------------------------


def shown_ids(response):
    return [obj.pk for obj in response.context["cl"].result_list]


def test_job_list_is_newest_first_and_filters_by_state(admin_client, worker):
    scheduled = add.using(run_after=later()).enqueue(2, 2)
    done = add.enqueue(3, 3)
    failed = boom.enqueue()
    worker.work_off()
    claimed = add.enqueue(4, 4)
    waiting = add.enqueue(5, 5)
    assert [job.pk for job in worker.claim(limit=1)] == [int(claimed.id)]
    response = admin_client.get(JOBS)
    assert response.status_code == 200
    ids = shown_ids(response)
    assert ids == sorted(ids, reverse=True) and len(ids) == 5
    by_state = {
        "ready": int(waiting.id),
        "scheduled": int(scheduled.id),
        "running": int(claimed.id),
        "failed": int(failed.id),
        "finished": int(done.id),
    }
    for state, job_id in by_state.items():
        assert shown_ids(admin_client.get(JOBS, {"state": state})) == [job_id], state
    assert 'dq-state-running">Running<' in response.content.decode()


def test_job_list_filters_by_queue_task_and_retried_and_searches(admin_client, worker):
    mail = add.using(queue_name="mail").enqueue(1, 2)
    other = add.enqueue(3, 4)
    retried = always_boom.enqueue()  # three attempts
    worker.work_off()
    assert shown_ids(admin_client.get(JOBS, {"queue": "mail"})) == [int(mail.id)]
    assert shown_ids(admin_client.get(JOBS, {"task": "tests.tasks.always_boom"})) == [
        int(retried.id)
    ]
    assert shown_ids(admin_client.get(JOBS, {"retried": "yes"})) == [int(retried.id)]
    assert int(retried.id) not in shown_ids(admin_client.get(JOBS, {"retried": "no"}))
    assert shown_ids(admin_client.get(JOBS, {"q": other.id})) == [int(other.id)]
    assert shown_ids(admin_client.get(JOBS, {"q": "always_bo"})) == [int(retried.id)]
    page = admin_client.get(JOBS).content.decode()
    for choice in ("?queue=mail", "?task=tests.tasks.add", "?state=failed", "?retried=yes"):
        assert choice in page, choice


def test_job_list_counts_are_capped_and_never_scan_the_table(admin_client, monkeypatch):
    monkeypatch.setattr(admin_base.CappedCountPaginator, "cap", 3)
    monkeypatch.setattr(admin_base.DQModelAdmin, "list_per_page", 2)
    for i in range(5):
        add.enqueue(i, i)
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(JOBS, {"_facets": ""})  # facets would count per choice
    page = response.content.decode()
    assert "3+ jobs" in page
    assert "Select all 3+ jobs matching the filters" in page
    counts = [q["sql"] for q in queries if "COUNT(" in q["sql"].upper()]
    assert counts and all("LIMIT" in sql.upper() for sql in counts), counts
    # The list reads no large JSON column.
    assert not [q["sql"] for q in queries if '"dq_job"."attempts"' in q["sql"]]


def test_a_search_that_matches_nothing_reads_the_jobs_once(admin_client):
    add.enqueue(1, 1)
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(JOBS, {"q": "no such task"})
    assert "0 jobs" in response.content.decode()
    assert len([q for q in queries if "NO SUCH TASK" in q["sql"].upper()]) == 1


# --- a job's page -------------------------------------------------------------------------


def test_job_page_shows_the_task_arguments_state_times_and_attempt_history(admin_client, worker):
    result = fails_with.using(priority=7, queue_name="reports").enqueue(
        3, when={"day": "monday", "count": 2}
    )
    worker.work_off()
    job = job_of(result)
    page = admin_client.get(job_url(job.pk)).content.decode()
    for text in (
        "tests.tasks.fails_with",
        "reports",
        ">7<",
        '<pre class="dq-json">[\n  3\n]</pre>',
        "&quot;day&quot;: &quot;monday&quot;",
        'dq-state-failed">Failed<',
        "3 of at most 3",
        "builtins.ValueError</strong>: bad arguments (3,) {&#x27;when&#x27;: {&#x27;day&#x27;",
        'id="dq-attempts"',
        worker.process.name,
    ):
        assert text in page, text
    history = page.split('id="dq-attempts"')[1].split("</table>")[0]
    assert history.count("<tr>") == 4  # a header and three attempts
    assert history.count("Traceback (most recent call last)") == 3
    assert "Enqueued:" in page and "First started:" in page


def test_job_page_of_a_running_job_names_its_worker_and_says_why_it_cannot_be_discarded(
    admin_client, worker
):
    result = add.enqueue(1, 2)
    worker.claim()
    page = admin_client.get(job_url(int(result.id))).content.decode()
    assert worker.process.name in page and worker.process.hostname in page
    assert "dq-state-alive" in page
    assert "can be retried or discarded once it has ended" in page
    assert "Discard</button>" not in page


def test_job_page_of_a_scheduled_job_says_when_it_runs(admin_client):
    result = add.using(run_after=later()).enqueue(1, 2)
    page = admin_client.get(job_url(int(result.id))).content.decode()
    assert "Runs at" in page or "runs at" in page.lower()
    assert "in 59 min" in page or "in 1 h" in page
    assert "Run now</button>" in page and "Discard</button>" in page


def test_arguments_errors_and_tracebacks_are_escaped_everywhere(admin_client, worker):
    result = fails_with.enqueue(SCRIPT)
    worker.work_off()
    job_id = int(result.id)
    assert Job.objects.get(pk=job_id).status == Job.Status.FAILED
    Job.objects.filter(pk=job_id).update(task_path=f"tests.tasks.{SCRIPT}")
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    for url in (job_url(job_id), JOBS, FAILED, QUEUES):
        page = admin_client.get(url).content.decode()
        assert SCRIPT not in page, url
    page = admin_client.get(job_url(job_id)).content.decode()
    assert page.count(escaped) >= 4  # argument, task path, message, traceback
    assert escaped in admin_client.get(FAILED).content.decode()


# --- the execution lists ------------------------------------------------------------------


def test_failed_list_shows_error_class_message_traceback_attempts_and_time(admin_client, worker):
    job = failed_job(worker, always_boom)
    response = admin_client.get(FAILED)
    page = response.content.decode()
    row = page.split(f'href="{job_url(job.pk)}"')[1].split("</tr>")[0]
    assert "builtins.RuntimeError" in row and "boom" in row
    assert "Traceback (most recent call last)" in row
    assert '<td class="field-attempts">3</td>' in row
    failed_at = FailedExecution.objects.get(job=job).failed_at
    assert str(failed_at.year) in row
    assert shown_ids(admin_client.get(FAILED, {"queue": "default"})) != []
    assert shown_ids(admin_client.get(FAILED, {"queue": "nope"})) == []
    detail = admin_client.get(
        reverse("admin:dq_failedexecution_change", args=[job.failed_execution.pk])
    )
    assert detail.status_code == 302 and detail["Location"] == job_url(job.pk)


def test_claimed_list_shows_process_host_since_and_a_stale_heartbeat(admin_client, worker):
    stuck, fine = add.enqueue(1, 1), add.enqueue(2, 2)
    worker.claim(limit=1)
    other = InProcessWorker()
    other.claim(limit=1)
    Process.objects.filter(pk=other.process.pk).update(
        last_heartbeat_at=timezone.now() - timedelta(minutes=5)
    )
    page = admin_client.get(CLAIMED).content.decode()
    assert worker.process.name in page and other.process.name in page
    assert worker.process.hostname in page
    assert page.count("dq-state-alive") == 1 and page.count("dq-state-stale") == 1
    stale = shown_ids(admin_client.get(CLAIMED, {"heartbeat": "stale"}))
    alive = shown_ids(admin_client.get(CLAIMED, {"heartbeat": "alive"}))
    claims = dict(ClaimedExecution.objects.values_list("process_id", "pk"))
    assert stale == [claims[other.process.pk]] and alive == [claims[worker.process.pk]]
    # A claim whose process row is gone is still listed, and stale.
    Process.objects.filter(pk=other.process.pk).delete()
    page = admin_client.get(CLAIMED).content.decode()
    assert f"process {other.process.pk} (gone)" in page
    assert len(shown_ids(admin_client.get(CLAIMED, {"heartbeat": "stale"}))) == 1
    assert {int(stuck.id), int(fine.id)} == set(
        ClaimedExecution.objects.values_list("job_id", flat=True)
    )


def test_scheduled_list_says_when_and_why(admin_client, worker):
    deferred = add.using(run_after=later()).enqueue(1, 1)
    backing_off = always_boom.using(max_attempts=2, backoff=600).enqueue()
    worker.work_off()
    page = admin_client.get(SCHEDULED).content.decode()
    assert "its run_after time" in page
    assert "retry: attempt 2 of at most 2" in page
    assert page.count("in 59 min") + page.count("in 1 h") >= 1
    assert job_url(int(deferred.id)) in page and job_url(int(backing_off.id)) in page


def test_process_list_shows_kind_host_pid_heartbeat_and_what_it_runs(admin_client, worker):
    result = add.enqueue(1, 1)
    worker.claim()
    stale = InProcessWorker()
    Process.objects.filter(pk=stale.process.pk).update(
        last_heartbeat_at=timezone.now() - timedelta(minutes=5)
    )
    page = admin_client.get(PROCESSES).content.decode()
    row = page.split(worker.process.name)[1].split("</tr>")[0]
    assert "Worker" in row and worker.process.hostname in row and str(worker.process.pid) in row
    assert "dq-state-alive" in row and job_url(int(result.id)) in row
    stale_row = page.split(stale.process.name)[1].split("</tr>")[0]
    assert "dq-state-stale" in stale_row
    detail = admin_client.get(reverse("admin:dq_process_change", args=[worker.process.pk]))
    assert job_url(int(result.id)) in detail.content.decode()


def test_blocked_jobs_say_what_they_wait_for_and_can_be_discarded(operator):
    running = limited.enqueue("first")
    blocked = limited.enqueue("second")
    assert job_of(blocked).status == Job.Status.BLOCKED
    assert shown_ids(operator.get(JOBS, {"state": "blocked"})) == [int(blocked.id)]
    page = operator.get(BLOCKED).content.decode()
    assert job_url(int(blocked.id)) in page
    # The job that holds the key's one slot, named beside what the blocked one waits for.
    assert (
        "a free slot of <code>limited</code> (at most 1 at once); "
        f'held by <a href="{job_url(int(running.id))}">#{running.id}</a>'
    ) in page
    page = operator.get(job_url(int(blocked.id))).content.decode()
    assert 'dq-state-blocked">Blocked<' in page and "a free slot of <code>limited</code>" in page
    assert "Discard</button>" in page and "Run now</button>" in page
    row = queue_row(operator.get(QUEUES).content.decode(), "default")
    assert counts(row)[:3] == ["1", "0", "1"]  # ready, scheduled, blocked
    response = act_on_page(operator, int(blocked.id), "discard_jobs", confirm="yes")
    assert messages_of(response) == ["Discarded 1 job."]
    assert list(Job.objects.values_list("pk", flat=True)) == [int(running.id)]


def test_run_now_on_a_blocked_job_says_it_exceeds_the_limit_and_asks_first(operator, worker):
    limited.enqueue("first")
    blocked = limited.enqueue("second")
    scheduled = add.using(run_after=later()).enqueue(1, 1)

    response = act(operator, JOBS, "run_jobs_now", int(blocked.id), int(scheduled.id))

    page = response.content.decode()
    assert "Run 1 blocked job now, over its concurrency limit?" in page
    assert "waits for a slot of <code>limited</code> (at most 1 at once)" in page
    assert 'value="Yes, run over the limit"' in page
    assert job_of(blocked).status == Job.Status.BLOCKED
    assert job_of(scheduled).status == Job.Status.SCHEDULED
    assert not LogEntry.objects.exists()
    form = page.split('<form method="post">')[1].split("</form>")[0]
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', form))
    assert (fields["action"], fields["confirm"]) == ("run_jobs_now", "yes")


def test_run_now_of_scheduled_jobs_only_asks_nothing(operator, worker):
    scheduled = add.using(run_after=later()).enqueue(1, 1)
    response = act(operator, JOBS, "run_jobs_now", int(scheduled.id))
    assert messages_of(response) == ["1 job ready to run now."]


def test_run_now_on_a_blocked_job_makes_it_ready_over_its_limit(operator, worker):
    running = limited.enqueue("first")
    blocked = limited.enqueue("second")
    waiting = limited.enqueue("third")
    response = act_on_page(operator, int(blocked.id), "run_jobs_now", confirm="yes")
    assert messages_of(response) == ["1 job ready to run now."]
    assert job_of(blocked).status == Job.Status.READY
    assert job_of(waiting).status == Job.Status.BLOCKED
    # The first run to end pays back the slot taken over the limit; the second frees one.
    for still_blocked in (True, False):
        [job] = worker.claim(limit=1)
        assert job.pk in {int(running.id), int(blocked.id)}
        worker.perform(job)
        assert (job_of(waiting).status == Job.Status.BLOCKED) is still_blocked


def test_cancelled_jobs_have_their_own_state(admin_client):
    result = add.enqueue(1, 1)
    Job.cancel(int(result.id), using="default")
    assert shown_ids(admin_client.get(JOBS, {"state": "cancelled"})) == [int(result.id)]
    assert shown_ids(admin_client.get(JOBS, {"state": "ready"})) == []
    row = queue_row(admin_client.get(QUEUES).content.decode(), "default")
    assert counts(row)[-1] == "1"
    page = admin_client.get(job_url(int(result.id))).content.decode()
    assert 'dq-state-cancelled">Cancelled<' in page and "Discard</button>" not in page


# --- the queues overview ------------------------------------------------------------------


def queue_row(page, name):
    return page.split(f'data-queue="{name}"')[1].split("</tr>")[0]


def cells(row):
    return re.findall(r'<td class="dq-num">(.*?)</td>', row, re.S)


def counts(row):
    return [re.sub(r"<[^>]+>", "", cell).strip() for cell in cells(row)]


def test_overview_counts_jobs_per_queue_and_state_and_shows_the_last_hour(admin_client, worker):
    add.using(queue_name="mail").enqueue(1, 1)
    boom.using(queue_name="mail").enqueue()
    worker.work_off()  # one finished, one failed on mail
    add.using(queue_name="mail").enqueue(2, 2)  # ready
    add.using(queue_name="mail", run_after=later()).enqueue(3, 3)  # scheduled
    add.using(queue_name="mail").enqueue(4, 4)
    worker.claim(limit=1)  # running
    ReadyExecution.objects.update(created_at=timezone.now() - timedelta(minutes=3))
    Pause.pause("idle", using="default")
    page = admin_client.get(QUEUES).content.decode()
    mail = queue_row(page, "mail")
    # ready, scheduled, blocked, running, failed, finished, cancelled
    assert counts(mail) == ["1", "1", "0", "1", "1", "1", "0"]
    assert "?state=failed&amp;queue=mail" in mail
    assert ">3 min" in mail
    assert "dq-state-active" in mail
    assert "dq-state-paused" in queue_row(page, "idle")
    assert counts(queue_row(page, "idle")) == ["0"] * 7
    assert "Last hour: 1 finished, 1 failed" in page
    bars = re.findall(r"<title>\d\d:\d\d \u2013 (\d+) finished, (\d+) failed</title>", page)
    assert len(bars) == 60 * 3  # a minute per bar: the whole chart and one per queue
    assert [sum(int(bar[i]) for bar in bars) for i in (0, 1)] == [2, 2]  # chart + mail's
    assert worker.process.name in page


def test_overview_caps_finished_counts(admin_client, worker, monkeypatch):
    from dq import stats

    monkeypatch.setattr(stats, "CLOSED_COUNT_CAP", 2)
    for i in range(3):
        add.enqueue(i, i)
    worker.work_off()
    with CaptureQueriesContext(connection) as queries:
        page = admin_client.get(QUEUES).content.decode()
    assert counts(queue_row(page, "default"))[-2:] == ["2+", "0"]  # finished, cancelled
    finished_counts = [
        q["sql"] for q in queries if "COUNT(" in q["sql"] and "= 'successful'" in q["sql"]
    ]
    assert finished_counts and all("LIMIT 3" in sql for sql in finished_counts)


# --- retry --------------------------------------------------------------------------------


def test_retry_from_a_job_page_runs_the_job_again_and_keeps_its_history(operator, worker, release):
    job = failed_job(worker, fails_until_released, "a", release.path)
    page = operator.get(job_url(job.pk)).content.decode()
    assert "Retry</button>" in page and "Discard</button>" in page
    response = act_on_page(operator, job.pk, "retry_jobs")
    assert messages_of(response) == ["Retried 1 job: ready to run again."]
    job.refresh_from_db()
    assert job.status == Job.Status.READY
    release.set()
    worker.work_off()
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCESSFUL and job.return_value == "a"
    assert [bool(attempt["error"]) for attempt in job.attempts] == [True, False]
    entry = LogEntry.objects.get(object_id=str(job.pk))
    assert entry.action_flag == CHANGE and entry.user.username == "operator"
    assert "Retried" in entry.get_change_message()


def test_retry_a_selection(operator, worker):
    first, second, third = (failed_job(worker) for _ in range(3))
    response = act(operator, JOBS, "retry_jobs", first.pk, third.pk)
    assert messages_of(response) == ["Retried 2 jobs: ready to run again."]
    statuses = dict(Job.objects.values_list("pk", "status"))
    assert statuses[first.pk] == statuses[third.pk] == Job.Status.READY
    assert statuses[second.pk] == Job.Status.FAILED
    assert LogEntry.objects.count() == 2


def test_retry_all_failed_jobs_matching_the_filter_in_batches(operator, worker, monkeypatch):
    monkeypatch.setattr(admin_base, "BATCH_SIZE", 2)
    mail = [failed_job(worker, boom.using(queue_name="mail")) for _ in range(5)]
    other = failed_job(worker)
    url = f"{FAILED}?queue=mail"
    with CaptureQueriesContext(connection) as queries:
        response = act(operator, url, "retry_jobs", mail[0].failed_execution.pk, select_across=1)
    assert messages_of(response) == ["Retried 5 jobs: ready to run again."]
    assert set(Job.objects.filter(status=Job.Status.READY).values_list("pk", flat=True)) == {
        job.pk for job in mail
    }
    assert Job.objects.get(pk=other.pk).status == Job.Status.FAILED
    batches = [
        q for q in queries if "dq_failed_execution" in q["sql"] and q["sql"].endswith("LIMIT 2")
    ]
    assert len(batches) == 3  # 2 + 2 + 1, each read after the last key
    assert LogEntry.objects.count() == 5


def test_retry_on_the_jobs_list_skips_jobs_that_have_not_failed(operator, worker):
    result = add.enqueue(1, 1)
    response = act(operator, JOBS, "retry_jobs", int(result.id))
    assert messages_of(response) == ["No failed job selected: nothing retried."]
    assert job_of(result).status == Job.Status.READY


# --- discard ------------------------------------------------------------------------------


def test_discard_one_failed_job_from_its_page(operator, worker):
    job = failed_job(worker)
    response = act_on_page(operator, job.pk, "discard_jobs", confirm="yes")
    assert response.redirect_chain[-1][0] == JOBS
    assert messages_of(response) == ["Discarded 1 job."]
    assert not Job.objects.filter(pk=job.pk).exists()
    assert not FailedExecution.objects.exists()
    entry = LogEntry.objects.get(object_id=str(job.pk))
    assert entry.action_flag == DELETION and entry.object_repr == f"tests.tasks.boom #{job.pk}"


def test_discard_asks_first_and_the_confirmation_posts_the_same_action(operator, worker):
    job = failed_job(worker)
    response = act_on_page(operator, job.pk, "discard_jobs")
    page = response.content.decode()
    assert "Discard 1 job?" in page and f"tests.tasks.boom #{job.pk}" in page
    assert Job.objects.filter(pk=job.pk).exists() and not LogEntry.objects.exists()
    form = page.split('<form method="post">')[1].split("</form>")[0]
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', form))
    assert fields.pop("csrfmiddlewaretoken")
    assert fields == {
        "CHANGE_FORM-action": "discard_jobs",
        "_selected_action": str(job.pk),
        "confirm": "yes",
    }
    response = operator.post(job_url(job.pk), fields, follow=True)
    assert messages_of(response) == ["Discarded 1 job."]
    assert not Job.objects.filter(pk=job.pk).exists()


def test_discard_a_selection_of_ready_scheduled_and_failed_jobs(operator, worker):
    failed = failed_job(worker)
    ready = add.enqueue(1, 1)
    scheduled = add.using(run_after=later()).enqueue(2, 2)
    kept = add.enqueue(3, 3)
    response = act(
        operator, JOBS, "discard_jobs", failed.pk, int(ready.id), int(scheduled.id), confirm="yes"
    )
    assert messages_of(response) == ["Discarded 3 jobs."]
    assert list(Job.objects.values_list("pk", flat=True)) == [int(kept.id)]
    assert LogEntry.objects.filter(action_flag=DELETION).count() == 3


def test_discard_never_takes_a_running_job_and_says_why(operator, worker):
    running = add.enqueue(1, 1)
    worker.claim()
    ready = add.enqueue(2, 2)
    response = act(operator, JOBS, "discard_jobs", int(running.id), int(ready.id), confirm="yes")
    assert messages_of(response) == [
        "Discarded 1 job.",
        f"Job {running.id} was not discarded: it is running on a worker, and can be discarded "
        "once it has ended.",
    ]
    assert job_of(running).status == Job.Status.RUNNING
    # Forged from the job page as well.
    response = act_on_page(operator, int(running.id), "discard_jobs", confirm="yes")
    assert "was not discarded: it is running" in messages_of(response)[0]
    assert ClaimedExecution.objects.filter(job_id=int(running.id)).exists()


def test_discard_all_scheduled_jobs_matching_the_filter(operator, monkeypatch):
    monkeypatch.setattr(admin_base, "BATCH_SIZE", 2)
    mail = [add.using(queue_name="mail", run_after=later()).enqueue(i, i) for i in range(3)]
    other = add.using(run_after=later()).enqueue(9, 9)
    first = ScheduledExecution.objects.get(job_id=int(mail[0].id))
    url = f"{SCHEDULED}?queue=mail"
    response = act(operator, url, "discard_jobs", first.pk, select_across=1)
    assert "Discard 3 jobs?" in response.content.decode()
    assert Job.objects.count() == 4
    response = act(operator, url, "discard_jobs", first.pk, select_across=1, confirm="yes")
    assert messages_of(response) == ["Discarded 3 jobs."]
    assert list(Job.objects.values_list("pk", flat=True)) == [int(other.id)]


# --- run now ------------------------------------------------------------------------------


def test_run_now_from_a_job_page_and_on_a_selection(operator, worker):
    one, two, three = (add.using(run_after=later()).enqueue(i, i) for i in range(3))
    response = act_on_page(operator, int(one.id), "run_jobs_now")
    assert messages_of(response) == ["1 job ready to run now."]
    response = act(
        operator,
        SCHEDULED,
        "run_jobs_now",
        *ScheduledExecution.objects.filter(job_id=int(two.id)).values_list("pk", flat=True),
    )
    assert messages_of(response) == ["1 job ready to run now."]
    assert sorted(job.pk for job in worker.work_off()) == [int(one.id), int(two.id)]
    assert job_of(three).status == Job.Status.SCHEDULED
    assert LogEntry.objects.filter(action_flag=CHANGE).count() == 2


# --- pause and resume ---------------------------------------------------------------------


def test_pause_and_resume_a_queue_from_the_overview(operator, worker):
    result = add.using(queue_name="mail").enqueue(1, 1)
    page = operator.get(QUEUES).content.decode()
    assert "Pause</button>" in queue_row(page, "mail")
    response = operator.post(PAUSE, {"queue": "mail"}, follow=True)
    assert "dq-state-paused" in queue_row(response.content.decode(), "mail")
    assert Pause.objects.filter(queue_name="mail").exists()
    assert worker.work_off() == []
    response = operator.post(RESUME, {"queue": "mail"}, follow=True)
    assert "Resume</button>" not in queue_row(response.content.decode(), "mail")
    assert [job.pk for job in worker.work_off()] == [int(result.id)]
    assert list(LogEntry.objects.order_by("pk").values_list("change_message", flat=True)) == [
        "Paused queue mail.",
        "Resumed queue mail.",
    ]


def test_pause_a_queue_by_name_before_it_has_jobs(operator):
    response = operator.post(PAUSE, {"queue": " reports "}, follow=True)
    assert "Queue reports is paused" in messages_of(response)[0]
    assert list(Pause.objects.values_list("queue_name", flat=True)) == ["reports"]
    response = operator.post(PAUSE, {"queue": ""}, follow=True)
    assert "A queue name is 1 to 100 characters long." in messages_of(response)
    response = operator.post(RESUME, {"queue": "never-paused"}, follow=True)
    assert messages_of(response) == ["Queue never-paused is not paused."]


# --- permissions, POST and CSRF -----------------------------------------------------------


def test_a_viewer_sees_no_action_and_a_forged_post_is_refused(viewer, worker):
    failed = failed_job(worker)
    scheduled = add.using(run_after=later()).enqueue(1, 1)
    add.using(queue_name="mail").enqueue(1, 1)
    for job_id in (failed.pk, int(scheduled.id)):
        page = viewer.get(job_url(job_id)).content.decode()
        assert "</button>" not in page.split('class="object-tools"')[1].split("</ul>")[0]
    for url in (JOBS, FAILED, SCHEDULED):
        assert 'name="action"' not in viewer.get(url).content.decode()
    queues_page = viewer.get(QUEUES).content.decode()
    assert "Pause</button>" not in queues_page and "dq-pause-queue" not in queues_page
    for action in ("retry_jobs", "discard_jobs", "run_jobs_now"):
        assert act_on_page(viewer, failed.pk, action).status_code == 403, action
        assert act(viewer, JOBS, action, failed.pk).status_code == 403, action
    assert viewer.post(PAUSE, {"queue": "mail"}).status_code == 403
    assert viewer.post(RESUME, {"queue": "mail"}).status_code == 403
    assert job_of_pk(failed.pk).status == Job.Status.FAILED
    assert not Pause.objects.exists() and not LogEntry.objects.exists()


def job_of_pk(pk):
    return Job.objects.get(pk=pk)


def test_each_action_needs_its_own_permission(django_user_model, worker):
    client = staff_client(django_user_model, "retrier", "view_job", "retry_job")
    failed = failed_job(worker)
    page = client.get(job_url(failed.pk)).content.decode()
    assert "Retry</button>" in page and "Discard</button>" not in page
    assert act_on_page(client, failed.pk, "discard_jobs").status_code == 403
    assert act(client, FAILED, "discard_jobs", failed.failed_execution.pk).status_code == 403
    assert client.post(PAUSE, {"queue": "x"}).status_code == 403
    assert act_on_page(client, failed.pk, "retry_jobs").status_code == 200
    assert job_of_pk(failed.pk).status == Job.Status.READY


def test_actions_are_post_only_and_need_a_csrf_token(admin_user, worker):
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    failed = failed_job(worker)
    assert client.get(PAUSE, {"queue": "mail"}).status_code == 405
    assert client.post(PAUSE, {"queue": "mail"}).status_code == 403
    response = client.post(
        job_url(failed.pk), {"CHANGE_FORM-action": "retry_jobs", "_selected_action": failed.pk}
    )
    assert response.status_code == 403
    assert job_of_pk(failed.pk).status == Job.Status.FAILED and not Pause.objects.exists()
    # With the token from the page, the same POST goes through.
    page = client.get(job_url(failed.pk)).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)[1]
    response = client.post(
        job_url(failed.pk),
        {
            "CHANGE_FORM-action": "retry_jobs",
            "_selected_action": failed.pk,
            "csrfmiddlewaretoken": token,
        },
    )
    assert response.status_code == 302
    assert job_of_pk(failed.pk).status == Job.Status.READY


# --- the model transitions behind the bulk actions ----------------------------------------


def test_retry_and_discard_work_in_batches_by_primary_key(worker):
    jobs = [failed_job(worker) for _ in range(5)]
    retried = FailedExecution.retry_batches(
        FailedExecution.objects.all(), batch_size=2, using="default"
    )
    assert [[job.pk for job in batch] for batch in retried] == [
        [jobs[0].pk, jobs[1].pk],
        [jobs[2].pk, jobs[3].pk],
        [jobs[4].pk],
    ]
    assert not list(FailedExecution.retry_batches(FailedExecution.objects.all(), using="default"))
    assert set(ReadyExecution.objects.values_list("job_id", flat=True)) == {j.pk for j in jobs}
    worker.claim(limit=1)
    discarded = Job.discard_batches(Job.objects.all(), batch_size=2, using="default")
    assert [(len(gone), len(kept)) for gone, kept in discarded] == [(1, 1), (2, 0), (1, 0)]
    assert Job.objects.get().status == Job.Status.RUNNING


def recurring_task(key="nightly"):
    return RecurringTask.objects.create(
        key=key,
        backend="default",
        task_path="tests.tasks.add",
        schedule="0 3 * * *",
        timezone="Europe/Paris",
        args=[2, 3],
        description="Adds <b>two</b> numbers",
    )


def test_recurring_tasks_show_schedule_last_and_next_run_and_their_jobs(operator):
    task = recurring_task()
    url = reverse("admin:dq_recurringtask_changelist")
    page = operator.get(url).content.decode()
    assert "nightly" in page and "0 3 * * *" in page and "Europe/Paris" in page
    next_run = task.next_run_at(timezone.now())
    assert next_run.hour == 3 and next_run.minute == 0
    response = operator.post(url, {"action": "run_now", "_selected_action": [task.pk]}, follow=True)
    [execution] = RecurringExecution.objects.filter(task_key="nightly")
    assert Job.objects.get(pk=execution.job_id).args == [2, 3]
    assert messages_of(response) == [f"Enqueued nightly as job {execution.job_id}."]
    detail = operator.get(reverse("admin:dq_recurringtask_change", args=[task.pk])).content
    assert job_url(execution.job_id) in detail.decode()
    assert "Adds &lt;b&gt;two&lt;/b&gt; numbers" in detail.decode()
    assert LogEntry.objects.filter(object_id=str(task.pk)).exists()


def test_run_now_of_a_recurring_task_needs_its_permission(viewer):
    task = recurring_task()
    url = reverse("admin:dq_recurringtask_changelist")
    assert "run_now" not in viewer.get(url).content.decode()
    response = viewer.post(url, {"action": "run_now", "_selected_action": [task.pk]})
    assert response.status_code == 403
    assert not RecurringExecution.objects.exists()


def test_cancel_ends_a_waiting_job_and_asks_a_running_one_to_stop(operator, worker):
    running = add.enqueue(1, 1)
    worker.claim()
    waiting = add.enqueue(2, 2)
    response = act_on_page(operator, int(waiting.id), "cancel_jobs")
    assert messages_of(response) == ["Cancelled 1 job; asked 0 jobs running to stop."]
    assert job_of(waiting).status == Job.Status.CANCELLED
    response = act_on_page(operator, int(running.id), "cancel_jobs")
    assert messages_of(response) == ["Cancelled 0 jobs; asked 1 job running to stop."]
    assert job_of(running).cancel_requested_at is not None
    assert LogEntry.objects.filter(object_id=running.id, change_message="Cancellation requested.")


def test_cancel_needs_its_permission(viewer):
    result = add.enqueue(1, 1)
    assert "Cancel</button>" not in viewer.get(job_url(int(result.id))).content.decode()
    assert act_on_page(viewer, int(result.id), "cancel_jobs").status_code == 403
    assert job_of(result).status == Job.Status.READY


# --- the lists as a console: buttons per row, times to the second, live refresh ---------


def test_the_failed_list_offers_on_each_row_only_the_buttons_the_user_may_use(
    django_user_model, viewer, worker
):
    failed = failed_job(worker)
    retrier = staff_client(django_user_model, "retrier", "view_job", "retry_job")
    buttons = {
        who: re.findall(r'class="dq-row-button dq-(\w+)"', client.get(FAILED).content.decode())
        for who, client in (("viewer", viewer), ("retrier", retrier))
    }
    assert buttons == {"viewer": [], "retrier": ["retry"]}
    page = retrier.get(FAILED).content.decode()
    assert (
        f'form="dq-row-retry_jobs" name="_selected_action" value="{failed.failed_execution.pk}"'
        in page
    )
    assert 'id="dq-row-retry_jobs"' in page and 'id="dq-row-discard_jobs"' not in page
    # What a row's Discard button posts, forged by a user who may not discard: refused.
    forged = {
        "action": "discard_jobs",
        "index": "0",
        "_selected_action": failed.failed_execution.pk,
    }
    assert retrier.post(FAILED, forged).status_code == 403
    assert Job.objects.filter(pk=failed.pk).exists()


def test_a_row_button_retries_its_job_and_says_so(operator, worker):
    failed, other = failed_job(worker), failed_job(worker)
    response = operator.post(
        FAILED,
        {"action": "retry_jobs", "index": "0", "_selected_action": failed.failed_execution.pk},
        follow=True,
    )
    assert "Retried 1 job: ready to run again." in response.content.decode()
    assert job_of_pk(failed.pk).status == Job.Status.READY
    assert job_of_pk(other.pk).status == Job.Status.FAILED


def test_lists_say_times_to_the_second_and_run_times(admin_client, worker):
    result = add.enqueue(1, 2)
    worker.work_off()
    job = Job.objects.get(pk=int(result.id))
    page = admin_client.get(JOBS).content.decode()
    local = timezone.localtime(job.enqueued_at)
    assert f">{local:%H:%M:%S}</time>" in page
    assert re.search(r'<span class="dq-ago">\d+ s ago</span>', page)
    assert re.search(r"<td class=\"field-ran_for\">\d+ ms</td>", page)


@pytest.mark.parametrize(
    ("seconds", "said"),
    [
        (0, "0 s"),
        (12.7, "12 s"),
        (65, "1 min 5 s"),
        (3600, "1 h"),
        (3 * 3600 + 720, "3 h 12 min"),
        (2 * 86400 + 4 * 3600, "2 d 4 h"),
    ],
)
def test_a_span_of_time_is_said_to_the_second(seconds, said):
    assert span(seconds) == said


@pytest.mark.parametrize(
    ("seconds", "said"),
    [(0.0042, "4 ms"), (0.85, "850 ms"), (3.2144, "3.214 s"), (125, "2 min 5 s")],
)
def test_a_run_time_is_said_in_milliseconds_under_a_second(seconds, said):
    assert run_time(seconds) == said


def test_every_dq_list_and_the_overview_carry_the_live_refresh(admin_client):
    for url in (QUEUES, JOBS, FAILED, CLAIMED, SCHEDULED, BLOCKED, PROCESSES):
        page = admin_client.get(url).content.decode()
        assert 'id="dq-live"' in page and "dq/live.js" in page, url
        assert "data-dq-live=" in page, url


def test_dq_pages_are_listed_in_the_order_staff_use_them(admin_client):
    """The overview first, then jobs and what needs a person (the admin sorts by name)."""
    page = admin_client.get(reverse("admin:app_list", args=["dq"])).content.decode()
    ids = re.findall(r'<th scope="row" id="dq-(\w+)">', page)
    names = [Job._meta.apps.get_model("dq", name)._meta.verbose_name_plural for name in ids]
    assert [str(name).capitalize() for name in dict.fromkeys(names)] == [
        "Queues",
        "Jobs",
        "Failed executions",
        "Claimed executions",
        "Scheduled executions",
        "Blocked executions",
        "Batches",
        "Recurring tasks",
        "Processes",
    ]
