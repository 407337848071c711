"""Jobs finished and failed per minute, drawn server-side as inline SVG (no front-end build)."""

from collections.abc import Sequence
from typing import TYPE_CHECKING

from django.utils.formats import localize
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.timezone import localtime

if TYPE_CHECKING:
    from ..stats import Minute


def activity_svg(
    minutes: Sequence["Minute"], *, width: int = 720, height: int = 160, axis: bool = True
) -> SafeString:
    """Stacked bars, one per minute: finished (bottom) and failed (top). Each bar has a title
    with its minute and counts; ``axis=False`` draws a bare sparkline."""
    finished = sum(minute.finished for minute in minutes)
    failed = sum(minute.failed for minute in minutes)
    peak = max((minute.finished + minute.failed for minute in minutes), default=0)
    left, bottom, top = (36, 18, 8) if axis else (0, 0, 0)
    plot_width, plot_height = width - left, height - bottom - top
    step = plot_width / max(len(minutes), 1)
    scale = plot_height / peak if peak else 0
    bars = []
    for index, minute in enumerate(minutes):
        x = left + index * step
        finished_height = minute.finished * scale
        failed_height = minute.failed * scale
        base = top + plot_height
        bars.append(
            (
                f"{localtime(minute.start):%H:%M}",
                minute.finished,
                minute.failed,
                f"{x:.1f}",
                f"{max(step - 1, 1):.1f}",
                f"{base - finished_height:.1f}",
                f"{finished_height:.1f}",
                f"{base - finished_height - failed_height:.1f}",
                f"{failed_height:.1f}",
            )
        )
    body = format_html_join(
        "",
        "<g><title>{0} \u2013 {1} finished, {2} failed</title>"
        '<rect class="dq-bar-finished" x="{3}" width="{4}" y="{5}" height="{6}"></rect>'
        '<rect class="dq-bar-failed" x="{3}" width="{4}" y="{7}" height="{8}"></rect></g>',
        bars,
    )
    labels = ""
    if axis:
        base = top + plot_height
        labels = format_html(
            '<line class="dq-axis" x1="{left}" y1="{base}" x2="{width}" y2="{base}"></line>'
            '<text class="dq-axis-label" x="{lx}" y="{ty}" text-anchor="end">{peak}</text>'
            '<text class="dq-axis-label" x="{lx}" y="{base}" text-anchor="end">0</text>'
            '<text class="dq-axis-label" x="{left}" y="{by}">{start}</text>'
            '<text class="dq-axis-label" x="{width}" y="{by}" text-anchor="end">{end}</text>',
            left=left,
            base=f"{base:.1f}",
            width=width,
            lx=left - 4,
            ty=top + 8,
            peak=localize(peak),
            by=height - 4,
            start=f"{localtime(minutes[0].start):%H:%M}" if minutes else "",
            end="now",
        )
    return format_html(
        '<svg class="dq-chart" xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" '
        'viewBox="0 0 {} {}" role="img" aria-label="{}">{}{}</svg>',
        width,
        height,
        width,
        height,
        f"Last hour: {finished} finished, {failed} failed",
        labels,
        body,
    )
