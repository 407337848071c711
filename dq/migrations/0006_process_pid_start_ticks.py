from django.db import migrations, models


class Migration(migrations.Migration):
    """A process row knows when its pid started: a process alive on this host is never
    pruned for a late heartbeat, and a later process given the same pid is told apart."""

    dependencies = [
        ("dq", "0005_ready_backend"),
    ]

    operations = [
        migrations.AddField(
            model_name="process",
            name="pid_start_ticks",
            field=models.BigIntegerField(blank=True, null=True),
        ),
    ]
