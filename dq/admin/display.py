"""Small, escaped HTML fragments the dq admin pages share."""

import json
from datetime import datetime
from typing import TYPE_CHECKING

from django.urls import reverse
from django.utils import timezone
from django.utils.formats import localize
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.timesince import timesince, timeuntil

from ..stats import STATE_BY_STATUS

if TYPE_CHECKING:
    from ..models import BlockedExecution


def state_badge(status: str) -> SafeString:
    state = STATE_BY_STATUS.get(status)
    return format_html(
        '<span class="dq-state dq-state-{}">{}</span>',
        state.name if state else status,
        state.label if state else status,
    )


def alive_badge(alive: bool) -> SafeString:
    if alive:
        return format_html('<span class="dq-state dq-state-alive">{}</span>', "alive")
    return format_html('<span class="dq-state dq-state-stale">{}</span>', "stale")


def job_link(job_id: int, text: str | None = None) -> SafeString:
    return format_html(
        '<a href="{}">{}</a>',
        reverse("admin:dq_job_change", args=[job_id]),
        text if text is not None else f"#{job_id}",
    )


def process_link(process_id: int, name: str) -> SafeString:
    return format_html(
        '<a href="{}">{}</a>', reverse("admin:dq_process_change", args=[process_id]), name
    )


def waiting_for(blocked: "BlockedExecution") -> SafeString:
    """What a blocked execution waits for: a slot of its concurrency key."""
    return format_html(
        "a free slot of <code>{}</code> (at most {} at once)",
        blocked.concurrency_key,
        blocked.job.concurrency_limit,
    )


def pretty_json(value: object) -> SafeString:
    return format_html(
        '<pre class="dq-json">{}</pre>',
        json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True),
    )


def moment(value: datetime | str | None, now: datetime | None = None) -> SafeString | str:
    """An absolute time with how long ago (or how far ahead) it is."""
    if value is None:
        return "-"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    now = now or timezone.now()
    relative = f"{timesince(value, now)} ago" if value <= now else f"in {timeuntil(value, now)}"
    return format_html(
        '{} <span class="dq-ago">({})</span>', localize(timezone.localtime(value)), relative
    )


def age(value: datetime | None, now: datetime | None = None) -> str:
    """How long ago ``value`` was, short: "3\u00a0minutes"."""
    if value is None:
        return "-"
    return timesince(value, now or timezone.now())


def duration(started_at: str | None, finished_at: str | None) -> str:
    """Seconds between two ISO times of an attempt, rounded for reading."""
    if not started_at or not finished_at:
        return "-"
    seconds = (
        datetime.fromisoformat(finished_at) - datetime.fromisoformat(started_at)
    ).total_seconds()
    return f"{seconds:.3f} s" if seconds < 10 else f"{seconds:.0f} s"
