"""System checks of dq's OPTIONS, the argument handling of dq_work, and conf.load."""

import warnings

import pytest
from django.conf import settings
from django.core.checks import run_checks
from django.core.management import call_command
from django.core.management.base import CommandError, SystemCheckError
from django.test import override_settings

from dq import conf
from dq.exceptions import ConfigurationError

# run_checks() runs the model checks too, which query each SQLite database for JSON support.
pytestmark = pytest.mark.django_db(databases="__all__")

DQ = "dq.backend.DQBackend"


def tasks_with(options, **extra):
    return {"default": {"BACKEND": DQ, "QUEUES": [], "OPTIONS": options}, **extra}


def dq_messages(options, **extra):
    """The dq check messages for a default backend with these OPTIONS, as (id, message)."""
    with override_settings(TASKS=tasks_with(options, **extra)):
        return [(m.id, m.msg) for m in run_checks() if m.id and m.id.startswith("dq.")]


def ids(messages):
    return sorted(message_id for message_id, _ in messages)


# --- system checks ---------------------------------------------------------------------


def test_the_test_settings_pass_the_checks():
    assert dq_messages({}) == []


def test_a_valid_full_configuration_has_no_dq_messages():
    options = {
        "database": "default",
        "workers": [
            {"queues": ["a", "mail*"], "threads": 3, "processes": 2, "polling_interval": 0.5},
            {"queues": "*", "threads": 1},
        ],
        "dispatchers": {"processes": 1, "batch_size": 100, "polling_interval": 2},
        "shutdown_timeout": 5,
        "heartbeat_interval": 2,
        "alive_threshold": 10,
        "maintenance_interval": 30,
        "max_interruptions": 0,
    }
    assert dq_messages(options) == []


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"bogus": 1}, "'bogus'"),
        ({"workers": [{"thread": 2}]}, "workers[0].thread"),
        ({"dispatchers": {"size": 2}}, "dispatchers.size"),
    ],
)
def test_an_unknown_option_is_e001(options, needle):
    messages = dq_messages(options)
    assert ids(messages) == ["dq.E001"]
    assert needle in messages[0][1]


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"workers": [{"threads": 0}]}, "workers[0].threads must be a whole number > 0"),
        ({"workers": {"threads": 1.5}}, "workers[0].threads must be a whole number > 0"),
        ({"workers": [{"processes": -1}]}, "workers[0].processes must be a whole number >= 0"),
        ({"workers": "lots"}, "must be a list of dicts"),
        ({"workers": ["a"]}, "must be a dict"),
        ({"heartbeat_interval": "x"}, "heartbeat_interval must be a number > 0"),
        ({"shutdown_timeout": 0}, "shutdown_timeout must be a number > 0"),
        ({"max_interruptions": -1}, "max_interruptions must be a whole number >= 0"),
        ({"max_interruptions": True}, "max_interruptions must be a whole number >= 0"),
        ({"dispatchers": {"batch_size": 0}}, "dispatchers.batch_size must be a whole number > 0"),
        ({"heartbeat_interval": 10, "alive_threshold": 10}, "alive_threshold must be larger"),
        ({"heartbeat_interval": 60}, "alive_threshold must be larger"),  # default threshold 30
    ],
)
def test_a_wrong_type_or_non_positive_number_is_e002(options, needle):
    messages = dq_messages(options)
    assert ids(messages) == ["dq.E002"]
    assert needle in messages[0][1]


@pytest.mark.parametrize("queues", [5, None, [1], ["a", None]])
def test_queues_of_the_wrong_type_are_e002_not_a_crash(queues):
    messages = dq_messages({"workers": [{"queues": queues}]})
    assert ids(messages) == ["dq.E002"]
    assert "workers[0].queues" in messages[0][1]


def test_options_that_are_not_a_dict_are_e002():
    assert ids(dq_messages(["workers"])) == ["dq.E002"]


def test_an_unknown_database_alias_is_e003():
    messages = dq_messages({"database": "nope"})
    assert ids(messages) == ["dq.E003"]
    assert "'nope'" in messages[0][1]


