"""Processes that race each other on the tests' database. They are started with
multiprocessing's "spawn", each a fresh interpreter: the test process may run threads (a
browser test's driver, for one), and a fork copies a process's locks in whatever state its
threads left them."""

import os

import django
from django.utils.module_loading import import_string


def run_in_django(env, target, *args):
    """In a spawned process: set up Django with ``env`` (``conftest.subprocess_env``), then
    call the function at dotted path ``target`` with ``args``."""
    os.environ.update(env)
    django.setup()
    import_string(target)(*args)
