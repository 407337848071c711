"""Template tags of dq's admin pages: times as the lists show them, filters as drop-downs."""

from datetime import datetime
from typing import Any

from django import template
from django.contrib.admin.filters import ListFilter
from django.contrib.admin.views.main import ChangeList

from ..admin.display import age

register = template.Library()


@register.filter
def dq_age(value: datetime | None, now: datetime | None = None) -> str:
    """How long ago ``value`` was, to the second: "12 s", "3 min 4 s"."""
    return age(value, now)


@register.inclusion_tag("admin/dq/filter.html")
def dq_filter(changelist: ChangeList, spec: ListFilter) -> dict[str, Any]:
    """A list filter as a closed drop-down whose summary names its current choice."""
    choices = list(spec.choices(changelist))
    chosen = next((choice for choice in choices if choice.get("selected")), None)
    return {
        "title": spec.title,
        "choices": choices,
        "chosen": chosen["display"] if chosen else None,
        "filtered": chosen is not None and chosen is not choices[0],
    }