@pytest.mark.parametrize("database", [["default"], None, 1])
def test_a_database_that_is_not_an_alias_is_e003_not_a_crash(database):
    assert ids(dq_messages({"database": database})) == ["dq.E003"]


@pytest.mark.parametrize("selectors", [["ma*il"], [""], ["a", "*b"], [], "a,,b"])
def test_a_bad_queue_selector_is_e004(selectors):
    messages = dq_messages({"workers": [{"queues": selectors}]})
    assert set(ids(messages)) == {"dq.E004"}


def test_every_problem_is_reported_at_once():
    messages = dq_messages({"bogus": 1, "database": "nope", "workers": [{"queues": ["x*y"]}]})
    assert ids(messages) == ["dq.E001", "dq.E003", "dq.E004"]


def test_sqlite_without_immediate_transactions_is_w001():
    # The check reads DATABASES only; the extra alias is never connected to.
    databases = {
        **settings.DATABASES,
        "plain_sqlite": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
        "none_sqlite": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": ":memory:",
            "OPTIONS": {"transaction_mode": None},  # Django's default, spelled out
        },
        "immediate_sqlite": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": ":memory:",
            "OPTIONS": {"transaction_mode": "immediate"},
        },
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Overriding setting DATABASES can lead to ..."
        with override_settings(DATABASES=databases):
            plain = dq_messages({"database": "plain_sqlite"})
            spelled_out = dq_messages({"database": "none_sqlite"})
            immediate = dq_messages({"database": "immediate_sqlite"})

    assert ids(plain) == ["dq.W001"]
    assert "transaction_mode" in plain[0][1]
    assert ids(spelled_out) == ["dq.W001"]
    assert immediate == []


def test_manage_py_check_fails_on_dq_errors():
    with (
        override_settings(TASKS=tasks_with({"workers": [{"threads": 0}]})),
        pytest.raises(SystemCheckError, match=r"dq\.E002"),
    ):
        call_command("check")


def test_a_non_dq_backend_is_not_checked_by_dq():
    extra = {"other": {"BACKEND": "django.tasks.backends.dummy.DummyBackend"}}
    assert dq_messages({}, **extra) == []


def test_each_dq_backend_is_checked_under_its_own_alias():
    extra = {"second": {"BACKEND": DQ, "QUEUES": [], "OPTIONS": {"bogus": True}}}
    with override_settings(TASKS=tasks_with({}, **extra)):
        messages = [m for m in run_checks() if m.id and m.id.startswith("dq.")]
    assert [(m.id, m.obj) for m in messages] == [("dq.E001", "TASKS['second']")]


# --- dq_work's arguments ---------------------------------------------------------------
# Every call here fails before a supervisor would start.


def test_dq_work_with_an_unknown_backend_is_a_command_error():
    with pytest.raises(CommandError, match="No task backend 'nope' in TASKS"):
        call_command("dq_work", "--backend", "nope")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--threads", "0"], "--threads must be a whole number > 0, not 0."),
        (["--processes", "0"], "--processes must be a whole number > 0, not 0."),
        (["--processes", "-1"], "--processes must be a whole number > 0, not -1."),
        (["--queues", "a,ma*il"], "--queues: 'ma*il' is not a queue selector; a queue selector"),
        (["--queues", "a,,b"], "--queues: '' is not a queue selector; a queue selector is a"),
        (["--queues", ""], "--queues: '' is not a queue selector; a queue selector is a name"),
        (["--queues", " , "], "--queues: '' is not a queue selector; a queue selector is a"),
        (["--queues", "x*y,,"], "--queues: 'x*y', '' are not queue selectors; a queue"),
    ],
)
def test_dq_work_with_invalid_overrides_is_a_command_error(args, needle):
    with pytest.raises(CommandError) as raised:
        call_command("dq_work", *args)
    message = str(raised.value)
    assert message.startswith(needle)
    assert message.count("selector is") <= 1  # said once


