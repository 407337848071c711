from django.db import migrations, models
from django.db.models import F


def claims_so_far_started(apps, schema_editor):
    """Every claim made before this migration started its run when it was made."""
    claims = apps.get_model("dq", "ClaimedExecution").objects.using(schema_editor.connection.alias)
    claims.update(started_at=F("claimed_at"))


class Migration(migrations.Migration):
    """A claim records when its run started: a worker claims jobs ahead of its free threads,
    and a claim whose run never started goes back to ready, not counted as an attempt."""

    dependencies = [
        ("dq", "0006_process_pid_start_ticks"),
    ]

    operations = [
        migrations.AddField(
            model_name="claimedexecution",
            name="started_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.RunPython(claims_so_far_started, migrations.RunPython.noop),
    ]
