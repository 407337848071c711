"""Settings for the dq example project: a worker and the admin on one database."""

from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

DEBUG = env.bool("DEBUG", default=True)
SECRET_KEY = env("SECRET_KEY", default="django-insecure-dq-example-only-never-use-in-production")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "dq",
    "example",
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

ROOT_URLCONF = "example.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Workers and the web server write at the same time: take the write lock at
    # BEGIN, wait for it instead of failing, and let readers run beside a writer.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

TASKS = {
    "default": {
        "BACKEND": "dq.backend.DQBackend",
        "QUEUES": [],
        "OPTIONS": {
            "workers": [{"queues": ["*"], "threads": 5, "processes": 2}],
            # Enqueued by dq_work's scheduler process, each run once however many
            # dq_work run (cron syntax, in TIME_ZONE unless an entry names "timezone").
            "recurring": {
                "simulate-traffic": {
                    "task": "example.tasks.simulate_traffic",
                    "schedule": "* * * * *",
                    "description": "Book demo jobs due every 5 seconds, up to the next minute",
                },
                "clean-up-sessions": {
                    "task": "example.tasks.clean_up_sessions",
                    "schedule": "* * * * *",
                    "description": "Delete expired sessions, every minute",
                },
            },
            # Successful and cancelled jobs are deleted an hour after they ended (default:
            # a day); failed ones stay until someone retries or discards them.
            "keep_finished": 3600,
        },
    },
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "dq": {"format": "%(asctime)s [pid %(process)d] %(levelname)s %(name)s: %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "dq"},
    },
    "loggers": {
        "dq": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "django.tasks": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "example": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}
