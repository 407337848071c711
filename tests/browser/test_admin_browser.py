"""The admin in a real headless browser: Debian's chromium driven by Playwright, against
pytest-django's live server and a real ``dq_work`` on the same test database.

Without chromium or Playwright these tests are skipped, or fail when ``CI`` is set.
``DQ_UPDATE_SCREENSHOTS=1`` writes the README's screenshots to docs/.
"""

import os
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from dq.batches import batch
from dq.models import Batch, Job, Pause, Process, ReadyExecution, RecurringTask

from ..conftest import ROOT, InProcessWorker, wait_until
from ..tasks import (
    add,
    batch_failed,
    batch_finished,
    batch_succeeded,
    block,
    boom,
    charge_card,
    fails_until_released,
    fails_with,
    limited,
    record,
)

pytestmark = pytest.mark.django_db(transaction=True)

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags chromium hangs on an offline machine.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCRIPT = "<script>alert(1)</script>"


def unavailable(reason):
    message = f"browser tests need {reason}"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI is set, so this is a failure; .ci/run installs it)")
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser(django_db_setup):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("Playwright: pip install -e '.[dev]'")
    if not Path(CHROMIUM).exists():
        unavailable(f"Debian's chromium at {CHROMIUM}: apt-get install chromium")
    # Playwright's sync API keeps an event loop in this thread while the browser is open;
    # the tests' ORM calls beside it are synchronous code all the same.
    with pytest.MonkeyPatch.context() as patch, sync_playwright() as playwright:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, live_server, admin_user):
    """A logged-in superuser's page on the live server."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=live_server.url)
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.dialogs = []
    page.on("dialog", lambda dialog: (page.dialogs.append(dialog.message), dialog.dismiss()))
    page.goto("/admin/login/?next=/admin/")
    page.fill("#id_username", admin_user.username)
    page.fill("#id_password", "password")
    page.click("input[type=submit]")
    page.wait_for_url("**/admin/")
    yield page
    context.close()


def state_of(page):
    return page.locator(".field-state .dq-state").inner_text()


def test_retry_a_failed_job_and_see_it_succeed_on_a_live_worker(page, dq_work, release):
    from playwright.sync_api import expect

    work = dq_work("--threads", "2")
    result = fails_until_released.enqueue("browser", release.path)
    job_id = int(result.id)
    wait_until(
        lambda: Job.objects.get(pk=job_id).status == Job.Status.FAILED,
        message=f"the job never failed:\n{work.output()}",
    )

    page.get_by_role("link", name="Failed executions").click()
    expect(page.locator("#result_list")).to_contain_text("ValueError")
    expect(page.locator("#result_list")).to_contain_text("browser: not released yet")
    page.get_by_role("link", name=f"#{job_id}", exact=True).click()
    assert state_of(page) == "Failed"
    expect(page.locator("#dq-attempts")).to_contain_text("Traceback (most recent call last)")

    release.set()
    page.get_by_role("button", name="Retry").click()
    expect(page.locator(".messagelist")).to_contain_text("Retried 1 job")

    def finished():
        page.reload()
        return state_of(page) == "Finished"

    wait_until(finished, interval=0.2, message=f"the retried job never finished:\n{work.output()}")
    rows = page.locator("#dq-attempts tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("ValueError")
    expect(rows.nth(1)).to_contain_text("succeeded")


def test_pause_a_queue_and_see_it_paused_and_unclaimed_until_resumed(page, dq_work):
    from playwright.sync_api import expect

    waiting = record.using(queue_name="mail").enqueue("mail")
    work = dq_work("--threads", "2")
    page.get_by_role("link", name="Queues").click()
    row = page.locator("#dq-queues tr[data-queue=mail]")
    expect(row).to_be_visible()
    wait_until(lambda: Job.objects.get(pk=int(waiting.id)).status == Job.Status.SUCCESSFUL)

    row.get_by_role("button", name="Pause").click()
    expect(page.locator(".messagelist")).to_contain_text("Queue mail is paused")
    expect(row.locator(".dq-queue-status")).to_have_text("paused")
    assert Pause.objects.filter(queue_name="mail").exists()

    paused = record.using(queue_name="mail").enqueue("paused")
    other = record.enqueue("other")
    # The worker took the other queue's job after the paused one was there: it had the chance.
    wait_until(lambda: Job.objects.get(pk=int(other.id)).status == Job.Status.SUCCESSFUL)
    assert Job.objects.get(pk=int(paused.id)).status == Job.Status.READY

    page.reload()
    expect(row.locator("td.dq-num").first).to_have_text("1")  # ready, waiting
    row.get_by_role("button", name="Resume").click()
    expect(row.locator(".dq-queue-status")).to_have_text("active")
    wait_until(
        lambda: Job.objects.get(pk=int(paused.id)).status == Job.Status.SUCCESSFUL,
        message=f"the resumed queue's job never ran:\n{work.output()}",
    )


def live_every_2_seconds(page):
    """Turn the page's live refresh to its shortest interval, as a person would, and mark
    the page: the mark is gone if the page is ever loaded again."""
    page.locator("#dq-live-every").select_option("2")
    page.evaluate("window.dqSamePage = true")


def test_counts_and_states_change_on_screen_when_a_job_finishes(page, dq_work, release):
    """The overview and a filtered job list refresh by themselves: a job that finishes
    changes its queue's count and its row's state, without a reload or a navigation, and
    the list keeps its filter."""
    from playwright.sync_api import expect

    dq_work("--threads", "2")
    result = block.using(queue_name="live").enqueue("watched", release.path)
    job_id = int(result.id)
    wait_until(lambda: Job.objects.get(pk=job_id).status == Job.Status.RUNNING)

    page.goto("/admin/dq/queue/")
    running, finished = (
        page.locator(f"#dq-queues tr[data-queue=live] td.dq-num >> nth={index}") for index in (3, 5)
    )
    expect(running).to_have_text("1")
    expect(finished).to_have_text("0")
    live_every_2_seconds(page)
    release.set()
    expect(finished).to_have_text("1")
    expect(running).to_have_text("0")
    assert page.evaluate("window.dqSamePage") is True

    second = block.using(queue_name="live").enqueue("second", release.path + "-2")
    wait_until(lambda: Job.objects.get(pk=int(second.id)).status == Job.Status.RUNNING)
    page.goto("/admin/dq/job/?queue=live")
    row = page.locator(f"#result_list tbody tr:has(input.action-select[value='{second.id}'])")
    expect(row.locator(".dq-state")).to_have_text("Running")
    live_every_2_seconds(page)
    Path(release.path + "-2").touch()
    expect(row.locator(".dq-state")).to_have_text("Finished")
    assert page.evaluate("window.dqSamePage") is True
    assert page.url.endswith("/admin/dq/job/?queue=live")
    expect(page.locator("#result_list tbody tr")).to_have_count(2)  # the filter still holds


def test_retry_and_discard_from_a_row_of_the_failed_list(page, worker):
    from playwright.sync_api import expect

    retried = boom.using(queue_name="rows").enqueue()
    discarded = boom.using(queue_name="rows").enqueue()
    worker.work_off()
    page.goto("/admin/dq/failedexecution/")

    page.locator(f"button.dq-row-button[title='Retry job {retried.id}']").click()
    expect(page.locator(".messagelist")).to_contain_text("Retried 1 job: ready to run again.")
    assert Job.objects.get(pk=int(retried.id)).status == Job.Status.READY
    assert Job.objects.get(pk=int(discarded.id)).status == Job.Status.FAILED

    page.locator(f"button.dq-row-button[title='Discard job {discarded.id}']").click()
    expect(page.locator("#content")).to_contain_text("Discard 1 job?")
    page.get_by_role("button", name="Yes, discard").click()
    expect(page.locator(".messagelist")).to_contain_text("Discarded 1 job.")
    assert not Job.objects.filter(pk=int(discarded.id)).exists()
    assert Job.objects.get(pk=int(retried.id)).status == Job.Status.READY


def test_a_batchs_progress_bar_follows_its_jobs_and_retry_reopens_it(page, worker):
    """The batches list's bars refresh by themselves as the batch's jobs end, each segment
    as wide as its share of the jobs; a batch's page retries its failed jobs."""
    from playwright.sync_api import expect

    with batch(
        on_finish=batch_finished, on_failure=batch_failed, description="nightly import"
    ) as b:
        add.enqueue(1, 1)
        add.enqueue(2, 2)
        boom.enqueue()
        waiting = add.using(run_after=timezone.now() + timedelta(hours=1)).enqueue(3, 3)
    page.goto("/admin/dq/batch/")
    row = page.locator(f"#result_list tbody tr:has(input.action-select[value='{b.id}'])")
    expect(row.locator(".dq-progress-text")).to_have_text("0 of 4 ended")
    expect(row.locator(".field-finished")).to_have_text("running")
    live_every_2_seconds(page)
    worker.work_off(limit=3)
    expect(row.locator(".dq-progress-text")).to_have_text("3 of 4 ended")
    assert page.evaluate("window.dqSamePage") is True

    Job.cancel(int(waiting.id), using="default")  # the last job ends: the batch finishes
    page.reload()
    expect(row.locator(".dq-progress-text")).to_have_text("4 of 4 ended")
    shares = row.locator(".dq-progress-bar").evaluate(
        """(bar) => Object.fromEntries([...bar.children].map((segment) => [
            segment.className.replace("dq-progress-", ""),
            segment.getBoundingClientRect().width / bar.clientWidth,
        ]))"""
    )
    assert shares == pytest.approx({"succeeded": 0.5, "failed": 0.25, "cancelled": 0.25}, abs=0.01)
    assert row.locator(".dq-progress").get_attribute("title") == (
        "2 succeeded, 1 failed, 1 cancelled, 0 pending, of 4"
    )
    expect(row.locator(".field-finished")).not_to_have_text("running")
    expect(row.locator(".field-callbacks_and_jobs")).to_contain_text("failure #")

    row.get_by_role("link", name="nightly import").click()
    expect(page.locator(".field-jobs")).to_contain_text("4 jobs")
    page.get_by_role("button", name="Retry failed jobs").click()
    expect(page.locator(".messagelist")).to_contain_text(
        "Retried 1 job: ready to run again. Re-opened 1 finished batch."
    )
    expect(page.locator(".fieldBox.field-pending_jobs .readonly")).to_have_text("1")
    expect(page.locator(".fieldBox.field-finished .readonly")).to_have_text("running")
    expect(page.get_by_role("button", name="Retry failed jobs")).to_have_count(0)
    reopened = Batch.objects.get(pk=b.id)
    assert (reopened.finished_at, reopened.failed, reopened.pending) == (None, 0, 1)

    page.get_by_role("link", name="4 jobs").click()
    expect(page.locator("#result_list tbody tr")).to_have_count(4)
    expect(page.locator("#changelist-filter")).to_contain_text("Batch: nightly import")