def test_dq_work_on_a_backend_that_is_not_dq_is_a_command_error():
    extra = {"dummy": {"BACKEND": "django.tasks.backends.dummy.DummyBackend"}}
    with (
        override_settings(TASKS=tasks_with({}, **extra)),
        pytest.raises(CommandError, match=r"TASKS\['dummy'\] uses .*DummyBackend, not dq"),
    ):
        call_command("dq_work", "--backend", "dummy")


def test_dq_work_with_invalid_options_is_a_command_error():
    with (
        override_settings(TASKS=tasks_with({"bogus": 1})),
        pytest.raises(CommandError, match=r"dq\.E001.*'bogus'"),
    ):
        call_command("dq_work")


# --- conf.load -------------------------------------------------------------------------


def test_load_returns_the_defaults():
    with override_settings(TASKS=tasks_with({})):
        config = conf.load("default")

    assert config.backend == "default"
    assert config.database == "default"
    cpus = conf.default_worker_processes()
    assert [(w.processes, w.threads, w.queues) for w in config.workers] == [(cpus, 5, ("*",))]
    assert config.dispatcher.processes == 1
    assert config.alive_threshold > config.heartbeat_interval > 0
    assert config.max_interruptions == 3


@pytest.mark.parametrize(("cpus", "processes"), [(1, 1), (2, 2), (3, 3), (16, 4)])
def test_dq_work_starts_a_worker_process_per_cpu_up_to_four(monkeypatch, cpus, processes):
    monkeypatch.setattr(conf.os, "sched_getaffinity", lambda pid: set(range(cpus)))
    with override_settings(TASKS=tasks_with({})):
        [worker] = conf.load("default").workers
    assert worker.processes == processes


def test_load_reads_the_options():
    options = {
        "workers": [{"queues": "a, mail*", "threads": 2}, {"queues": ["b"], "processes": 0}],
        "dispatchers": {"batch_size": 50},
        "heartbeat_interval": 1,
        "alive_threshold": 4,
        "max_interruptions": 7,
    }
    with override_settings(TASKS=tasks_with(options)):
        config = conf.load("default")

    assert [(w.processes, w.threads, w.queues) for w in config.workers] == [
        (conf.default_worker_processes(), 2, ("a", "mail*")),
        (0, 5, ("b",)),
    ]
    assert config.dispatcher.batch_size == 50
    assert (config.heartbeat_interval, config.alive_threshold) == (1, 4)
    assert config.max_interruptions == 7
    assert conf.max_interruptions("default") == 3  # outside the override again


def test_load_of_invalid_options_raises_configuration_error():
    with (
        override_settings(TASKS=tasks_with({"workers": [{"threads": 0}]})),
        pytest.raises(ConfigurationError, match=r"dq\.E002"),
    ):
        conf.load("default")


def test_with_worker_overrides_replaces_the_worker_groups():
    with override_settings(TASKS=tasks_with({"workers": [{"threads": 9}, {"queues": "x"}]})):
        config = conf.load("default")

    overridden = config.with_worker_overrides(queues=("a", "b*"), threads=2, processes=3)

    assert [(w.processes, w.threads, w.queues) for w in overridden.workers] == [(3, 2, ("a", "b*"))]
    assert overridden.dispatcher == config.dispatcher
    only_threads = config.with_worker_overrides(threads=4)
    default = conf.default_worker_processes()
    assert [(w.processes, w.threads, w.queues) for w in only_threads.workers] == [
        (default, 4, ("*",))
    ]
    assert config.with_worker_overrides() == config
    with pytest.raises(ConfigurationError, match="threads"):
        config.with_worker_overrides(threads=0)


def test_parse_queues_keeps_the_order_and_strips_spaces():
    assert conf.parse_queues("b, a ,mail*") == ("b", "a", "mail*")
    assert conf.parse_queues(["x", "y"]) == ("x", "y")


def test_options_are_parsed_once_and_again_when_the_settings_change():
    from dq.stats import shown_config

    assert conf.load("default") is conf.load("default") is shown_config()
    with override_settings(TASKS=tasks_with({"shutdown_timeout": 3})):
        assert conf.load("default").shutdown_timeout == 3
        assert shown_config() is conf.load("default")
    assert conf.load("default").shutdown_timeout == 10
