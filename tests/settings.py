from pathlib import Path

import environ

BASE = Path(__file__).resolve().parent.parent
env = environ.Env()
(BASE / ".test-db").mkdir(exist_ok=True)  # SQLite files, also for the forked processes

SECRET_KEY = "dq-tests"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ROOT_URLCONF = "tests.urls"
STATIC_URL = "static/"

DATABASES = {
    "default": env.db(
        "DATABASE_URL", default="sqlite:///" + str(BASE / ".test-db" / "dq-test.sqlite3")
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    if not env.bool("DQ_TEST_SQLITE_DEFAULTS", default=False):  # else Django's own settings
        DATABASES["default"].setdefault("OPTIONS", {}).update(
            {
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            }
        )
    # A file, never in memory: tests fork processes that must see the same database.
    name = Path(DATABASES["default"]["NAME"])
    DATABASES["default"]["TEST"] = {"NAME": str(name.with_name(f"test-{name.name}"))}

# A second database, for what dq must refuse to mix with its own (exactly_once writes);
# beside the first when that is SQLite, so that runs on two files never share it.
other = Path(DATABASES["default"]["NAME"]) if "sqlite" in DATABASES["default"]["ENGINE"] else None
other = other.with_name(f"other-{other.name}") if other else BASE / ".test-db" / "other.sqlite3"
DATABASES["other"] = {
    "ENGINE": "django.db.backends.sqlite3",
    "NAME": str(other),
    "TEST": {"NAME": str(other.with_name(f"test-{other.name}"))},
}

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.admin",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "dq",
    "tests",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
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
            ]
        },
    }
]

TASKS = {"default": {"BACKEND": "dq.backend.DQBackend", "QUEUES": []}}

# Subprocesses started by the tests (dq_work) take extra backend OPTIONS from here.
TASKS["default"]["OPTIONS"] = env.json("DQ_TEST_OPTIONS", default={})

# A dq_work started by the tracing tests exports its spans to this file (tests/tracing.py).
if traces := env.str("DQ_TEST_TRACES", default=""):
    from tests.tracing import export_spans_to

    export_spans_to(traces)

# A dq_work started by the logging tests writes JSON lines there, with the job's fields.
if json_log := env.str("DQ_TEST_JSON_LOG", default=""):
    LOGGING = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "json": {
                "()": "pythonjsonlogger.json.JsonFormatter",
                "fmt": "%(levelname)s %(name)s %(message)s",
            }
        },
        "filters": {"job_fields": {"()": "dq.log.JobFields"}},
        "handlers": {
            "json": {
                "class": "logging.FileHandler",
                "filename": json_log,
                "formatter": "json",
                "filters": ["job_fields"],
            }
        },
        "loggers": {
            name: {"handlers": ["json"], "level": "INFO"}
            for name in ("django.tasks", "dq", "tests")
        },
    }

# Logging in test users hashes passwords: keep it fast.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