LISTS = [
    "job",
    "failedexecution",
    "claimedexecution",
    "scheduledexecution",
    "blockedexecution",
    "batch",
    "process",
    "recurringtask",
]


def a_row_in_every_list(worker):
    """Jobs in every state with long names and arguments, as a busy site has them."""
    long_queue = "notifications-high-priority"
    for i in range(3):
        charge_card.using(queue_name=long_queue, priority=10).enqueue(
            4711 + i, amount={"value": "129.90", "currency": "EUR"}
        )
    callbacks = {"on_finish": batch_finished, "on_success": batch_succeeded}
    with batch(**callbacks, on_failure=batch_failed, description="monthly invoices for customers"):
        for i in range(3):
            charge_card.enqueue(4800 + i, amount={"value": "12.00", "currency": "EUR"})
        boom.enqueue()
    worker.work_off()
    add.using(run_after=timezone.now() + timedelta(minutes=30)).enqueue(7, 7)
    add.using(queue_name=long_queue).enqueue(1, 2)
    worker.claim(limit=1)
    limited.enqueue("first")
    limited.enqueue("second")
    RecurringTask.objects.create(
        key="clean-up-expired-sessions-every-night",
        backend="default",
        task_path="tests.tasks.add",
        schedule="*/5 * * * *",
        timezone="Europe/Paris",
        args=[2, 3],
    )


