"""The example project's demo command, run as ``./dev example`` runs it."""

import os
import re
import subprocess
import sys

from ..conftest import ROOT


def manage(*args, database):
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{database}",
        "DJANGO_SETTINGS_MODULE": "example.settings",
    }
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT / "example_project",
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_enqueue_demo_prints_each_jobs_own_state_and_promises_nothing_untrue(tmp_path):
    database = tmp_path / "example.sqlite3"
    manage("migrate", "-v", "0", database=database)

    printed = manage("enqueue_demo", "--count", "2", database=database)

    jobs = re.findall(r"^(\d+)  (\w+)  (\w+)$", printed, re.MULTILINE)
    states = {}
    for _, task, state in jobs:
        states.setdefault(task, []).append(state)
    assert states["send_reminder"] == ["scheduled"]
    assert states["sync_account"] == ["ready"] * 2 + ["blocked"] * 4
    assert states["export_orders"] == ["ready", "cancelled"]
    assert "FAILED" not in printed and "READY" not in printed
    assert "once a worker takes it; cancel it while it runs with" in printed
