"""Small, escaped HTML fragments the dq admin pages share."""

import json
import re
from datetime import datetime
from typing import TYPE_CHECKING

from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from ..stats import STATE_BY_STATUS

if TYPE_CHECKING:
    from ..models import Batch, BlockedExecution

# A batch's counts of ended jobs, each a segment of its progress bar.
PROGRESS_SEGMENTS = ("succeeded", "failed", "cancelled")


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


def breakable(name: str) -> SafeString:
    """A task path or queue name that a narrow column may break after a dot, a dash or an
    underscore, and nowhere else."""
    parts = re.split(r"(?<=[._-])", name)
    return format_html_join(mark_safe("<wbr>"), "{}", ((part,) for part in parts))


def arguments_preview(args_text: str | None, kwargs_text: str | None, length: int = 60) -> str:
    """A job's arguments as one short line of their JSON: "[4711] {"amount": ...}"."""
    parts = [text for text in (args_text, kwargs_text) if text and text not in ("[]", "{}")]
    line = " ".join(parts)
    return line if len(line) <= length else line[: length - 1] + "…"


def job_link(job_id: int, text: str | None = None) -> SafeString:
    return format_html(
        '<a href="{}">{}</a>',
        reverse("admin:dq_job_change", args=[job_id]),
        text if text is not None else f"#{job_id}",
    )


def batch_link(batch: "Batch") -> SafeString:
    return format_html(
        '<a href="{}">{}</a>', reverse("admin:dq_batch_change", args=[batch.pk]), str(batch)
    )


def batch_progress(batch: "Batch") -> SafeString:
    """A bar of the batch's jobs: a segment each for those succeeded, failed and cancelled,
    in proportion to its total (the rest is pending); the counts beside it and in its title."""
    counts: dict[str, int] = {name: getattr(batch, name) for name in PROGRESS_SEGMENTS}
    ended = sum(counts.values())
    segments = format_html_join(
        "",
        '<span class="dq-progress-{}" style="width: {}%"></span>',
        ((name, f"{100 * count / batch.total:.2f}") for name, count in counts.items() if count),
    )
    title = ", ".join(f"{count} {name}" for name, count in counts.items())
    return format_html(
        '<span class="dq-progress" title="{}, {} pending, of {}">'
        '<span class="dq-progress-bar">{}</span>'
        '<span class="dq-progress-text">{} of {} ended</span></span>',
        title,
        batch.pending,
        batch.total,
        segments,
        ended,
        batch.total,
    )


def process_link(process_id: int, name: str) -> SafeString:
    return format_html(
        '<a href="{}">{}</a>', reverse("admin:dq_process_change", args=[process_id]), name
    )


def waiting_for(blocked: "BlockedExecution", holders: list[int] | None = None) -> SafeString:
    """What a blocked execution waits for: a slot of its concurrency key, and (given) the
    jobs that hold the key's slots now."""
    held = ""
    if holders is not None:
        held = format_html(
            "; held by {}",
            format_html_join(", ", "{}", ((job_link(pk),) for pk in holders)) if holders else "-",
        )
    return format_html(
        "a free slot of <code>{}</code> (at most {} at once){}",
        blocked.concurrency_key,
        blocked.job.concurrency_limit,
        held,
    )


def pretty_json(value: object) -> SafeString:
    return format_html(
        '<pre class="dq-json">{}</pre>',
        json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True),
    )


def clock(value: datetime, now: datetime | None = None) -> str:
    """An absolute time to the second, in the current time zone: "14:03:27" today,
    "Dec 2, 14:03:27" this year, "Dec 2 2025, 14:03:27" before."""
    local, today = timezone.localtime(value), timezone.localtime(now or timezone.now())
    if local.date() == today.date():
        return f"{local:%H:%M:%S}"
    if local.year == today.year:
        return f"{local:%b} {local.day}, {local:%H:%M:%S}"
    return f"{local:%b} {local.day} {local.year}, {local:%H:%M:%S}"


def span(seconds: float) -> str:
    """A span of time, short, to the second: "12 s", "4 min 5 s", "3 h 12 min", "2 d 4 h"."""
    whole = int(abs(seconds))
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    if minutes:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    return f"{secs} s"


def relative(value: datetime, now: datetime | None = None) -> str:
    """How long ago, or how far ahead, ``value`` is: "12 s ago", "in 4 min 5 s"."""
    seconds = ((now or timezone.now()) - value).total_seconds()
    return f"{span(seconds)} ago" if seconds >= 0 else f"in {span(seconds)}"


def moment(value: datetime | str | None, now: datetime | None = None) -> SafeString | str:
    """An absolute time to the second with how long ago (or how far ahead) it is; the full
    time, to the millisecond, in its title."""
    if value is None:
        return "-"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    now = now or timezone.now()
    return format_html(
        '<time datetime="{}" title="{}">{}</time> <span class="dq-ago">{}</span>',
        value.isoformat(),
        timezone.localtime(value).isoformat(sep=" ", timespec="milliseconds"),
        clock(value, now),
        relative(value, now),
    )


def age(value: datetime | None, now: datetime | None = None) -> str:
    """How long ago ``value`` was, short: "12 s", "3 min 4 s"."""
    if value is None:
        return "-"
    return span(((now or timezone.now()) - value).total_seconds())


def run_time(seconds: float | None) -> str:
    """How long a run took: milliseconds under a second, else seconds, then minutes."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.3f} s"
    return span(seconds)


def duration(started_at: str | None, finished_at: str | None) -> str:
    """How long an attempt ran, from its two ISO times."""
    if not started_at or not finished_at:
        return "-"
    return run_time(
        (datetime.fromisoformat(finished_at) - datetime.fromisoformat(started_at)).total_seconds()
    )