@pytest.mark.parametrize("name", LISTS)
def test_a_list_fits_1280_pixels_with_the_menu_open(page, worker, name):
    """Every header of the list is inside the list's box, which needs no scrolling."""
    a_row_in_every_list(worker)
    page.goto(f"/admin/dq/{name}/")
    assert page.locator("#nav-sidebar").is_visible()
    fit = page.evaluate(
        """() => {
            const box = document.querySelector("#changelist .results");
            const right = box.getBoundingClientRect().right;
            return {
                scrolls: box.scrollWidth > box.clientWidth,
                cut: [...box.querySelectorAll("thead th")]
                    .filter(th => th.getBoundingClientRect().right > right + 1)
                    .map(th => th.innerText.trim()),
            };
        }"""
    )
    assert fit == {"scrolls": False, "cut": []}


@pytest.mark.parametrize("name", ["queue", "job", "failedexecution"])
def test_on_a_phone_a_wide_table_scrolls_inside_its_box_not_the_page(page, worker, name):
    a_row_in_every_list(worker)
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"/admin/dq/{name}/")
    box = "#changelist .results" if name != "queue" else "[data-dq-live=queues]"
    widths = page.evaluate(
        """(box) => {
            const element = document.querySelector(box);
            return {
                page: document.documentElement.scrollWidth,
                overflow: getComputedStyle(element).overflowX,
                boxRight: Math.round(element.getBoundingClientRect().right),
            };
        }""",
        box,
    )
    assert widths["page"] <= 390, widths
    assert widths["overflow"] == "auto" and widths["boxRight"] <= 390, widths


