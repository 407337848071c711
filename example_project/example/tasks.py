"""Tasks of the example project. Each one stands in for real work of its kind."""

import logging
import time

from django.tasks import task

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
