from django.db import migrations, models
from django.db.models import OuterRef, Subquery


def copy_backend_from_jobs(apps, schema_editor):
    ReadyExecution = apps.get_model("dq", "ReadyExecution")
    Job = apps.get_model("dq", "Job")
    ReadyExecution.objects.using(schema_editor.connection.alias).update(
        backend=Subquery(Job.objects.filter(pk=OuterRef("job_id")).values("backend")[:1])
    )


class Migration(migrations.Migration):
    """Ready rows name their job's backend alias: a worker claims only its own alias's jobs."""

    dependencies = [
        ("dq", "0004_cancel_permission"),
    ]

    operations = [
        migrations.RemoveIndex(model_name="readyexecution", name="dq_ready_queue_claim"),
        migrations.RemoveIndex(model_name="readyexecution", name="dq_ready_claim"),
        migrations.AddField(
            model_name="readyexecution",
            name="backend",
            field=models.CharField(default="", max_length=100),
            preserve_default=False,
        ),
        migrations.RunPython(copy_backend_from_jobs, migrations.RunPython.noop, elidable=True),
        migrations.AddIndex(
            model_name="readyexecution",
            index=models.Index(
                fields=["backend", "queue_name", "-priority", "job"], name="dq_ready_queue_claim"
            ),
        ),
        migrations.AddIndex(
            model_name="readyexecution",
            index=models.Index(fields=["backend", "-priority", "job"], name="dq_ready_claim"),
        ),
    ]