def test_a_job_whose_argument_is_a_script_tag_runs_no_script(page, worker):
    result = fails_with.enqueue(SCRIPT)
    worker.work_off()
    page.goto(f"/admin/dq/job/{result.id}/change/")
    assert page.locator(".field-positional_arguments pre").inner_text() == f'[\n  "{SCRIPT}"\n]'
    page.goto("/admin/dq/failedexecution/")
    page.goto("/admin/dq/job/?q=fails_with")
    assert page.dialogs == []
    assert page.locator("script", has_text="alert(1)").count() == 0


def test_screenshots_of_the_queues_overview_and_a_failed_job(page, tmp_path):
    """The README's pictures, from realistic data: several queues, an hour of work."""
    worker = InProcessWorker()
    for i in range(48):
        add.using(queue_name=("default", "emails", "media")[i % 3]).enqueue(i, i)
    for _ in range(3):
        boom.using(queue_name="emails").enqueue()
    failed = charge_card.using(queue_name="payments", priority=10).enqueue(
        4711, amount={"value": "129.90", "currency": "EUR"}
    )
    worker.work_off()
    # Spread the hour's work over the last hour, as if it had been running all along.
    now = timezone.now()
    for index, job in enumerate(Job.objects.exclude(pk=int(failed.id)).order_by("pk")):
        finished = now - timedelta(minutes=(index * 37) % 58, seconds=index)
        began = finished - timedelta(milliseconds=20 + index * 7)
        Job.objects.filter(pk=job.pk).update(
            enqueued_at=began - timedelta(milliseconds=300),
            started_at=began,
            last_attempted_at=began,
            finished_at=finished,
        )
    for i in range(4):
        add.using(queue_name="reports").enqueue(i, i)
    Pause.pause("reports", using="default")
    ReadyExecution.objects.update(created_at=now - timedelta(minutes=12))
    add.using(queue_name="default", run_after=now + timedelta(minutes=30)).enqueue(7, 7)
    add.using(queue_name="media").enqueue(99, 99)
    worker.claim(limit=1)
    limited.enqueue("first")  # ready, holding the key's one slot
    limited.enqueue("second")  # blocked until the first ends
    Process.objects.filter(pk=worker.process.pk).update(metadata={"queues": ["*"], "threads": 5})

    folder = ROOT / "docs" if os.environ.get("DQ_UPDATE_SCREENSHOTS") else tmp_path
    folder.mkdir(exist_ok=True)
    page.goto("/admin/dq/queue/")
    page.locator("#toggle-nav-sidebar").click()  # the pictures show the page, not the menu
    page.locator("#dq-queues").wait_for()
    page.screenshot(path=folder / "admin-queues.png", full_page=True)
    page.goto(f"/admin/dq/job/{failed.id}/change/")
    page.locator("#dq-attempts").wait_for()
    page.screenshot(path=folder / "admin-failed-job.png", full_page=True)
    page.goto("/admin/dq/job/")
    page.screenshot(path=folder / "admin-jobs.png")
    page.goto("/admin/dq/failedexecution/")
    page.screenshot(path=folder / "admin-failed.png")
    shots = ("admin-queues.png", "admin-failed-job.png", "admin-jobs.png", "admin-failed.png")
    for name in shots:
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
