from django.apps import AppConfig


class DQConfig(AppConfig):
    name = "dq"
    label = "dq"
    verbose_name = "dq job queue"
    default_auto_field = "django.db.models.BigAutoField"
