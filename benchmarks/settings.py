"""Settings of the benchmark (``./dev bench``): dq with its defaults on ``DATABASE_URL``."""

from pathlib import Path

import environ

BASE = Path(__file__).resolve().parent.parent
env = environ.Env()

SECRET_KEY = "dq-benchmarks"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

DATABASES = {
    "default": env.db(
        "DATABASE_URL", default="sqlite:///" + str(BASE / ".bench" / "dq_bench.sqlite3")
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # What the README asks of a SQLite database that dq's processes share.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )

INSTALLED_APPS = ["dq", "benchmarks"]

# dq's defaults: no OPTIONS, as a user starts out.
TASKS = {"default": {"BACKEND": "dq.backend.DQBackend", "QUEUES": []}}
# Where the benchmark compares polling intervals, the one of dq_work's workers.
if polling_interval := env.float("DQ_BENCH_POLLING_INTERVAL", default=None):
    TASKS["default"]["OPTIONS"] = {"workers": [{"polling_interval": polling_interval}]}
