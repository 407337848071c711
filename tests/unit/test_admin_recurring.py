"""The recurring tasks' admin pages: the schedule in words, the next runs, and "run now"."""

import re

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.test import Client
from django.urls import reverse
from django.utils.html import strip_tags

from dq.admin.recurring import schedule_in_words
from dq.models import Job, RecurringExecution

from . import test_admin
from .test_admin import SCRIPT, job_url, messages_of, recurring_task

# The staff of test_admin.py: one with every dq permission, one who may only look.
operator, viewer = test_admin.operator, test_admin.viewer

pytestmark = pytest.mark.django_db

TASKS = reverse("admin:dq_recurringtask_changelist")


def task_url(task):
    return reverse("admin:dq_recurringtask_change", args=[task.pk])


def task_with(schedule, *, key="nightly", timezone="Europe/Paris"):
    """recurring_task() of tests/unit/test_admin.py, on another schedule or time zone."""
    task = recurring_task(key)
    task.schedule, task.timezone = schedule, timezone
    task.save()
    return task


def field(page, name):
    """The text of one read-only field of a change page, tags stripped."""
    match = re.search(
        rf'class="form-row field-{name}">.*?<div class="readonly">(.*?)</div>', page, re.S
    )
    assert match, f"no field {name} on the page"
    return strip_tags(match[1])


def object_tools(page):
    return page.split('class="object-tools"')[1].split("</ul>")[0]


# --- the schedule in words ----------------------------------------------------------------


def test_the_list_says_each_schedule_in_words_beside_its_cron(operator):
    task_with("*/5 * * * *", key="often")
    task_with("@hourly", key="hourly")
    page = operator.get(TASKS).content.decode()
    assert "Every 5 minutes <code>*/5 * * * *</code>" in page
    assert "Every hour <code>@hourly</code>" in page


def test_the_task_page_says_its_schedule_in_words(operator):
    task = task_with("30 9 * * mon-fri")
    page = operator.get(task_url(task)).content.decode()
    assert field(page, "described_schedule") == "At 09:30, Monday through Friday 30 9 * * mon-fri"


def test_every_alias_dq_accepts_has_words():
    assert schedule_in_words("@daily") == schedule_in_words("@MIDNIGHT") == "At 00:00"
    assert schedule_in_words("@weekly") == "At 00:00, only on Sunday"
    assert schedule_in_words("@monthly") == "At 00:00, on day 1 of the month"
    assert schedule_in_words("@yearly") == schedule_in_words("@annually")
    assert schedule_in_words("0 0 l * *") == "At 00:00, on the last day of the month"


def test_a_schedule_without_right_words_shows_as_its_cron_alone(operator):
    # croniter's random minute: cron-descriptor would say "At R minutes past the hour".
    task = task_with("R * * * *")
    for page in (operator.get(TASKS), operator.get(task_url(task))):
        assert page.status_code == 200
        assert "<code>R * * * *</code>" in page.content.decode()
        assert "At R" not in page.content.decode()
    assert schedule_in_words("0 0 L,15 * *") is None  # it would say "on day L and 15"
    assert schedule_in_words("0 0 ? ? ?") is None  # cron-descriptor raises on it


# --- the next runs ------------------------------------------------------------------------


def test_the_task_page_lists_the_next_five_runs_to_the_second_in_the_tasks_time_zone(operator):
    # 03:00:00 in Tokyo is neither 03:00 in UTC nor in the site's time zone (Chicago).
    task = task_with("0 3 * * *", timezone="Asia/Tokyo")
    runs = field(operator.get(task_url(task)).content.decode(), "next_runs")
    assert runs.count("03:00:00") == 5
    assert runs.endswith("times in Asia/Tokyo")


# --- run now ------------------------------------------------------------------------------


def test_the_run_now_button_is_there_for_staff_who_may_run_it(operator, viewer):
    task = recurring_task()
    assert "Run now</button>" in object_tools(operator.get(task_url(task)).content.decode())
    assert "</button>" not in object_tools(viewer.get(task_url(task)).content.decode())


def test_the_run_now_button_enqueues_a_run_and_comes_back_to_the_page(django_user_model, operator):
    task = task_with("0 3 * * *", key=SCRIPT)
    client = Client(enforce_csrf_checks=True)
    client.force_login(django_user_model.objects.get(username="operator"))
    page = client.get(task_url(task)).content.decode()
    form = re.search(r'<form method="post" class="dq-action-form">(.*?)</form>', page, re.S)[1]
    posted = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', form))
    assert posted.keys() == {"csrfmiddlewaretoken", "_selected_action", "CHANGE_FORM-action"}
    response = client.post(task_url(task), posted, follow=True)
    [execution] = RecurringExecution.objects.filter(task_key=SCRIPT)
    assert Job.objects.get(pk=execution.job_id).args == [2, 3]
    assert response.redirect_chain == [(task_url(task), 302)]
    assert messages_of(response) == [f"Enqueued {SCRIPT} as job {execution.job_id}."]
    after = response.content.decode()
    assert SCRIPT not in after and "Enqueued &lt;script&gt;" in after
    assert job_url(execution.job_id) in after
    assert LogEntry.objects.filter(object_id=str(task.pk), action_flag=CHANGE).exists()
    # Without the page's CSRF token, the same POST is refused.
    del posted["csrfmiddlewaretoken"]
    assert client.post(task_url(task), posted).status_code == 403
    assert RecurringExecution.objects.count() == 1


def test_a_forged_run_now_post_without_the_permission_is_refused(viewer):
    task = recurring_task()
    response = viewer.post(
        task_url(task), {"CHANGE_FORM-action": "run_now", "_selected_action": str(task.pk)}
    )
    assert response.status_code == 403
    assert not RecurringExecution.objects.exists() and not LogEntry.objects.exists()
