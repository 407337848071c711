"""Tasks of the example project. Each one stands in for real work of its kind."""

import logging
import time
from datetime import timedelta

from django.tasks import task
from django.utils import timezone

logger = logging.getLogger(__name__)


@task
def send_welcome_email(user_id):
    """Quick and always succeeds."""
    logger.info("welcome email sent to user %s", user_id)
    return {"user_id": user_id, "sent": True}


@task
def generate_report(report_id, seconds=2):
    """Slow: keeps one worker thread busy for a while."""
    started = time.monotonic()
    time.sleep(seconds)  # the report's work
    elapsed = round(time.monotonic() - started, 2)
    logger.info("report %s generated in %s s", report_id, elapsed)
    return {"report_id": report_id, "seconds": elapsed}


@task(max_attempts=4, backoff=1, takes_context=True)
def charge_card(context, order_id, fail_times=2):
    """Fails the first `fail_times` attempts, as a flaky payment gateway would, then succeeds."""
    if context.attempt <= fail_times:
        raise ConnectionError(f"payment gateway unreachable (attempt {context.attempt})")
    logger.info("order %s charged on attempt %s", order_id, context.attempt)
    return {"order_id": order_id, "charged": True, "attempt": context.attempt}


@task(max_attempts=3, backoff=5, takes_context=True)
def import_feed(context, feed):
    """Fails for good: the supplier never answers a first, second or third attempt, and
    three is all it has. Retry it in the admin and its fourth attempt succeeds; the
    "legacy" feed never answers, so retrying that one fails again."""
    if feed == "legacy" or context.attempt <= 3:
        raise ConnectionError(f"feed {feed!r} did not answer (attempt {context.attempt})")
    logger.info("feed %s imported on attempt %s", feed, context.attempt)
    return {"feed": feed, "attempt": context.attempt}


@task
def send_reminder(user_id):
    """Enqueued to run later, with .using(run_after=...)."""
    logger.info("reminder sent to user %s", user_id)
    return {"user_id": user_id, "reminded": True}


@task(queue_name="media", priority=10)
def resize_image(image_id):
    """Runs on its own queue, ahead of lower-priority jobs."""
    logger.info("image %s resized", image_id)
    return {"image_id": image_id, "sizes": [64, 256, 1024]}


# --- flow control ------------------------------------------------------------------------


@task(concurrency_key="account-{account_id}", concurrency_limit=1)
def sync_account(account_id, batch):
    """At most one sync per account runs at a time; the others wait as blocked jobs and
    are released one by one, by priority then in enqueue order."""
    time.sleep(3)  # talking to the account's bank
    logger.info("account %s: batch %s synced", account_id, batch)
    return {"account_id": account_id, "batch": batch}


@task(unique_key="search-index-{index_name}")
def rebuild_search_index(index_name):
    """Enqueueing it again while one is waiting or running returns that job instead of
    queueing a second rebuild."""
    time.sleep(2)  # the rebuild
    logger.info("search index %s rebuilt", index_name)
    return {"index": index_name}


@task
def simulate_traffic():
    """Stands in for the site's visitors. Runs every minute from OPTIONS["recurring"] and
    books jobs due every 5 seconds (run_after) up to the next full minute, when it runs
    again: the demo never runs dry."""
    now = timezone.now()
    for tick, seconds in enumerate(range(0, 60 - now.second, 5)):
        at = now + timedelta(seconds=seconds)
        send_welcome_email.using(run_after=at).enqueue(tick)
        resize_image.using(run_after=at).enqueue(tick)
        generate_report.using(run_after=at).enqueue(tick, seconds=8)
        # Three syncs of one account at once (accounts 1, 2, 3 in turn): one runs, two wait.
        account_id = tick % 3 + 1
        sync_account.using(run_after=at).enqueue_many(
            [((account_id, batch), {}) for batch in range(1, 4)]
        )
    # One job a minute that fails for good, to retry or discard in the admin, and one that
    # waits ten minutes, to run now from the admin.
    import_feed.using(run_after=now + timedelta(seconds=30)).enqueue("prices")
    send_reminder.using(run_after=now + timedelta(minutes=10)).enqueue(now.minute)
    logger.info("traffic booked: %s ticks, up to the next full minute", tick + 1)
    return {"ticks": tick + 1}


@task
def clean_up_sessions():
    """Runs every minute from OPTIONS["recurring"] (see settings.py)."""
    from django.contrib.sessions.models import Session

    deleted, _ = Session.objects.filter(expire_date__lt=timezone.now()).delete()
    logger.info("removed %s expired session(s)", deleted)
    return {"deleted": deleted}


@task(takes_context=True)
def export_orders(context, export_id, steps=120):
    """Long: one step a second. Cancelling it (``default_task_backend.cancel(id)``) while
    it runs sets ``context.cancel_requested``; it then stops after the current step."""
    for step in range(1, steps + 1):
        if context.cancel_requested:
            logger.info("export %s cancelled after %s of %s steps", export_id, step - 1, steps)
            return {"export_id": export_id, "steps": step - 1, "cancelled": True}
        time.sleep(1)  # one step of the export
    logger.info("export %s done", export_id)
    return {"export_id": export_id, "steps": steps, "cancelled": False}
