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

# The admin and what it needs: the benchmark times dq's admin pages with a large history
# (django.test.Client in the measuring process, whose host is "testserver").
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "dq",
    "benchmarks",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]
ROOT_URLCONF = "benchmarks.urls"
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]
STATIC_URL = "static/"

# dq's defaults: no OPTIONS, as a user starts out.
TASKS = {"default": {"BACKEND": "dq.backend.DQBackend", "QUEUES": []}}
# Where the benchmark compares polling intervals, the one of dq_work's workers.
if polling_interval := env.float("DQ_BENCH_POLLING_INTERVAL", default=None):
    TASKS["default"]["OPTIONS"] = {"workers": [{"polling_interval": polling_interval}]}
