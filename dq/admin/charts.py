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
    minutes: Sequence["Minute"], *, width: int = 1200, height: int = 180, axis: bool = True
) -> SafeString:
    """Stacked bars, one per minute: finished (bottom) and failed (top). Each bar has a title
    with its minute and counts. With ``axis``, the chart spans its box (the page scales it)
    with the peak, a time label every 10 minutes and "now"; ``axis=False`` draws a bare
    sparkline, where a minute with any job is at least 2 units tall, so it can be seen."""
    finished = sum(minute.finished for minute in minutes)
    failed = sum(minute.failed for minute in minutes)
    peak = max((minute.finished + minute.failed for minute in minutes), default=0)
    left, bottom, top = (44, 24, 10) if axis else (0, 1, 0)
    plot_width, plot_height = width - left, height - bottom - top
    step = plot_width / max(len(minutes), 1)
    scale = plot_height / peak if peak else 0
    least = 0 if axis else 2
    base = top + plot_height
    bars = []
    for index, minute in enumerate(minutes):
        x = left + index * step
        finished_height = max(minute.finished * scale, least if minute.finished else 0)
        failed_height = max(minute.failed * scale, least if minute.failed else 0)
        bars.append(
            (
                f"{localtime(minute.start):%H:%M}",
                minute.finished,
                minute.failed,
                f"{x:.1f}",
                f"{max(step * 0.8, 1):.1f}",
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
    labels = format_html(
        '<line class="dq-axis" x1="{}" y1="{}" x2="{}" y2="{}"></line>',
        left,
        f"{base:.1f}",
        width,
        f"{base:.1f}",
    )
    if axis:
        times = [
            (f"{left + index * step:.1f}", f"{localtime(minute.start):%H:%M}")
            for index, minute in enumerate(minutes)
            if localtime(minute.start).minute % 10 == 0 and index < len(minutes) - 3
        ]
        labels = format_html(
            '{}<text class="dq-axis-label" x="{lx}" y="{ty}" text-anchor="end">{peak}</text>'
            '<text class="dq-axis-label" x="{lx}" y="{base}" text-anchor="end">0</text>'
            "{times}"
            '<text class="dq-axis-label" x="{width}" y="{by}" text-anchor="end">now</text>',
            labels,
            lx=left - 6,
            ty=top + 12,
            peak=localize(peak),
            base=f"{base:.1f}",
            times=format_html_join(
                "",
                '<line class="dq-tick" x1="{0}" y1="{1}" x2="{0}" y2="{2}"></line>'
                '<text class="dq-axis-label" x="{0}" y="{3}" text-anchor="middle">{4}</text>',
                ((x, f"{base:.1f}", f"{base + 4:.1f}", height - 4, text) for x, text in times),
            ),
            width=width,
            by=height - 4,
        )
    return format_html(
        '<svg class="{}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {} {}" '
        'width="{}" height="{}" role="img" aria-label="{}">{}{}</svg>',
        "dq-chart" if axis else "dq-sparkline",
        width,
        height,
        width,
        height,
        f"Last hour: {finished} finished, {failed} failed",
        labels,
        body,
    )
